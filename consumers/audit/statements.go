package audit

import (
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// checkStatements: each statement.closed event (deduped by event_id) is the
// only one of its account and day, and says what the account's entries
// say: the balance before its first version and after its last, the sums
// of what those took out and put in, the last digest, and that all of them
// were made that day. Per account, in day order, each statement starts
// where the one before ended (the first one after the upgrade that brought
// statements may start anywhere). Once the outbox is drained, the last
// day each account closed has its statement on the topic, unless the
// topic's oldest event is not older than that day (retention).
func checkStatements(db *database, events []kafka.Message) Check {
	c := Check{Name: "statements: each day's statement is the only one and says what the entries say"}
	evs, _, _ := dedupe(events) // undecodable records: invariant 1 reports them
	byAccount := make(map[string][]domain.StatementData)
	seen := make(map[string]string) // account/day → event_id
	var oldest time.Time            // of the events the topic still holds
	for _, ev := range evs {
		if oldest.IsZero() || ev.OccurredAt.Before(oldest) {
			oldest = ev.OccurredAt
		}
		if ev.Type != domain.EventTypeStatementClosed {
			continue
		}
		var s domain.StatementData
		if err := json.Unmarshal(ev.Data, &s); err != nil {
			c.Problems = append(c.Problems, fmt.Sprintf("statement event %s has undecodable data: %v", ev.EventID, err))
			continue
		}
		day := s.PeriodStart.Format("2006-01-02")
		if other, dup := seen[s.AccountID+"/"+day]; dup {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s has two statements of %s: events %s and %s", s.AccountID, day, other, ev.EventID))
			continue
		}
		seen[s.AccountID+"/"+day] = ev.EventID
		byAccount[s.AccountID] = append(byAccount[s.AccountID], s)
		if p := statementProblem(s, db.Entries[s.AccountID]); p != "" {
			c.Problems = append(c.Problems, fmt.Sprintf("statement of account %s on %s: %s", s.AccountID, day, p))
		}
	}
	for acct, ss := range byAccount {
		slices.SortFunc(ss, func(a, b domain.StatementData) int { return a.PeriodStart.Compare(b.PeriodStart) })
		for i := 1; i < len(ss); i++ {
			if ss[i].FirstVersion != ss[i-1].LastVersion+1 || ss[i].OpeningBalance != ss[i-1].ClosingBalance {
				c.Problems = append(c.Problems, fmt.Sprintf("account %s: the statement of %s starts at version %d from %d, the one before ended at %d with %d",
					acct, ss[i].PeriodStart.Format("2006-01-02"), ss[i].FirstVersion, ss[i].OpeningBalance, ss[i-1].LastVersion, ss[i-1].ClosingBalance))
			}
		}
	}
	if db.outboxRecords == 0 { // else invariant 5 reports what is not published yet
		for id, a := range db.Totals {
			day, err := time.Parse(time.DateOnly, a.ClosedThrough)
			if err != nil || !oldest.Before(day) {
				continue // no day closed, or retention may have removed its events
			}
			if _, ok := seen[id+"/"+a.ClosedThrough]; !ok {
				c.Problems = append(c.Problems, fmt.Sprintf("account %s closed %s, and no statement of it is on the topic", id, a.ClosedThrough))
			}
		}
	}
	c.Detail = fmt.Sprintf("%d statements of %d accounts", len(seen), len(byAccount))
	return c
}

// statementProblem is what is wrong with s beside entries (the account's,
// in version order), or "".
func statementProblem(s domain.StatementData, entries []ledger.SnapshotEntry) string {
	i, ok := slices.BinarySearchFunc(entries, s.FirstVersion, func(e ledger.SnapshotEntry, v int64) int { return int(e.Version - v) })
	if !ok || s.LastVersion < s.FirstVersion || i+int(s.LastVersion-s.FirstVersion) >= len(entries) {
		return fmt.Sprintf("versions %d–%d are not among the account's %d entries", s.FirstVersion, s.LastVersion, len(entries))
	}
	span := entries[i : i+int(s.LastVersion-s.FirstVersion)+1]
	if span[len(span)-1].Version != s.LastVersion {
		return fmt.Sprintf("versions %d–%d are not contiguous among the account's entries", s.FirstVersion, s.LastVersion)
	}
	debits, credits := new(big.Int), new(big.Int)
	for _, e := range span {
		if e.Amount < 0 {
			debits.Sub(debits, big.NewInt(e.Amount))
		} else {
			credits.Add(credits, big.NewInt(e.Amount))
		}
	}
	first, last := span[0], span[len(span)-1]
	var wrong []string
	day := s.PeriodStart.Format("2006-01-02")
	for _, e := range span {
		if e.Day != day {
			wrong = append(wrong, fmt.Sprintf("version %d was made on %s", e.Version, e.Day))
			break
		}
	}
	check := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			wrong = append(wrong, fmt.Sprintf("%s %v, the entries %v", what, got, want))
		}
	}
	check("opening balance", s.OpeningBalance, first.Balance-first.Amount)
	check("closing balance", s.ClosingBalance, last.Balance)
	check("debits", s.Debits.Big(), debits)
	check("credits", s.Credits.Big(), credits)
	check("entries", s.Entries, s.LastVersion-s.FirstVersion+1)
	check("last digest", s.LastDigest, last.Digest)
	return strings.Join(wrong, "; ")
}

// checkBalancesTopic: the balances topic's last record of each account
// (its latest, which compaction keeps) is the account's balance, available
// funds and version in PostgreSQL, and no account that ever changed is
// missing (an external account created for a deposit that was rejected
// has nothing to say).
func checkBalancesTopic(db *database, msgs []kafka.Message) Check {
	c := Check{Name: "the balances topic ends at every account's balance"}
	if db.outboxRecords > 0 {
		c.Detail = "not checked: the outbox is not drained (invariant 5 says so)"
		return c
	}
	latest := make(map[string]domain.Balance)
	for _, m := range msgs {
		var b domain.Balance
		if err := json.Unmarshal(m.Value, &b); err != nil || b.AccountID != string(m.Key) {
			c.Problems = append(c.Problems, fmt.Sprintf("%s/%d@%d is not a balance of its key %q", m.Topic, m.Partition, m.Offset, m.Key))
			continue
		}
		latest[b.AccountID] = b // in partition order: per key, the later is the newer
	}
	for id, a := range db.Totals {
		want := domain.Balance{AccountID: id, Currency: a.Currency, Balance: a.Balance, Available: a.Balance - a.Held, Version: a.Version}
		if got, ok := latest[id]; !ok {
			if want != (domain.Balance{AccountID: id, Currency: a.Currency}) { // an account never changed may have none
				c.Problems = append(c.Problems, fmt.Sprintf("account %s has no record", id))
			}
		} else if got != want {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: the topic says %+v, the database %+v", id, got, want))
		}
	}
	c.Detail = fmt.Sprintf("%d accounts, %d records", len(db.Totals), len(msgs))
	return c
}
