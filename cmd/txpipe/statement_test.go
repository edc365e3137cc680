package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/consumers"
	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// testClock is the workers' clock in a test: it says the time last set.
type testClock struct{ at atomic.Pointer[time.Time] }

func (c *testClock) set(t time.Time) { c.at.Store(&t) }

func (c *testClock) clock() ledger.Clock { return func(time.Time) time.Time { return *c.at.Load() } }

// TestStatementsCloseEachDayOnceAcrossARestart: with the workers' clock
// injected, postings of 1 December and of 2 December (the pipeline stopped
// and started again across midnight) get one statement per account and day:
// a's 1 December closed by its first posting of the 2nd, b's (which does
// not move again) and the external account's by the closer, and the 2nd's
// once the clock says 3 December. Each says what the day's postings add up
// to, the entries are dated by the injected clock, and nothing is left
// open. verify checks the statements against the entries, and the balances
// topic against the accounts.
func TestStatementsCloseEachDayOnceAcrossARestart(t *testing.T) {
	clk := &testClock{}
	day1 := time.Date(2026, 12, 1, 23, 59, 0, 0, time.UTC)
	clk.set(day1)
	p := newPipeline(t, 3)
	stop := p.start(t, clk.clock())
	apply := func(format string, args ...any) {
		t.Helper()
		id := uuid.Must(uuid.NewV7()).String()
		body := fmt.Sprintf(`{"command_id":%q,`+format[1:], append([]any{id}, args...)...)
		if status, reason := p.submit(t, body); status != "applied" {
			t.Fatalf("%s: %s %s", body, status, reason)
		}
	}
	apply(`{"type":"open_account","account_id":"a","currency":"EUR"}`)
	apply(`{"type":"open_account","account_id":"b","currency":"EUR"}`)
	apply(`{"type":"deposit","account_id":"a","amount":1000,"currency":"EUR"}`)
	for _, amount := range []int{10, 20, 30} {
		apply(`{"type":"transfer","from_account_id":"a","to_account_id":"b","amount":%d,"currency":"EUR"}`, amount)
	}
	stop()

	clk.set(day1.Add(90 * time.Second)) // 2 December, 00:00:30
	stop = p.start(t, clk.clock())
	apply(`{"type":"open_account","account_id":"c","currency":"EUR"}`)
	apply(`{"type":"transfer","from_account_id":"a","to_account_id":"c","amount":5,"currency":"EUR"}`)
	p.awaitStatements(t, 3)
	clk.set(day1.Add(24*time.Hour + 80*time.Second)) // 3 December, 00:00:20
	got := p.awaitStatements(t, 5)

	d1, d2 := "2026-12-01", "2026-12-02"
	ext := domain.ExternalAccountID("EUR")
	want := map[string]domain.StatementData{
		"a/" + d1:      {OpeningBalance: 0, ClosingBalance: 940, Debits: sum(60), Credits: sum(1000), Entries: 4, FirstVersion: 1, LastVersion: 4},
		"b/" + d1:      {OpeningBalance: 0, ClosingBalance: 60, Debits: sum(0), Credits: sum(60), Entries: 3, FirstVersion: 1, LastVersion: 3},
		ext + "/" + d1: {OpeningBalance: 0, ClosingBalance: -1000, Debits: sum(1000), Credits: sum(0), Entries: 1, FirstVersion: 1, LastVersion: 1},
		"a/" + d2:      {OpeningBalance: 940, ClosingBalance: 935, Debits: sum(5), Credits: sum(0), Entries: 1, FirstVersion: 5, LastVersion: 5},
		"c/" + d2:      {OpeningBalance: 0, ClosingBalance: 5, Debits: sum(0), Credits: sum(5), Entries: 1, FirstVersion: 1, LastVersion: 1},
	}
	for k, s := range got {
		w, ok := want[k]
		day := s.data.PeriodStart.Format(time.DateOnly)
		start, _ := time.Parse(time.DateOnly, day)
		switch {
		case !ok:
			t.Errorf("statement %s, want none", k)
		case s.data.OpeningBalance != w.OpeningBalance || s.data.ClosingBalance != w.ClosingBalance || s.data.Debits != w.Debits ||
			s.data.Credits != w.Credits || s.data.Entries != w.Entries || s.data.FirstVersion != w.FirstVersion || s.data.LastVersion != w.LastVersion:
			t.Errorf("statement %s = %+v, want %+v", k, s.data, w)
		case !s.data.PeriodEnd.Equal(start.AddDate(0, 0, 1)) || s.commandID != consumers.StatementID(s.data.AccountID, day):
			t.Errorf("statement %s: period %v–%v, command_id %s", k, s.data.PeriodStart, s.data.PeriodEnd, s.commandID)
		}
	}

	// The entries are dated by the clock the workers were given.
	rows, err := p.db.Pool.Query(context.Background(), `SELECT account_id, account_version, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM entries`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var acct, day string
		var version int64
		if err := rows.Scan(&acct, &version, &day); err != nil {
			t.Fatal(err)
		}
		if s, ok := got[acct+"/"+day]; !ok || version < s.data.FirstVersion || version > s.data.LastVersion {
			t.Errorf("entry %s v%d of %s is not in its day's statement", acct, version, day)
		}
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	// Nothing is left open, and every account remembers the day it closed
	// last, so no closer and no late batch can close a day again.
	var open, closed int
	if err := p.db.Pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE period_day IS NOT NULL),
		count(*) FILTER (WHERE closed_through IS NOT NULL) FROM accounts`).Scan(&open, &closed); err != nil || open != 0 || closed != 4 {
		t.Fatalf("%d accounts have an open period and %d a closed day (%v), want 0 and 4", open, closed, err)
	}
	var bal struct{ Balance, Available, Version int64 }
	if p.get(t, "/v1/accounts/a", &bal) != http.StatusOK || bal.Balance != 935 || bal.Version != 5 {
		t.Errorf("account a = %+v, want balance 935 at version 5", bal)
	}
	p.verify(t)
}

// sum is n as a domain.Sum.
func sum(n uint64) domain.Sum {
	var s domain.Sum
	s.Add(n)
	return s
}

type statement struct {
	commandID string
	data      domain.StatementData
}

// statements reads the statement.closed events of p's events topic, by
// account/day, failing on two events of one account and day.
func (p *pipeline) statements(t *testing.T) map[string]statement {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := make(map[string]statement)
	seen := make(map[string]bool)
	for _, m := range p.kc.ReadAll(ctx, t, p.topics.Events, int(p.kc.Count(ctx, t, p.topics.Events))) {
		var ev domain.Event
		if err := json.Unmarshal(m.Value, &ev); err != nil {
			t.Fatalf("record on the events topic is not an event: %v", err)
		}
		if ev.Type != domain.EventTypeStatementClosed || seen[ev.EventID] {
			continue
		}
		seen[ev.EventID] = true
		var s domain.StatementData
		if err := json.Unmarshal(ev.Data, &s); err != nil {
			t.Fatalf("statement %s: %v", ev.EventID, err)
		}
		k := s.AccountID + "/" + s.PeriodStart.Format(time.DateOnly)
		if _, dup := out[k]; dup {
			t.Fatalf("two statements of %s", k)
		}
		out[k] = statement{commandID: ev.CommandID, data: s}
	}
	return out
}

// awaitStatements waits until p's events topic holds n statements, and
// returns them.
func (p *pipeline) awaitStatements(t *testing.T, n int) map[string]statement {
	t.Helper()
	var got map[string]statement
	eventually(t, fmt.Sprintf("%d statements are published", n), func() bool {
		got = p.statements(t)
		return len(got) >= n
	})
	return got
}

// TestBalancesPublishFillsAnEmptyTopic: verify reports the accounts a
// balances topic lacks (as one created by the upgrade that brought it
// lacks every account that has not changed since), and "txpipe balances
// publish" writes every account's record through the outbox, after which
// verify passes.
func TestBalancesPublishFillsAnEmptyTopic(t *testing.T) {
	p := startPipeline(t)
	for _, body := range []string{
		`{"type":"open_account","account_id":"a","currency":"EUR"}`,
		`{"type":"deposit","account_id":"a","amount":70,"currency":"EUR"}`,
		`{"type":"open_account","account_id":"b","currency":"USD"}`,
	} {
		if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,`, uuid.Must(uuid.NewV7()).String())+body[1:]); status != "applied" {
			t.Fatalf("%s: %s %s", body, status, reason)
		}
	}
	p.verify(t)
	p.topics.Balances = p.kc.Topics(t, 3).Balances // an empty one
	out, err := p.runVerify()
	if err == nil || !strings.Contains(out, "account a has no record") || !strings.Contains(out, "account @external:EUR has no record") {
		t.Fatalf("verify on an empty balances topic = %v:\n%s\nwant the accounts without a record", err, out)
	}
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"balances", "publish", "--database-url", p.db.URL, "--balances-topic", p.topics.Balances},
		&env{stdout: &stdout, stderr: io.Discard, lookup: testLookup}); err != nil || !strings.HasPrefix(stdout.String(), "3 balances written") {
		t.Fatalf("balances publish = %v: %s", err, stdout.String())
	}
	p.verify(t)
}
