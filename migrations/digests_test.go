package migrations_test

import (
	"context"
	"testing"

	"github.com/txpipe/txpipe/domain"
)

// TestDigestsChainEntriesWrittenBefore applies the migrations before 0017
// in a schema of their own, writes entries as a worker before digests
// would have, and applies 0017: each entry's digest is the one
// domain.PostingDigest gives (the workers' and verify's), chained in
// account_version order, and each account keeps its latest.
func TestDigestsChainEntriesWrittenBefore(t *testing.T) {
	ctx := context.Background()
	conn, digests := before(t, "before_digests", 17)
	type entry struct {
		acct, cmd     string
		version       int64
		amount, after int64
	}
	entries := []entry{
		{"alice", "0190b1c2-0000-7000-8000-000000000001", 1, 100, 100},
		{"alice", "0190b1c2-0000-7000-8000-00000000000a", 2, -30, 70},
		{"bob", "0190b1c2-0000-7000-8000-00000000000a", 1, 30, 30},
		{"carol", "", 0, 0, 0}, // an account without postings
	}
	for _, e := range entries {
		if _, err := conn.Exec(ctx, `INSERT INTO accounts (account_id, currency, status, balance, version) VALUES ($1, 'EUR', 'active', $2, $3)
			ON CONFLICT (account_id) DO UPDATE SET balance = $2, version = $3`, e.acct, e.after, e.version); err != nil {
			t.Fatal(err)
		}
		if e.version == 0 {
			continue
		}
		if _, err := conn.Exec(ctx, `INSERT INTO entries (account_id, account_version, command_id, command_type, currency, amount, balance_after, created_at)
			VALUES ($1, $2, $3, 'transfer', 'EUR', $4, $5, now())`, e.acct, e.version, e.cmd, e.amount, e.after); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, digests.SQL); err != nil {
		t.Fatalf("migration %s: %v", digests.Name, err)
	}
	// chained checks each entry's digest, in order, against the chain
	// domain.PostingDigest makes.
	prev := map[string]string{}
	chained := func(es []entry) {
		t.Helper()
		for _, e := range es {
			want := domain.PostingDigest(prev[e.acct], domain.Posting{AccountID: e.acct, AccountVersion: e.version, Currency: "EUR",
				Amount: e.amount, BalanceAfter: e.after}, e.cmd)
			prev[e.acct] = want
			var got string
			if err := conn.QueryRow(ctx, `SELECT encode(digest, 'hex') FROM entries WHERE account_id = $1 AND account_version = $2`, e.acct, e.version).Scan(&got); err != nil || got != want {
				t.Errorf("entry %s v%d: digest %q (%v), want %s", e.acct, e.version, got, err, want)
			}
		}
	}
	chained(entries[:3])
	// A worker of the previous version, still running during a rolling
	// upgrade, inserts entries without a digest (alice twice in one
	// statement, as a batch does): the trigger chains them.
	if _, err := conn.Exec(ctx, `INSERT INTO entries (account_id, account_version, command_id, command_type, currency, amount, balance_after, created_at)
		VALUES ('alice', 3, '0190b1c2-0000-7000-8000-00000000000b', 'deposit', 'EUR', 5, 75, now()),
		       ('alice', 4, '0190b1c2-0000-7000-8000-00000000000c', 'deposit', 'EUR', 5, 80, now())`); err != nil {
		t.Fatalf("an entry written as the previous version writes it: %v", err)
	}
	chained([]entry{{"alice", "0190b1c2-0000-7000-8000-00000000000b", 3, 5, 75}, {"alice", "0190b1c2-0000-7000-8000-00000000000c", 4, 5, 80}})
	for acct, want := range map[string]string{"alice": prev["alice"], "bob": prev["bob"], "carol": ""} {
		var got string
		if err := conn.QueryRow(ctx, `SELECT coalesce(encode(digest, 'hex'), '') FROM accounts WHERE account_id = $1`, acct).Scan(&got); err != nil || got != want {
			t.Errorf("account %s keeps digest %q (%v), want %q", acct, got, err, want)
		}
	}
}
