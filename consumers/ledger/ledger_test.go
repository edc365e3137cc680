package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/pgtx"
	"github.com/txpipe/txpipe/internal/sealingtest"
)

const (
	cmdOpen     = "00000000-0000-7000-8000-000000000001"
	cmdTransfer = "00000000-0000-7000-8000-000000000002"
	cmdDead     = "00000000-0000-7000-8000-000000000003"
	cmdUntyped  = "00000000-0000-7000-8000-000000000004" // dead-lettered, its type unreadable
)

var src = ledger.Source{Group: "g", Topic: "commands"}

// batch runs one worker transaction: Load at expected, then fn's writes.
func batch(t *testing.T, pool *pgxpool.Pool, req ledger.LoadRequest, fn func(st *ledger.State) *ledger.Writes) error {
	t.Helper()
	ctx := context.Background()
	return pgtx.Run(ctx, pool, func(conn *pgxpool.Conn) error {
		st, err := src.Load(ctx, conn, req)
		if err != nil {
			return err
		}
		return src.Write(ctx, conn, fn(st))
	})
}

// seed stores, through Load and Write as a worker would: alice opened with
// sealed metadata, a transfer of 30 from alice to bob, and a record
// dead-lettered.
func seed(t *testing.T, pool *pgxpool.Pool, keyring *sealing.Keyring) {
	t.Helper()
	err := batch(t, pool, ledger.LoadRequest{Expected: ledger.Positions{0: 0}}, func(st *ledger.State) *ledger.Writes {
		alice := &domain.Account{ID: "alice", Currency: "EUR", Status: domain.AccountActive, Balance: 100, Version: 1}
		bob := &domain.Account{ID: "bob", Currency: "EUR", Status: domain.AccountActive}
		keyID, ct := keyring.Seal([]byte(`{"tier":"gold"}`), sealing.MetadataAAD("alice"))
		return &ledger.Writes{Opened: []*domain.Account{alice, bob}, Now: st.Now, Next: ledger.Positions{0: 2},
			AccountMetadata: map[string]domain.Sealed{"alice": {KeyID: keyID, Ciphertext: ct}},
			Decisions: []ledger.Decision{{Command: domain.Command{CommandID: cmdOpen, Type: domain.TypeOpenAccount, AccountID: "alice"},
				Fingerprint: []byte{1}, Result: domain.Result{Status: domain.StatusApplied}}},
			DeadLettered: []ledger.DeadLettered{{Identity: domain.Identity{CommandID: cmdDead, Type: domain.TypeTransfer},
				Reason: "invalid_command", Detail: "no amount", Offset: 1},
				{Identity: domain.Identity{CommandID: cmdUntyped}, Reason: "invalid_command", Detail: "type unknown", Offset: 1}}}
	})
	if err != nil {
		t.Fatalf("first batch: %v", err)
	}
	err = batch(t, pool, ledger.LoadRequest{Expected: ledger.Positions{0: 2}, CommandIDs: []string{cmdTransfer}, Accounts: []string{"bob", "alice"}},
		func(st *ledger.State) *ledger.Writes {
			res := st.Book.Apply(domain.Command{CommandID: cmdTransfer, Type: domain.TypeTransfer, FromAccountID: "alice", ToAccountID: "bob",
				Amount: 30, Currency: "EUR", Reference: "order-1"}, st.Now)
			keyID, ct := keyring.Seal([]byte(`{"cart":7}`), sealing.TransferMetadataAAD(cmdTransfer))
			if res.Status != domain.StatusApplied {
				t.Fatalf("transfer %s %s", res.Status, res.Reason)
			}
			w := &ledger.Writes{Changed: []*domain.Account{st.Book.Accounts["alice"], st.Book.Accounts["bob"]}, Locked: st.Locked,
				Created: []*domain.Transfer{res.Transfer}, Now: st.Now, Next: ledger.Positions{0: 3},
				TransferMetadata: map[string]domain.Sealed{cmdTransfer: {KeyID: keyID, Ciphertext: ct}},
				Decisions: []ledger.Decision{{Command: domain.Command{CommandID: cmdTransfer, Type: domain.TypeTransfer, FromAccountID: "alice"},
					Fingerprint: []byte{2}, Result: res, Offset: 2}}}
			for _, p := range res.Postings {
				w.Entries = append(w.Entries, ledger.Entry{Posting: p, CommandID: cmdTransfer, CommandType: domain.TypeTransfer})
			}
			return w
		})
	if err != nil {
		t.Fatalf("second batch: %v", err)
	}
}

func TestQueriesReadWhatABatchWrote(t *testing.T) {
	db := pgtest.New(t)
	keyring := sealingtest.Keyring(t)
	seed(t, db.Pool, keyring)
	q := &ledger.Queries{Pool: db.Pool, Keyring: keyring}
	ctx := context.Background()

	a, err := q.Account(ctx, "alice")
	if err != nil {
		t.Fatalf("Account(alice) error = %v", err)
	}
	if a.Balance != 70 || a.Version != 2 || string(a.Metadata) != `{"tier":"gold"}` {
		t.Errorf("Account(alice) = balance %d version %d metadata %s; want 70, 2 and the metadata opened", a.Balance, a.Version, a.Metadata)
	}
	if _, err := q.Account(ctx, "carol"); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Account(carol) error = %v, want ErrNotFound", err)
	}

	tr, err := q.Transfer(ctx, cmdTransfer)
	if err != nil || tr.Amount != 30 || tr.FromAccountID != "alice" || tr.Status != domain.TransferPosted ||
		tr.Reference != "order-1" || string(tr.Metadata) != `{"cart":7}` {
		t.Errorf("Transfer() = %+v, %v; want alice's posted 30, reference order-1, metadata opened", tr, err)
	}
	if byRef, err := q.Transfers(ctx, ledger.TransferFilter{Reference: "order-1", Limit: 2}); err != nil || len(byRef) != 1 || byRef[0].TransferID != cmdTransfer {
		t.Errorf("Transfers(reference order-1) = %+v, %v; want %s", byRef, err, cmdTransfer)
	}
	if byRef, err := q.Transfers(ctx, ledger.TransferFilter{Reference: "order-2", Limit: 2}); err != nil || len(byRef) != 0 {
		t.Errorf("Transfers(reference order-2) = %+v, %v; want none", byRef, err)
	}
	if _, err := q.Transfer(ctx, cmdDead); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Transfer(no such) error = %v, want ErrNotFound", err)
	}

	page, err := q.Statement(ctx, "alice", 0, 10)
	if err != nil {
		t.Fatalf("Statement() error = %v", err)
	}
	var got []string
	for _, e := range page {
		b, _ := json.Marshal([]any{e.AccountVersion, e.CommandID, e.Amount, e.BalanceAfter})
		got = append(got, string(b))
	}
	if diff := cmp.Diff([]string{`[2,"` + cmdTransfer + `",-30,70]`}, got); diff != "" {
		t.Errorf("Statement(alice) (-want +got):\n%s", diff)
	}
	if page, err := q.Statement(ctx, "alice", 2, 10); err != nil || len(page) != 0 {
		t.Errorf("Statement(alice, before 2) = %v, %v; want no entry", page, err)
	}
	if _, err := q.Statement(ctx, "carol", 0, 10); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Statement(carol) error = %v, want ErrNotFound", err)
	}

	for id, want := range map[string]string{cmdOpen: "applied", cmdDead: "dead_lettered", cmdTransfer: "applied", cmdUntyped: "dead_lettered"} {
		o, err := q.Outcome(ctx, id)
		if err != nil || o.Status != want || o.At.Location() != time.UTC {
			t.Errorf("Outcome(%s) = %+v, %v; want %s at a UTC time", id, o, err, want)
		}
	}
	if o, err := q.Outcome(ctx, cmdUntyped); err != nil || o.Type != "" || o.Reason == nil || *o.Reason != "invalid_command" ||
		o.Detail == nil || *o.Detail != "type unknown" {
		t.Errorf("Outcome(untyped) = %+v, %v; want no type, reason invalid_command, detail \"type unknown\"", o, err)
	}
	if _, err := q.Outcome(ctx, "00000000-0000-7000-8000-000000000099"); !errors.Is(err, ledger.ErrNotFound) {
		t.Errorf("Outcome(unknown) error = %v, want ErrNotFound", err)
	}
	// Times come back in UTC whatever the session's time zone.
	if _, err := db.Pool.Exec(ctx, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = ''Asia/Tokyo''', current_database()); END $$`); err != nil {
		t.Fatal(err)
	}
	db.Pool.Reset() // new sessions pick the setting up
	a, _ = q.Account(ctx, "alice")
	tr, _ = q.Transfer(ctx, cmdTransfer)
	page, _ = q.Statement(ctx, "alice", 0, 1)
	for what, at := range map[string]time.Time{"account created": a.CreatedAt, "account updated": a.UpdatedAt,
		"transfer created": tr.CreatedAt, "transfer updated": tr.UpdatedAt, "entry": page[0].CreatedAt} {
		if at.Location() != time.UTC {
			t.Errorf("%s at %v, want UTC", what, at)
		}
	}
}

// TestAdvanceMovesOnlyFromWhereItIs: Advance moves a stored offset that
// stands where the caller says, and nothing when it does not.
func TestAdvanceMovesOnlyFromWhereItIs(t *testing.T) {
	db := pgtest.New(t)
	seed(t, db.Pool, sealingtest.Keyring(t))
	ctx := context.Background()
	if err := src.Advance(ctx, db.Pool, ledger.Positions{0: 3}, ledger.Positions{0: 9}); err != nil {
		t.Fatalf("Advance(3 → 9) error = %v", err)
	}
	if err := src.Advance(ctx, db.Pool, ledger.Positions{0: 3}, ledger.Positions{0: 12}); !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("Advance(3 → 12) from 9: error = %v, want ErrFenced", err)
	}
	got, err := src.Offsets(ctx, db.Pool, []int{0, 1})
	if err != nil || !cmp.Equal(got, ledger.Positions{0: 9}) {
		t.Errorf("Offsets() = %v, %v; want partition 0 at 9 and no row for 1", got, err)
	}
}

// TestExpireDueExpiresEachHoldOnce: a hold past its expiry is expired with
// what decide returns, its account's held amount released, once.
func TestExpireDueExpiresEachHoldOnce(t *testing.T) {
	db := pgtest.New(t)
	keyring := sealingtest.Keyring(t)
	seed(t, db.Pool, keyring)
	ctx := context.Background()
	const hold = "00000000-0000-7000-8000-000000000005"
	var expires time.Time
	err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 3}, CommandIDs: []string{hold}, Accounts: []string{"alice", "bob"}},
		func(st *ledger.State) *ledger.Writes {
			expires = st.Now.Add(time.Minute)
			res := st.Book.Apply(domain.Command{CommandID: hold, Type: domain.TypeHold, FromAccountID: "alice", ToAccountID: "bob",
				Amount: 20, Currency: "EUR", ExpiresAt: &expires}, st.Now)
			if res.Status != domain.StatusApplied {
				t.Fatalf("hold %s %s", res.Status, res.Reason)
			}
			return &ledger.Writes{Changed: []*domain.Account{st.Book.Accounts["alice"]}, Locked: st.Locked, Created: []*domain.Transfer{res.Transfer},
				Now: st.Now, Next: ledger.Positions{0: 4}}
		})
	if err != nil {
		t.Fatal(err)
	}
	expire := func(book *domain.Book, now time.Time) ledger.Expiry {
		var ex ledger.Expiry
		for id := range book.Transfers {
			if tr, ok := book.Expire(id, now); ok {
				ex.Holds = append(ex.Holds, tr)
			}
		}
		return ex
	}
	for _, tt := range []struct {
		at   time.Time
		want int
	}{{expires.Add(-time.Second), 0}, {expires, 1}, {expires.Add(time.Hour), 0}} {
		if n, err := ledger.ExpireDue(ctx, db.Pool, ledger.At(tt.at), 10, expire); err != nil || n != tt.want {
			t.Errorf("ExpireDue(%v) = %d, %v; want %d", tt.at, n, err, tt.want)
		}
	}
	q := &ledger.Queries{Pool: db.Pool, Keyring: keyring}
	tr, err := q.Transfer(ctx, hold)
	if err != nil || tr.Status != domain.TransferExpired {
		t.Errorf("hold after expiry = %+v, %v; want expired", tr.Status, err)
	}
	if a, err := q.Account(ctx, "alice"); err != nil || a.Held != 0 {
		t.Errorf("alice after expiry: held %d, %v; want 0", a.Held, err)
	}
	// The hold settled when it expired: as of before, it was held; after,
	// not; and a hold captured in the batch that made it settled then.
	var settled, made time.Time
	if err := db.Pool.QueryRow(ctx, `SELECT settled_at, created_at FROM transfers WHERE transfer_id = $1`, hold).Scan(&settled, &made); err != nil {
		t.Fatalf("settled_at of the expired hold: %v", err)
	}
	for _, c := range []struct {
		at   time.Time
		held int64
	}{{made, 20}, {settled.Add(-time.Microsecond), 20}, {settled, 0}} {
		if s, err := q.AccountAsOf(ctx, "alice", c.at, -1); err != nil || s.PendingHolds != c.held {
			t.Errorf("alice as of %v: pending holds %d, %v; want %d", c.at, s.PendingHolds, err, c.held)
		}
	}
	const captured = "00000000-0000-7000-8000-000000000006"
	err = batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 4}, CommandIDs: []string{captured}, Accounts: []string{"alice", "bob"}},
		func(st *ledger.State) *ledger.Writes {
			res := st.Book.Apply(domain.Command{CommandID: captured, Type: domain.TypeHold, FromAccountID: "alice", ToAccountID: "bob",
				Amount: 5, Currency: "EUR"}, st.Now)
			res.Transfer.Status = domain.TransferCaptured // as a capture later in the same batch leaves it
			return &ledger.Writes{Created: []*domain.Transfer{res.Transfer}, Locked: st.Locked, Now: st.Now, Next: ledger.Positions{0: 5}}
		})
	if err != nil {
		t.Fatal(err)
	}
	var same bool
	if err := db.Pool.QueryRow(ctx, `SELECT settled_at = created_at FROM transfers WHERE transfer_id = $1`, captured).Scan(&same); err != nil || !same {
		t.Errorf("a hold captured in the batch that made it: settled_at = created_at is %v (%v), want true", same, err)
	}
}

// TestLoadReadsReferencesAndTheIndexRefusesADuplicate: Load puts the
// references already held into the book; a transfer written with one of
// them anyway (two batches racing) fails on the unique index, as a unique
// violation, which the worker retries.
func TestLoadReadsReferencesAndTheIndexRefusesADuplicate(t *testing.T) {
	db := pgtest.New(t)
	seed(t, db.Pool, sealingtest.Keyring(t))
	err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 3}, References: []string{"order-1", "order-2"}, Accounts: []string{"alice", "bob"}},
		func(st *ledger.State) *ledger.Writes {
			if diff := cmp.Diff(map[string]string{"order-1": cmdTransfer}, st.Book.References); diff != "" {
				t.Errorf("loaded references (-want +got):\n%s", diff)
			}
			dup := &domain.Transfer{ID: "00000000-0000-7000-8000-000000000009", Kind: domain.KindTransfer, FromAccountID: "alice",
				ToAccountID: "bob", Currency: "EUR", Amount: 1, Status: domain.TransferPosted, Reference: "order-1"}
			return &ledger.Writes{Created: []*domain.Transfer{dup}, Locked: st.Locked, Now: st.Now, Next: ledger.Positions{0: 4}}
		})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.UniqueViolation {
		t.Fatalf("writing a used reference: error = %v, want a unique violation", err)
	}
}

// TestLoadFencesAStalePosition: a batch that expects another stored
// offset than the one stored commits nothing.
func TestLoadFencesAStalePosition(t *testing.T) {
	db := pgtest.New(t)
	seed(t, db.Pool, sealingtest.Keyring(t))
	err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 2}}, func(st *ledger.State) *ledger.Writes {
		t.Fatal("Write reached at a stale position")
		return nil
	})
	if !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("Load at a stale position: error = %v, want ErrFenced", err)
	}
}

// TestSnapshotReadsTheWholeLedger: the auditor's snapshot holds what the
// batches wrote, and its figures agree with one another.
func TestSnapshotReadsTheWholeLedger(t *testing.T) {
	db := pgtest.New(t)
	seed(t, db.Pool, sealingtest.Keyring(t))
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	snap, err := src.ReadSnapshot(ctx, tx)
	if err != nil {
		t.Fatalf("ReadSnapshot() error = %v", err)
	}
	if snap.Offsets[0] != 3 || len(snap.Decided) != 2 || len(snap.ByCommand[cmdTransfer]) != 2 {
		t.Errorf("snapshot: offset %d, %d decisions, %d entries of the transfer; want 3, 2 and 2",
			snap.Offsets[0], len(snap.Decided), len(snap.ByCommand[cmdTransfer]))
	}
	if a, b := snap.Totals["alice"], snap.Totals["bob"]; a.Balance+b.Balance != 100 || a.Version != 2 || b.Version != 1 {
		t.Errorf("snapshot totals alice %+v bob %+v; want 70 at 2 and 30 at 1", a, b)
	}
}

// TestTransactionLegsRoundTrip: a transaction's legs are written with it,
// loaded with it (their accounts locked too) by a batch that reverses it,
// updated by that reversal, and read back by the API's query.
func TestTransactionLegsRoundTrip(t *testing.T) {
	db := pgtest.New(t)
	keyring := sealingtest.Keyring(t)
	seed(t, db.Pool, keyring) // alice 70, bob 30
	ctx := context.Background()
	const txID, revID = "00000000-0000-7000-8000-000000000010", "00000000-0000-7000-8000-000000000011"
	legs := []domain.Leg{{FromAccountID: "alice", ToAccountID: "bob", Amount: 20, Currency: "EUR"},
		{FromAccountID: "bob", ToAccountID: "alice", Amount: 5, Currency: "EUR"}}
	apply := func(pos int64, cmd domain.Command, req ledger.LoadRequest) {
		t.Helper()
		req.Expected = ledger.Positions{0: pos}
		err := batch(t, db.Pool, req, func(st *ledger.State) *ledger.Writes {
			res := st.Book.Apply(cmd, st.Now)
			if res.Status != domain.StatusApplied {
				t.Fatalf("%s: %s %s", cmd.Type, res.Status, res.Reason)
			}
			w := &ledger.Writes{Changed: []*domain.Account{st.Book.Accounts["alice"], st.Book.Accounts["bob"]}, Locked: st.Locked, Now: st.Now, Next: ledger.Positions{0: pos + 1}}
			if st.Loaded[res.Transfer.ID] {
				w.Updated = []*domain.Transfer{res.Transfer}
			} else {
				w.Created = []*domain.Transfer{res.Transfer}
			}
			return w
		})
		if err != nil {
			t.Fatalf("%s: %v", cmd.Type, err)
		}
	}
	apply(3, domain.Command{CommandID: txID, Type: domain.TypeTransaction, Legs: legs}, ledger.LoadRequest{Accounts: []string{"alice", "bob"}})
	// The reversal names only the transaction and alice: Load finds bob
	// through the legs.
	apply(4, domain.Command{CommandID: revID, Type: domain.TypeReverse, AccountID: "alice", TransferID: txID, LegAmounts: []int64{0, 5}},
		ledger.LoadRequest{Accounts: []string{"alice"}, Transfers: []string{txID}})

	tr, err := (&ledger.Queries{Pool: db.Pool, Keyring: keyring}).Transfer(ctx, txID)
	if err != nil {
		t.Fatal(err)
	}
	want := []domain.LegData{{Leg: legs[0]}, {Leg: legs[1], ReversedAmount: 5}}
	if diff := cmp.Diff(want, tr.Legs); diff != "" || tr.Kind != domain.KindTransaction || tr.Amount != 20 {
		t.Errorf("Transfer(transaction) kind %s amount %d, legs (-want +got):\n%s", tr.Kind, tr.Amount, diff)
	}
	for id, want := range map[string]int64{"alice": 70 - 20 + 5 - 5, "bob": 30 + 20 - 5 + 5} {
		if a, err := (&ledger.Queries{Pool: db.Pool, Keyring: keyring}).Account(ctx, id); err != nil || a.Balance != want {
			t.Errorf("%s: balance %d, %v; want %d", id, a.Balance, err, want)
		}
	}
}

// TestFeePlansAreWrittenAndLocked: an account opened with a plan keeps it;
// a payer's revenue account is locked with it; a plan changed while a batch
// waits for the payer's lock makes that batch fail with ErrPlanMoved
// (retried), not decide without the new revenue account.
func TestFeePlansAreWrittenAndLocked(t *testing.T) {
	db := pgtest.New(t)
	keyring := sealingtest.Keyring(t)
	seed(t, db.Pool, keyring) // alice, bob; offset 3
	ctx := context.Background()
	plan := &domain.FeePlan{Bps: 100, Fixed: 1, RevenueAccountID: "bob"}
	err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 3}}, func(st *ledger.State) *ledger.Writes {
		return &ledger.Writes{Now: st.Now, Next: ledger.Positions{0: 4}, Opened: []*domain.Account{
			{ID: "carol", Currency: "EUR", Status: domain.AccountActive, FeePlan: plan},
			{ID: "rev2", Currency: "EUR", Status: domain.AccountActive}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, err := (&ledger.Queries{Pool: db.Pool, Keyring: keyring}).Account(ctx, "carol"); err != nil || a.FeePlan == nil || *a.FeePlan != *plan {
		t.Fatalf("carol's plan = %+v, %v; want %+v", a.FeePlan, err, plan)
	}
	// carol pays: bob, her revenue account, is locked with her.
	err = batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 4}, Accounts: []string{"carol", "alice"}, Payers: []string{"carol"}},
		func(st *ledger.State) *ledger.Writes {
			if st.Book.Accounts["bob"] == nil {
				t.Error("the payer's revenue account was not loaded")
			}
			return &ledger.Writes{Now: st.Now, Next: ledger.Positions{0: 5}}
		})
	if err != nil {
		t.Fatal(err)
	}
	// Another transaction holds carol and moves her plan to rev2; the
	// batch starts meanwhile (its statement picks the revenue accounts of
	// the old plan) and waits for carol.
	other, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	if _, err := other.Exec(ctx, `UPDATE accounts SET fee_plan = '{"bps":100,"fixed":1,"revenue_account_id":"rev2"}' WHERE account_id = 'carol'`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 5}, Accounts: []string{"carol", "alice"}, Payers: []string{"carol"}},
			func(st *ledger.State) *ledger.Writes {
				return &ledger.Writes{Now: st.Now, Next: ledger.Positions{0: 6}}
			})
	}()
	// Wait until the batch waits for carol's row lock, then let the plan
	// change commit.
	deadline := time.Now().Add(60 * time.Second)
	for waiting := false; !waiting; time.Sleep(10 * time.Millisecond) {
		if err := db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the batch never waited for carol's lock")
		}
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ledger.ErrPlanMoved) {
		t.Fatalf("batch whose payer's plan moved while it waited: error = %v, want ErrPlanMoved", err)
	}
}

// TestStatementPeriodsRoundTripAndCloseOnce: an account's open period,
// with sums beyond int64, is written and loaded back as it was; closers
// running at once close every period of a past day exactly once, and none
// of today; and a batch whose clock is behind a day one of its accounts has
// begun (closed the day before, or an open period of a later day) is dated
// at that day's start.
func TestStatementPeriodsRoundTripAndCloseOnce(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	big := domain.Sum{}
	for range 2000 {
		big.Add(domain.MaxAmount) // > 2^63
	}
	day := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	old := &domain.Account{ID: "old", Currency: "EUR", Status: domain.AccountActive, Balance: 7, Version: 3, Digest: "ab",
		Period: domain.Period{Day: "2026-11-30", Opening: 5, FirstVersion: 2, Debits: big, Credits: big, Entries: 2}}
	old.Period.Credits.Add(2)
	today := &domain.Account{ID: "today", Currency: "EUR", Status: domain.AccountActive, Balance: 1, Version: 1,
		Period: domain.Period{Day: "2026-12-01", FirstVersion: 1}, ClosedThrough: "2026-11-29"}
	// A worker of the previous version posted version 2 of "upgraded"
	// without counting it in the period.
	upgraded := &domain.Account{ID: "upgraded", Currency: "EUR", Status: domain.AccountActive, Balance: 2, Version: 2,
		Period: domain.Period{Day: "2026-11-30", FirstVersion: 1, Entries: 1}}
	upgraded.Period.Credits.Add(5)
	accounts := []*domain.Account{old, today, upgraded}
	for i := range 300 {
		accounts = append(accounts, &domain.Account{ID: fmt.Sprintf("c%03d", i), Currency: "EUR", Status: domain.AccountActive,
			Period: domain.Period{Day: "2026-11-30", FirstVersion: 1}})
	}
	err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 0}}, func(st *ledger.State) *ledger.Writes {
		return &ledger.Writes{Opened: accounts, Now: day, Next: ledger.Positions{0: 1}, Entries: []ledger.Entry{
			{Posting: domain.Posting{AccountID: "upgraded", Currency: "EUR", Amount: 5, BalanceAfter: 5, AccountVersion: 1, Digest: strings.Repeat("a", 64)}, CommandID: cmdOpen, CommandType: domain.TypeDeposit},
			{Posting: domain.Posting{AccountID: "upgraded", Currency: "EUR", Amount: -3, BalanceAfter: 2, AccountVersion: 2, Digest: strings.Repeat("b", 64)}, CommandID: cmdTransfer, CommandType: domain.TypeTransfer},
		}}
	})
	if err != nil {
		t.Fatal(err)
	}
	load := func(clock time.Time, ids ...string) *ledger.State {
		t.Helper()
		var st *ledger.State
		err := pgtx.Run(ctx, db.Pool, func(conn *pgxpool.Conn) error {
			var err error
			st, err = ledger.Source{Group: "g", Topic: "commands", Clock: ledger.At(clock)}.Load(ctx, conn,
				ledger.LoadRequest{Expected: ledger.Positions{0: 1}, Accounts: ids})
			if err != nil {
				return err
			}
			_, err = conn.Exec(ctx, "ROLLBACK") // the locks go now, not when the pool gets round to closing the connection
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	loaded := load(day, "old", "today", "upgraded")
	if diff := cmp.Diff(old, loaded.Book.Accounts["old"]); diff != "" || loaded.Now != day || loaded.ClockRaised {
		t.Fatalf("account loaded back (-written +loaded):\n%s\n(clock %v raised %v, want %v)", diff, loaded.Now, loaded.ClockRaised, day)
	}
	if p := loaded.Book.Accounts["upgraded"].Period; p.Debits != sum(3) || p.Credits != sum(5) || p.Entries != 2 {
		t.Errorf("a period that missed a posting loads as %+v, want it recounted from the entries: debits 3, credits 5, 2 entries", p)
	}

	var mu sync.Mutex
	closed := map[string]int{}
	closeDays := func(book *domain.Book, now time.Time) ledger.Closing {
		var c ledger.Closing
		for _, a := range book.Accounts {
			if _, ok := a.CloseDay(now); ok {
				c.Closed = append(c.Closed, a)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, a := range c.Closed {
			closed[a.ID]++
		}
		return c
	}
	var g errgroup.Group
	for range 4 { // four workers' closers at once
		g.Go(func() error {
			for {
				n, err := ledger.CloseDays(ctx, db.Pool, ledger.At(day), 40, closeDays)
				if err != nil || n == 0 {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, a := range accounts {
		if want := map[bool]int{true: 1, false: 0}[a.ID != "today"]; closed[a.ID] != want {
			t.Errorf("account %s closed %d times, want %d", a.ID, closed[a.ID], want)
		}
	}

	midnightBefore := time.Date(2026, 11, 30, 23, 59, 59, 0, time.UTC)
	for _, tt := range []struct {
		clock  time.Time
		id     string
		want   time.Time
		raised bool
	}{
		{midnightBefore, "old", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), true},   // its 30 November closed
		{midnightBefore, "today", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), true}, // its 1 December begun
		{day, "today", day, false},
	} {
		if st := load(tt.clock, tt.id); !st.Now.Equal(tt.want) || st.ClockRaised != tt.raised {
			t.Errorf("a batch at %v locking %s is dated %v (raised %v), want %v (%v)", tt.clock, tt.id, st.Now, st.ClockRaised, tt.want, tt.raised)
		}
	}
}

// sum is n as a domain.Sum.
func sum(n uint64) domain.Sum {
	var s domain.Sum
	s.Add(n)
	return s
}

// TestWriteRefusesRowsNamingAccountsTheBatchDidNotLock: with no foreign
// keys to accounts (migration 0022), Write itself refuses an entry, a
// transfer or a leg naming an account the batch neither locked nor opened,
// whether or not that account exists or the book holds it (only the rows
// the lock statement returned count), before anything is sent: nothing
// commits and the offsets do not move.
func TestWriteRefusesRowsNamingAccountsTheBatchDidNotLock(t *testing.T) {
	db := pgtest.New(t)
	seed(t, db.Pool, sealingtest.Keyring(t))
	ctx := context.Background()
	transfer := func(from, to string, legs ...domain.TransferLeg) *domain.Transfer {
		return &domain.Transfer{ID: "00000000-0000-7000-8000-0000000000ee", Kind: domain.KindTransfer, FromAccountID: from, ToAccountID: to,
			Currency: "EUR", Amount: 1, Status: domain.TransferPosted, Legs: legs}
	}
	for name, tc := range map[string]struct {
		writes func(st *ledger.State) *ledger.Writes
		want   string
	}{
		"an entry of an account that exists but is not locked": {func(st *ledger.State) *ledger.Writes {
			return &ledger.Writes{Entries: []ledger.Entry{{Posting: domain.Posting{AccountID: "bob", Currency: "EUR", Amount: 1, BalanceAfter: 31, AccountVersion: 2},
				CommandID: cmdTransfer, CommandType: domain.TypeDeposit}}}
		}, `an entry of command ` + cmdTransfer + ` names account "bob"`},
		"an entry of no account": {func(st *ledger.State) *ledger.Writes {
			return &ledger.Writes{Entries: []ledger.Entry{{Posting: domain.Posting{AccountID: "ghost", Currency: "EUR", Amount: 1, BalanceAfter: 1, AccountVersion: 1},
				CommandID: cmdTransfer, CommandType: domain.TypeDeposit}}}
		}, `names account "ghost"`},
		"an entry of an account the book holds but the lock did not return": {func(st *ledger.State) *ledger.Writes {
			st.Book.Accounts["phantom"] = &domain.Account{ID: "phantom", Currency: "EUR", Status: domain.AccountActive}
			return &ledger.Writes{Entries: []ledger.Entry{{Posting: domain.Posting{AccountID: "phantom", Currency: "EUR", Amount: 1, BalanceAfter: 1, AccountVersion: 1},
				CommandID: cmdTransfer, CommandType: domain.TypeDeposit}}}
		}, `names account "phantom"`},
		"a transfer to an account not locked": {func(st *ledger.State) *ledger.Writes {
			return &ledger.Writes{Created: []*domain.Transfer{transfer("alice", "bob")}}
		}, `names account "bob"`},
		"a leg to no account": {func(st *ledger.State) *ledger.Writes {
			return &ledger.Writes{Created: []*domain.Transfer{transfer("alice", "alice", domain.TransferLeg{Leg: domain.Leg{FromAccountID: "alice", ToAccountID: "ghost", Currency: "EUR", Amount: 1}})}}
		}, `names account "ghost"`},
	} {
		t.Run(name, func(t *testing.T) {
			err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 3}, Accounts: []string{"alice"}}, func(st *ledger.State) *ledger.Writes {
				w := tc.writes(st)
				w.Locked, w.Now, w.Next = st.Locked, st.Now, ledger.Positions{0: 4}
				return w
			})
			if !errors.Is(err, ledger.ErrNotLocked) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Write() error = %v, want ErrNotLocked naming %s", err, tc.want)
			}
			got, err := src.Offsets(ctx, db.Pool, []int{0})
			if err != nil || got[0] != 3 {
				t.Errorf("stored offset = %v, %v; want 3: the batch committed", got, err)
			}
			var entries, transfers int
			if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM entries), (SELECT count(*) FROM transfers)`).Scan(&entries, &transfers); err != nil || entries != 2 || transfers != 1 {
				t.Errorf("entries %d, transfers %d (%v); want seed's 2 and 1", entries, transfers, err)
			}
		})
	}
	// The same batch naming only what it locked goes through.
	err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 3}, Accounts: []string{"alice", "bob"}}, func(st *ledger.State) *ledger.Writes {
		return &ledger.Writes{Created: []*domain.Transfer{transfer("alice", "bob")}, Locked: st.Locked, Now: st.Now, Next: ledger.Positions{0: 4}}
	})
	if err != nil {
		t.Fatalf("a transfer between locked accounts: %v", err)
	}
}

// TestWriteCommitsNothingWhenARowItUpdatesIsMissing: Write's statements
// travel with the COMMIT, so a row count checked by the client would come
// back after the commit. An account or transfer row missing under an
// update fails the transaction in the server: nothing of the batch
// commits, and its offsets do not move.
func TestWriteCommitsNothingWhenARowItUpdatesIsMissing(t *testing.T) {
	db := pgtest.New(t)
	seed(t, db.Pool, sealingtest.Keyring(t))
	ctx := context.Background()
	for name, tc := range map[string]struct {
		writes func(st *ledger.State) *ledger.Writes
		want   string
	}{
		"account": {func(st *ledger.State) *ledger.Writes {
			alice := *st.Book.Accounts["alice"]
			alice.Balance, alice.Version = 1, alice.Version+1
			ghost := &domain.Account{ID: "ghost", Currency: "EUR", Status: domain.AccountActive, Balance: 5, Version: 1}
			return &ledger.Writes{Changed: []*domain.Account{&alice, ghost}, Now: st.Now, Next: ledger.Positions{0: 4}}
		}, "update accounts: 1 of 2 rows found"},
		"transfer": {func(st *ledger.State) *ledger.Writes {
			ghost := &domain.Transfer{ID: "00000000-0000-7000-8000-0000000000ff", Kind: domain.KindTransfer, FromAccountID: "alice", ToAccountID: "bob",
				Currency: "EUR", Amount: 1, Status: domain.TransferReversed, ReversedAmount: 1}
			return &ledger.Writes{Updated: []*domain.Transfer{ghost}, Now: st.Now, Next: ledger.Positions{0: 4}}
		}, "update transfers: 0 of 1 rows found"},
	} {
		t.Run(name, func(t *testing.T) {
			err := batch(t, db.Pool, ledger.LoadRequest{Expected: ledger.Positions{0: 3}, Accounts: []string{"alice"}}, tc.writes)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != ledger.CodeRowMissing || pgErr.Message != tc.want {
				t.Fatalf("Write() error = %v, want the server's %s %q", err, ledger.CodeRowMissing, tc.want)
			}
			got, err := src.Offsets(ctx, db.Pool, []int{0})
			if err != nil || got[0] != 3 {
				t.Errorf("stored offset = %v, %v; want 3: the batch committed", got, err)
			}
			var balance int64
			if err := db.Pool.QueryRow(ctx, `SELECT balance FROM accounts WHERE account_id = 'alice'`).Scan(&balance); err != nil || balance != 70 {
				t.Errorf("alice's balance = %d, %v; want 70: the batch committed", balance, err)
			}
		})
	}
}
