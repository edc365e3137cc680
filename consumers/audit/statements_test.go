package audit

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// TestStatementsAreCheckedAgainstTheEntries: a statement that says what
// the entries say passes; one whose closing balance, day, or uniqueness is
// wrong, or a closed day with no statement, is named; and a closed day older
// than every event the topic still holds (retention) is not required.
func TestStatementsAreCheckedAgainstTheEntries(t *testing.T) {
	day := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	db := func(closed string) *database {
		return &database{Snapshot: &ledger.Snapshot{
			Entries: map[string][]ledger.SnapshotEntry{"a": {
				{Account: "a", Version: 1, Amount: 10, Balance: 10, Day: "2026-12-01", Digest: "d1"},
				{Account: "a", Version: 2, Amount: -4, Balance: 6, Day: "2026-12-01", Digest: "d2"},
				{Account: "a", Version: 3, Amount: 1, Balance: 7, Day: "2026-12-02", Digest: "d3"}}},
			Totals: map[string]ledger.Totals{"a": {Currency: "EUR", Balance: 7, Version: 3, ClosedThrough: closed}}}}
	}
	var n int
	statement := func(edit func(*domain.StatementData), at time.Time) kafka.Message {
		n++
		s := domain.StatementData{AccountID: "a", Currency: "EUR", PeriodStart: day, PeriodEnd: day.AddDate(0, 0, 1),
			OpeningBalance: 0, ClosingBalance: 6, Entries: 2, FirstVersion: 1, LastVersion: 2, LastDigest: "d2"}
		s.Debits.Add(4)
		s.Credits.Add(10)
		edit(&s)
		data, _ := json.Marshal(s)
		v, _ := json.Marshal(domain.Event{EventID: "e" + string(rune('0'+n)), Type: domain.EventTypeStatementClosed, OccurredAt: at, Data: data})
		return kafka.Message{Value: v}
	}
	early, late := day.Add(-time.Hour), day.AddDate(0, 0, 3) // the topic still holds events of the day before, or no longer
	other := func(at time.Time) kafka.Message {
		v, _ := json.Marshal(domain.Event{EventID: "o", Type: "transfer.applied", OccurredAt: at, Data: json.RawMessage(`{}`)})
		return kafka.Message{Value: v}
	}
	for _, tt := range []struct {
		name   string
		closed string
		events []kafka.Message
		want   string // in the problems; "" for none
	}{
		{"right", "2026-12-01", []kafka.Message{statement(func(*domain.StatementData) {}, early)}, ""},
		{"closing balance wrong", "2026-12-01", []kafka.Message{statement(func(s *domain.StatementData) { s.ClosingBalance = 7 }, early)}, "closing balance 7, the entries 6"},
		{"an entry of another day", "2026-12-01", []kafka.Message{statement(func(s *domain.StatementData) {
			s.LastVersion, s.Entries, s.ClosingBalance, s.LastDigest, s.Credits = 3, 3, 7, "d3", sum(11)
		}, early)}, "version 3 was made on 2026-12-02"},
		{"twice", "2026-12-01", []kafka.Message{statement(func(*domain.StatementData) {}, early), statement(func(*domain.StatementData) {}, early)}, "two statements of 2026-12-01"},
		{"a closed day without its statement", "2026-12-01", []kafka.Message{other(early)}, "account a closed 2026-12-01, and no statement"},
		{"a closed day older than the topic", "2026-12-01", []kafka.Message{other(late)}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := checkStatements(db(tt.closed), tt.events)
			got := strings.Join(c.Problems, "\n")
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("problems:\n%s\nwant %q", got, tt.want)
			}
		})
	}
}

func sum(n uint64) domain.Sum {
	var s domain.Sum
	s.Add(n)
	return s
}
