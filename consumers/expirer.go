package consumers

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/outbox"
)

// expiryBatch is the most holds expired in one transaction.
const expiryBatch = 200

// runExpirer expires due holds every ExpiryInterval until ctx ends. Every
// worker runs one; they share the work through SKIP LOCKED, and a hold
// expires exactly once because its state changes from pending under its row
// lock, in the same transaction as its event.
func (w *Worker) runExpirer(ctx context.Context) {
	t := time.NewTicker(w.opts.ExpiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			n, err := w.expireDue(ctx, time.Time{}) // PostgreSQL's clock, as the workers' decisions
			if err != nil {
				if ctx.Err() == nil {
					w.opts.Log.Warn("expiring holds failed, will retry", "err", err)
				}
				break
			}
			if n < expiryBatch {
				break
			}
		}
	}
}

// expireDue expires up to expiryBatch holds whose expiry is at or before
// now (the zero time: PostgreSQL's now(), the clock every worker decides
// by), and returns how many it expired.
func (w *Worker) expireDue(ctx context.Context, now time.Time) (int, error) {
	expired := 0
	err := pgx.BeginFunc(ctx, w.opts.Pool, func(tx pgx.Tx) error {
		if now.IsZero() {
			if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
				return fmt.Errorf("read the database clock: %w", err)
			}
			now = now.UTC()
		}
		book := domain.NewBook()
		loaded := make(map[string]bool)
		// Transfers first, skipping any a worker holds (it may be capturing
		// it), then their accounts: the lock order of store.go.
		rows, err := tx.Query(ctx, `SELECT transfer_id::text, kind, from_account_id, to_account_id, currency, amount,
				captured_amount, reversed_amount, status, expires_at
			FROM transfers WHERE status = 'pending' AND expires_at <= $1
			ORDER BY transfer_id LIMIT $2 FOR UPDATE SKIP LOCKED`, now, expiryBatch)
		if err != nil {
			return fmt.Errorf("find due holds: %w", err)
		}
		if err := scanTransfers(rows, book, loaded); err != nil {
			return fmt.Errorf("find due holds: %w", err)
		}
		if len(book.Transfers) == 0 {
			return nil
		}
		var accounts []string
		for _, t := range book.Transfers {
			accounts = append(accounts, t.FromAccountID)
		}
		b := &pgx.Batch{}
		queueLockAccounts(b, sortedUnique(accounts), book)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("lock accounts of due holds: %w", err)
		}
		var holds []*domain.Transfer
		changed := make(map[string]bool)
		var out []outbox.Message
		for id := range book.Transfers {
			t, ok := book.Expire(id, now)
			if !ok {
				continue
			}
			holds = append(holds, t)
			changed[t.FromAccountID] = true
			ev := domain.NewExpiryEvent(uuid.Must(uuid.NewV7()).String(), t, now)
			out = append(out, eventMessage(w.opts.EventsTopic, t.FromAccountID, ev, time.Time{}))
		}
		if len(holds) == 0 {
			return nil
		}
		var accts []*domain.Account
		for id := range changed {
			accts = append(accts, book.Accounts[id])
		}
		b = &pgx.Batch{}
		queueUpdateAccounts(b, accts, now)
		queueUpdateTransfers(b, holds, now)
		outbox.Queue(b, out)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write expired holds: %w", err)
		}
		expired = len(holds)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if expired > 0 {
		w.metrics.expired.Add(float64(expired))
	}
	return expired, nil
}
