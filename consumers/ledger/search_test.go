package ledger_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/sealingtest"
)

// A cursor survives its round trip to the microsecond PostgreSQL keeps,
// and anything else a client sends as one is refused, never misread.
func TestCursorRoundTripAndRefusals(t *testing.T) {
	c := ledger.Cursor{At: time.Date(2026, 11, 30, 9, 58, 54, 493971000, time.UTC), ID: "01900000-0000-7000-8000-000000000013"}
	got, ok := ledger.ParseCursor(c.String())
	if !ok || got != c {
		t.Errorf("ParseCursor(%q) = %+v, %v; want %+v", c.String(), got, ok, c)
	}
	if got, ok := ledger.ParseCursor(ledger.Cursor{ID: c.ID}.String()); !ok || !got.At.IsZero() {
		t.Errorf("a cursor without a time = %+v, %v; want the zero time back", got, ok)
	}
	for _, bad := range []string{"", "x", "MTIz", "LTEvMDE5MDAwMDAtMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDEz==", // padded
		"MTIzL25vdC1hLXV1aWQ", // "123/not-a-uuid"
		"YWJjLzAxOTAwMDAwLTAwMDAtNzAwMC04MDAwLTAwMDAwMDAwMDAxMw", // "abc/<uuid>"
		// Times PostgreSQL would refuse (503 instead of 400): year -7537,
		// and past 9999.
		ledger.Cursor{At: time.UnixMicro(-300000000000000000), ID: c.ID}.String(),
		ledger.Cursor{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), ID: c.ID}.String(),
	} {
		if got, ok := ledger.ParseCursor(bad); ok {
			t.Errorf("ParseCursor(%q) = %+v, true; want it refused", bad, got)
		}
	}
}

func FuzzParseCursor(f *testing.F) {
	f.Add("MTIzL25vdC1hLXV1aWQ")
	f.Fuzz(func(t *testing.T, s string) {
		if c, ok := ledger.ParseCursor(s); ok {
			if again, ok := ledger.ParseCursor(c.String()); !ok || again != c {
				t.Errorf("ParseCursor(%q) = %+v, which does not round-trip", s, c)
			}
		}
	})
}

// Every combination of filters makes SQL PostgreSQL takes: each query is
// assembled from parts, and a parameter added but not used (or used
// without a type) fails only at run time.
func TestEveryFilterCombinationRuns(t *testing.T) {
	db := pgtest.New(t)
	keyring := sealingtest.Keyring(t)
	seed(t, db.Pool, keyring)
	q := &ledger.Queries{Pool: db.Pool, Keyring: keyring, Timeout: ledger.ReadTimeout}
	ctx := context.Background()
	now := time.Now().UTC()
	after := &ledger.Cursor{At: now, ID: cmdTransfer}
	n := 0
	for mask := range 1 << 6 {
		for _, status := range []string{"", "posted", "pending", ledger.StatusRejected} {
			for _, kind := range []domain.TransferKind{"", domain.KindTransfer, domain.KindHold, domain.KindTransaction} {
				f := ledger.TransferFilter{Status: status, Kind: kind, Limit: 10}
				if mask&1 != 0 {
					f.AccountID = "alice"
				}
				if mask&2 != 0 {
					f.Since = now.Add(-time.Hour)
				}
				if mask&4 != 0 {
					f.Until = now.Add(time.Hour)
				}
				if mask&8 != 0 {
					f.After = after
				}
				if mask&16 != 0 && status != ledger.StatusRejected {
					f.Reference = "order-1"
				}
				if mask&32 != 0 {
					f.Scope = []string{"alice", "bo*"}
				}
				var err error
				if status == ledger.StatusRejected {
					_, err = q.Rejections(ctx, f)
				} else {
					_, err = q.Transfers(ctx, f)
				}
				if err != nil {
					t.Fatalf("%+v: %v", f, err)
				}
				n++
			}
		}
	}
	for _, h := range []ledger.HoldFilter{{Limit: 5}, {AccountID: "alice", ExpiringBefore: now, After: &ledger.Cursor{ID: cmdTransfer}, Limit: 5},
		{After: after, Limit: 5}} {
		if _, err := q.Holds(ctx, h); err != nil {
			t.Fatalf("Holds(%+v): %v", h, err)
		}
	}
	for _, scope := range [][]string{nil, {"alice"}, {"al*"}, {"al*", "b*", "carol"}, {"*"}} {
		for _, f := range []ledger.AccountFilter{{Limit: 5}, {Prefix: "a", Currency: "EUR", After: "a", Limit: 5}} {
			f.Scope = scope
			if _, err := q.Accounts(ctx, f); err != nil {
				t.Fatalf("Accounts(%+v): %v", f, err)
			}
			f.Currency = "EUR"
			if _, err := q.Balances(ctx, f); err != nil {
				t.Fatalf("Balances(%+v): %v", f, err)
			}
		}
	}
	if n != 1<<6*16 {
		t.Fatalf("ran %d combinations", n)
	}
}

// A scoped caller's accounts and balances are exactly those its patterns
// cover, each pattern a range: '_' and '-' literal, an exact id alone.
func TestScopedAccountsAreTheirPatterns(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO accounts (account_id, currency, status, balance)
		SELECT id, 'EUR', 'active', 10 FROM unnest('{m-4,m-42,m-42:a,m-420,m_42,m.42,m-43,M-42}'::text[]) AS id`); err != nil {
		t.Fatal(err)
	}
	q := &ledger.Queries{Pool: db.Pool}
	for _, c := range []struct {
		scope []string
		want  []string
	}{
		{[]string{"m-42*"}, []string{"m-42", "m-420", "m-42:a"}}, // byte order: 0 < :
		{[]string{"m-42:*", "m-4"}, []string{"m-4", "m-42:a"}},
		{[]string{"m_*"}, []string{"m_42"}},
		{[]string{"m-42*", "m-4*"}, []string{"m-4", "m-42", "m-420", "m-42:a", "m-43"}},
		{[]string{"x*"}, nil},
	} {
		as, err := q.Accounts(ctx, ledger.AccountFilter{Scope: c.scope, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range as {
			got = append(got, a.ID)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("Accounts(scope %v) = %v, want %v", c.scope, got, c.want)
		}
		s, err := q.Balances(ctx, ledger.AccountFilter{Scope: c.scope, Currency: "EUR"})
		if err != nil || s.Accounts != int64(len(c.want)) || s.Balance != strconv.Itoa(10*len(c.want)) {
			t.Errorf("Balances(scope %v) = %+v, %v; want %d accounts", c.scope, s, err, len(c.want))
		}
	}
}

// Timeout bounds every read: past it the read fails rather than holding a
// connection (the API answers 503).
func TestReadsAreBoundedByTheTimeout(t *testing.T) {
	db := pgtest.New(t)
	keyring := sealingtest.Keyring(t)
	seed(t, db.Pool, keyring)
	q := &ledger.Queries{Pool: db.Pool, Keyring: keyring, Timeout: time.Nanosecond}
	ctx := context.Background()
	if _, err := q.Transfers(ctx, ledger.TransferFilter{AccountID: "alice", Limit: 10}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Transfers with a 1 ns timeout = %v, want the deadline exceeded", err)
	}
	if _, err := q.Account(ctx, "alice"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Account with a 1 ns timeout = %v, want the deadline exceeded", err)
	}
	q.Timeout = ledger.ReadTimeout
	if _, err := q.Account(ctx, "alice"); err != nil {
		t.Errorf("Account with the API's timeout = %v", err)
	}
}
