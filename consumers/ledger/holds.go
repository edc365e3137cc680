package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/outbox"
)

// Expiry is what the caller of ExpireDue decides: the holds it expired
// (changed in the book) and the messages that announce them.
type Expiry struct {
	Holds  []*domain.Transfer
	Outbox []outbox.Message
}

// ExpireDue runs one transaction that locks up to limit pending holds whose
// expiry is at or before now (as clock tells it: the clock every worker
// decides by), skipping any a worker holds (it may be capturing it), then
// their accounts (the package's lock order); calls decide with them; and
// writes the holds and debit accounts decide changed, with its messages.
// It returns how many holds were expired. Every worker runs an expirer;
// they share the work through SKIP LOCKED, and a hold expires exactly once
// because its state changes from pending under its row lock, in the same
// transaction as its event.
func ExpireDue(ctx context.Context, pool *pgxpool.Pool, clock Clock, limit int,
	decide func(book *domain.Book, now time.Time) Expiry) (int, error) {
	expired := 0
	err := pgx.BeginTxFunc(ctx, pool, readCommitted, func(tx pgx.Tx) error {
		now, err := readClock(ctx, tx, clock)
		if err != nil {
			return err
		}
		st := &State{Now: now, Book: domain.NewBook(), Loaded: make(map[string]bool), Locked: make(map[string]bool)}
		b := &pgx.Batch{}
		queueReadTransfers(b, selectTransfers+`WHERE status = 'pending' AND expires_at <= $1
			ORDER BY transfer_id LIMIT $2 FOR UPDATE SKIP LOCKED`, []any{now, limit}, st)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("find due holds: %w", err)
		}
		if len(st.Book.Transfers) == 0 {
			return nil
		}
		var accounts []string
		for _, t := range st.Book.Transfers {
			accounts = append(accounts, t.FromAccountID)
		}
		b = &pgx.Batch{}
		queueLockAccounts(b, sortedUnique(accounts), nil, st) // an expiry pays no fee
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("lock accounts of due holds: %w", err)
		}
		ex := decide(st.Book, now)
		if len(ex.Holds) == 0 {
			return nil
		}
		w := &Writes{Updated: ex.Holds, Outbox: ex.Outbox, Now: now, Locked: st.Locked}
		changed := make(map[string]bool)
		for _, t := range ex.Holds {
			if !changed[t.FromAccountID] {
				changed[t.FromAccountID] = true
				w.Changed = append(w.Changed, st.Book.Accounts[t.FromAccountID])
			}
		}
		b = &pgx.Batch{}
		if err := (Source{}).queueWrites(b, w); err != nil {
			return err
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write expired holds: %w", err)
		}
		expired = len(ex.Holds)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return expired, nil
}
