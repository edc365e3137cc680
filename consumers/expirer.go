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
// now (the zero time: PostgreSQL's now()), and returns how many it expired.
func (w *Worker) expireDue(ctx context.Context, now time.Time) (int, error) {
	n, err := ledger.ExpireDue(ctx, w.opts.Pool, now, expiryBatch, w.decider.expire)
	if n > 0 {
		w.metrics.expired.Add(float64(n))
	}
	return n, err
}

// expire expires the holds of book that are due at now, and announces each.
func (d decider) expire(book *domain.Book, now time.Time) ledger.Expiry {
	var ex ledger.Expiry
	for _, id := range slices.Sorted(maps.Keys(book.Transfers)) { // one order for an account's events
		t, ok := book.Expire(id, now)
		if !ok {
			continue
		}
		ex.Holds = append(ex.Holds, t)
		ev := domain.NewExpiryEvent(uuid.Must(uuid.NewV7()).String(), t, now)
		ex.Outbox = append(ex.Outbox, eventMessage(d.eventsTopic, t.FromAccountID, ev, time.Time{}))
	}
	return ex
}
