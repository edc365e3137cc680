package consumers

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// expiryBatch is the most holds expired in one transaction.
const expiryBatch = 200

// runExpirer expires due holds every ExpiryInterval until ctx ends. Every
// worker runs one; they share the work (ledger.ExpireDue).
func (w *Worker) runExpirer(ctx context.Context) {
	w.sweep(ctx, w.opts.ExpiryInterval, 0, expiryBatch, "expiring holds", func(ctx context.Context) (int, error) {
		return w.expireDue(ctx, w.opts.Clock) // the clock of the workers' decisions
	})
}

// sweep runs pass every interval until ctx ends, and again, after pause,
// while a pass does a full batch of work; a failed pass is logged (as
// what) and tried again at the next tick.
func (w *Worker) sweep(ctx context.Context, interval, pause time.Duration, batch int, what string, pass func(context.Context) (int, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			n, err := pass(ctx)
			if err != nil {
				if ctx.Err() == nil {
					w.opts.Log.Warn(what+" failed, will retry", "err", err)
				}
				break
			}
			if n < batch {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
	}
}

// background runs fn in a goroutine until the returned stop cancels it,
// and waits for it to return.
func background(ctx context.Context, fn func(context.Context)) (stop func()) {
	done := make(chan struct{})
	bctx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(done)
		fn(bctx)
	}()
	return func() { cancel(); <-done }
}

// expireDue expires up to expiryBatch holds whose expiry is at or before
// now, as clock tells it, and returns how many it expired.
func (w *Worker) expireDue(ctx context.Context, clock ledger.Clock) (int, error) {
	n, err := ledger.ExpireDue(ctx, w.opts.Pool, clock, expiryBatch, w.decider.expire)
	if n > 0 {
		w.metrics.expired.Add(float64(n))
	}
	return n, err
}

// expire expires the holds of book that are due at now, and announces each,
// and the balances of the accounts they freed funds of.
func (d decider) expire(book *domain.Book, now time.Time) ledger.Expiry {
	var ex ledger.Expiry
	freed := make(map[string]bool)
	for _, id := range slices.Sorted(maps.Keys(book.Transfers)) { // one order for an account's events
		t, ok := book.Expire(id, now)
		if !ok {
			continue
		}
		ex.Holds = append(ex.Holds, t)
		freed[t.FromAccountID] = true
		ev := domain.NewExpiryEvent(uuid.Must(uuid.NewV7()).String(), t, now)
		ex.Outbox = append(ex.Outbox, eventMessage(d.eventsTopic, t.FromAccountID, ev, time.Time{}))
	}
	var accounts []*domain.Account
	for _, id := range slices.Sorted(maps.Keys(freed)) {
		accounts = append(accounts, book.Accounts[id])
	}
	ex.Outbox = d.balances(ex.Outbox, accounts, now)
	return ex
}

// closeBatch is the most statement periods closed in one transaction.
const closeBatch = 500

// runCloser closes, every CloseInterval, the statement periods of the
// accounts whose day is over and that have not moved since (an account
// that moves closes its own, in the worker's batch), until ctx ends. Every
// worker runs one; they share the work (ledger.CloseDays).
func (w *Worker) runCloser(ctx context.Context) {
	w.sweep(ctx, w.opts.CloseInterval, closePause, closeBatch, "closing statements", func(ctx context.Context) (int, error) {
		n, err := ledger.CloseDays(ctx, w.opts.Pool, w.opts.Clock, closeBatch, w.decider.closeDays)
		w.metrics.statements.Add(float64(n))
		return n, err
	})
}

// closePause is the pause between two full passes of the closer: at most
// closeBatch statements per closePause per worker, so that the burst after
// midnight shares the database with the traffic.
const closePause = 50 * time.Millisecond

// closeDays closes the periods of book's accounts whose day is over at now,
// and announces each statement.
func (d decider) closeDays(book *domain.Book, now time.Time) ledger.Closing {
	var c ledger.Closing
	for _, id := range slices.Sorted(maps.Keys(book.Accounts)) {
		a := book.Accounts[id]
		if s, ok := a.CloseDay(now); ok {
			c.Closed = append(c.Closed, a)
			c.Outbox = append(c.Outbox, d.statement(s, now))
		}
	}
	return c
}
