package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/segmentio/kafka-go"
	"slices"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestAQueryErrorFailsTheAudit takes the right to read entries away from
// the auditor's role. PostgreSQL reports that once the query runs, after
// pgx's Query has returned: the audit must fail with that error instead of
// reading no entries and reporting balances without postings.
func TestAQueryErrorFailsTheAudit(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO accounts (account_id, currency, status) VALUES ('a', 'EUR', 'active')`); err != nil {
		t.Fatal(err)
	}
	if _, err := loadDatabase(ctx, db.Pool, "g", "commands"); err != nil {
		t.Fatalf("loadDatabase before the revoke: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, `REVOKE SELECT ON entries FROM CURRENT_USER`); err != nil {
		t.Fatal(err)
	}
	got, err := loadDatabase(ctx, db.Pool, "g", "commands")
	if err == nil || !strings.Contains(err.Error(), "read entries") || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("loadDatabase = %+v, %v; want the permission error", got, err)
	}
}

// TestSingleEffectCountsWhatEachCommandMakes: a command's entries must be
// exactly what it makes (a pair, a pair per leg, a pair per fee); one more
// pair is an effect applied twice, even when balances and sums agree.
func TestSingleEffectCountsWhatEachCommandMakes(t *testing.T) {
	pair := func(cur string, n int64) []ledger.SnapshotEntry {
		return []ledger.SnapshotEntry{{Amount: -n, Currency: cur}, {Amount: n, Currency: cur}}
	}
	pairs := func(ps ...[]ledger.SnapshotEntry) (out []ledger.SnapshotEntry) {
		for _, p := range ps {
			out = append(out, p...)
		}
		return out
	}
	for _, tt := range []struct {
		name     string
		typ      domain.Type
		entries  []ledger.SnapshotEntry
		legs     int    // of the command's own transfer, or of its target
		target   string // a reversal's
		feePairs int
		problems int
	}{
		{"a transfer", domain.TypeTransfer, pair("EUR", 5), 0, "", 0, 0},
		{"a transfer applied twice", domain.TypeTransfer, pairs(pair("EUR", 5), pair("EUR", 5)), 0, "", 0, 1},
		{"a transfer with its fee", domain.TypeTransfer, pairs(pair("EUR", 5), pair("EUR", 1)), 0, "", 1, 0},
		{"a reversal of a transfer applied twice", domain.TypeReverse, pairs(pair("EUR", 5), pair("EUR", 5)), 0, "t", 0, 1},
		{"a reversal of two of a transaction's three legs", domain.TypeReverse, pairs(pair("EUR", 5), pair("USD", 5)), 3, "t", 0, 0},
		{"a reversal of a three-leg transaction with four pairs", domain.TypeReverse, pairs(pair("EUR", 1), pair("EUR", 1), pair("EUR", 1), pair("EUR", 1)), 3, "t", 0, 1},
		{"a transaction of two legs, one with a fee", domain.TypeTransaction, pairs(pair("EUR", 5), pair("USD", 5), pair("EUR", 1)), 2, "", 1, 0},
		{"a transaction short of a leg", domain.TypeTransaction, pair("EUR", 5), 2, "", 0, 1},
		{"unbalanced in one currency", domain.TypeTransaction, []ledger.SnapshotEntry{{Amount: -5, Currency: "EUR"}, {Amount: 5, Currency: "USD"}}, 1, "", 0, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := &database{Snapshot: &ledger.Snapshot{Decided: map[string]ledger.Decided{"c": {Type: string(tt.typ), Status: "applied"}},
				ByCommand: map[string][]ledger.SnapshotEntry{"c": tt.entries}, Legs: map[string]int{}, FeePairs: map[string]int{"c": tt.feePairs}}}
			targets := map[string]string{}
			if tt.target != "" {
				targets["c"] = tt.target
				db.Legs[tt.target] = tt.legs
			} else if tt.legs > 0 {
				db.Legs["c"] = tt.legs
			}
			if got := checkSingleEffect(db, targets); len(got.Problems) != tt.problems {
				t.Errorf("problems = %q, want %d", got.Problems, tt.problems)
			}
		})
	}
}

// checkDigests names the first broken link of a chain, in PostgreSQL and
// on the topic: an altered amount, a digest rewritten, a posting missing.
func TestDigestsNameTheFirstBrokenLink(t *testing.T) {
	type step struct {
		cmd    string
		amount int64
	}
	steps := []step{{"c1", 100}, {"c2", -30}, {"c3", 5}}
	// The honest chain of account a.
	var entries []ledger.SnapshotEntry
	var msgs []kafka.Message
	prev, bal := "", int64(0)
	for i, s := range steps {
		bal += s.amount
		p := domain.Posting{AccountID: "a", AccountVersion: int64(i + 1), Currency: "EUR", Amount: s.amount, BalanceAfter: bal}
		p.Digest = domain.PostingDigest(prev, p, s.cmd)
		prev = p.Digest
		entries = append(entries, ledger.SnapshotEntry{Account: "a", Version: p.AccountVersion, Amount: p.Amount, Balance: bal,
			CommandID: s.cmd, Currency: "EUR", Digest: p.Digest})
		ev := domain.Event{EventID: fmt.Sprintf("e%d", i), Type: "posting.created", CommandID: s.cmd,
			Data: json.RawMessage(fmt.Sprintf(`{"account_id":"a","account_version":%d,"currency":"EUR","amount":%d,"balance_after":%d,"command_type":"deposit","digest":%q}`,
				p.AccountVersion, p.Amount, bal, p.Digest))}
		msgs = append(msgs, kafka.Message{Key: []byte("a"), Value: ev.Encode(), Offset: int64(i)})
	}
	db := func(es []ledger.SnapshotEntry, digest string) *database {
		return &database{Snapshot: &ledger.Snapshot{Entries: map[string][]ledger.SnapshotEntry{"a": es},
			Totals: map[string]ledger.Totals{"a": {Currency: "EUR", Balance: bal, Version: 3, Digest: digest}}}}
	}
	if c := checkDigests(db(entries, prev), msgs); len(c.Problems) != 0 {
		t.Fatalf("the honest chain: %q", c.Problems)
	}
	tampered := slices.Clone(entries)
	tampered[1].Amount = -31
	if c := checkDigests(db(tampered, prev), msgs); len(c.Problems) != 1 || !strings.Contains(c.Problems[0], "PostgreSQL: account a breaks at version 2") {
		t.Errorf("an amount altered in PostgreSQL: %q, want one problem at version 2", c.Problems)
	}
	if c := checkDigests(db(entries, "00"), msgs); len(c.Problems) != 2 {
		t.Errorf("an account's digest rewritten: %q, want it named (against its entries and the topic)", c.Problems)
	}
	altered := slices.Clone(msgs)
	altered[2].Value = []byte(strings.Replace(string(msgs[2].Value), `"amount":5`, `"amount":6`, 1))
	if c := checkDigests(db(entries, prev), altered); len(c.Problems) != 1 || !strings.Contains(c.Problems[0], "the postings topic: account a breaks at version 3") {
		t.Errorf("a posting altered on the topic: %q, want one problem at version 3", c.Problems)
	}
	if c := checkDigests(db(entries, prev), []kafka.Message{msgs[0], msgs[2]}); len(c.Problems) != 1 || !strings.Contains(c.Problems[0], "account a: version 3 follows 1") {
		t.Errorf("a posting missing from the topic: %q, want the gap named", c.Problems)
	}
	if c := checkDigests(db(entries, prev), []kafka.Message{msgs[0], msgs[1], msgs[1], msgs[0], msgs[2]}); len(c.Problems) != 0 {
		t.Errorf("postings published again: %q, want none", c.Problems)
	}
}

// TestRowsNamingNoAccountFailInvariant4: with no foreign keys to accounts
// (migration 0022), the audit itself finds an entry, a transfer or a leg
// naming an account that does not exist.
func TestRowsNamingNoAccountFailInvariant4(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO accounts (account_id, currency, status) VALUES ('a', 'EUR', 'active'), ('b', 'EUR', 'active');
		INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount, status, created_at, updated_at)
			VALUES ('00000000-0000-7000-8000-000000000001', 'transfer', 'a', 'b', 'EUR', 1, 'posted', now(), now())`); err != nil {
		t.Fatal(err)
	}
	clean, err := loadDatabase(ctx, db.Pool, "g", "commands")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkBalances(clean).Problems {
		if strings.Contains(p, "does not exist") {
			t.Errorf("a ledger whose rows all name accounts: %s", p)
		}
	}
	if _, err := db.Pool.Exec(ctx, `
		INSERT INTO entries (account_id, account_version, command_id, command_type, currency, amount, balance_after, created_at)
			VALUES ('ghost-entry', 1, gen_random_uuid(), 'deposit', 'EUR', 5, 5, now());
		INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount, status, created_at, updated_at)
			VALUES ('00000000-0000-7000-8000-000000000002', 'transfer', 'a', 'ghost-transfer', 'EUR', 1, 'posted', now(), now());
		INSERT INTO transfer_legs (transfer_id, leg, from_account_id, to_account_id, currency, amount, created_at)
			VALUES ('00000000-0000-7000-8000-000000000001', 0, 'ghost-leg', 'b', 'EUR', 1, now())`); err != nil {
		t.Fatal(err)
	}
	dirty, err := loadDatabase(ctx, db.Pool, "g", "commands")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(checkBalances(dirty).Problems, "\n")
	for _, want := range []string{
		"1 entries of account ghost-entry, which does not exist",
		"transfer 00000000-0000-7000-8000-000000000002 names ghost-transfer, which does not exist",
		"transfer 00000000-0000-7000-8000-000000000001 names ghost-leg, which does not exist",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("invariant 4's problems lack %q; got:\n%s", want, got)
		}
	}
}
