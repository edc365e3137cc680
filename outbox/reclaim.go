package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/internal/pgtx"
)

// Slots is how many partitions the outbox's ring has, and SlotWindow how
// long each is written (migrations/0011_hot_tables.sql). A row's slot is
// the window its transaction started in (PostgreSQL's now()), modulo
// Slots: the column default outbox_slot(now()) computes it, so writers
// never name it.
//
// Deleting what Kafka took leaves dead tuples that only VACUUM removes, and
// VACUUM comes late (autovacuum's naptime) or not at all (a long
// transaction anywhere in the database holds the horizon back), so a
// plain outbox table grows with what it has published and the relay's
// reads slow down with it. Instead, once a slot's window is over and every
// row of it is published, the relay truncates the slot: its dead tuples
// and index entries go at once, whatever the horizon. What the relay
// reads is bounded by about two windows of traffic (docs/outbox.md).
const (
	Slots      = 8
	SlotWindow = 3 * time.Second
)

// reclaimInterval is how often a relay looks for slots to truncate: half a
// window, so a slot goes soon after it becomes eligible.
const reclaimInterval = SlotWindow / 2

// reclaimLockTimeout bounds how long a truncation waits for its lock.
// While it waits, the relays' reads of the outbox (which lock every slot)
// queue behind it; writers do not, as they write only the current slot.
// A truncation that cannot have its lock in time is tried again later.
const reclaimLockTimeout = 100 * time.Millisecond

// reclaimLockKey is the transaction-level advisory lock that lets one
// relay at a time truncate slots. It spares work, not correctness: the
// lock on the slot and the check that it is empty are what make a
// truncation safe.
const reclaimLockKey = 0x7478706970650002

// Outcomes of an attempt to truncate a slot: the outcome label of
// txpipe_relay_outbox_truncations_total.
const (
	truncated = "truncated" // the slot was empty and is truncated
	occupied  = "occupied"  // rows are still there (not yet published, or just written by a late transaction)
	busy      = "busy"      // its lock was not granted within reclaimLockTimeout, or another relay is at it
	failed    = "failed"    // PostgreSQL refused (e.g. the relay's role may not truncate)
)

// reclaimable lists the slots a truncation may be tried on: written since
// they were last truncated, and neither the current window's nor the
// previous one's (transactions that began then may still be writing them)
// nor the next one's (the window may turn while the round runs, and a
// truncation of the slot writers have just moved to would hold them up).
const reclaimableSQL = `SELECT s::int2 FROM generate_series(0, $1::int - 1) AS s
	WHERE mod(s - outbox_slot(now()) + $1, $1) NOT IN (0, 1, $1 - 1)
	AND pg_relation_size(format('outbox_slot_%s', s)::regclass) > 0
	ORDER BY s`

// reclaim truncates every slot it may that holds no row, and counts each
// attempt by outcome. A failure is logged and counted; the next round
// tries again, and meanwhile the outbox only keeps more dead tuples.
func (r *Relay) reclaim(ctx context.Context) {
	rows, err := r.opts.Pool.Query(ctx, reclaimableSQL, Slots)
	var slots []int16
	if err == nil {
		slots, err = pgx.CollectRows(rows, pgx.RowTo[int16])
	}
	if err != nil {
		if ctx.Err() == nil {
			r.metrics.truncations.WithLabelValues(failed).Inc()
			r.reclaimFailed(fmt.Errorf("list the outbox slots to truncate: %w", err))
		}
		return
	}
	for _, s := range slots {
		start := time.Now()
		outcome, err := r.truncateSlot(ctx, s)
		if ctx.Err() != nil {
			return
		}
		r.metrics.truncations.WithLabelValues(outcome).Inc()
		switch outcome {
		case truncated:
			r.metrics.truncateDuration.Observe(time.Since(start).Seconds())
			r.opts.Log.Debug("outbox slot truncated", "slot", s)
		case failed:
			r.reclaimFailed(err)
		}
		if outcome == busy && err == nil {
			return // another relay is reclaiming
		}
	}
}

// reclaimWarnEvery bounds how often a relay logs that truncations fail:
// they are retried every reclaimInterval, and txpipe_relay_outbox_truncations_total
// counts each.
const reclaimWarnEvery = time.Minute

// reclaimFailed logs err, unless it logged one less than reclaimWarnEvery ago.
func (r *Relay) reclaimFailed(err error) {
	if time.Since(r.reclaimWarned) < reclaimWarnEvery {
		return
	}
	r.reclaimWarned = time.Now()
	r.opts.Log.Warn("relay could not truncate outbox slots, will retry; the outbox keeps its dead tuples meanwhile", "err", err)
}

// truncateSlot truncates slot s if it holds no row. It takes the slot's
// ACCESS EXCLUSIVE lock first, waiting at most reclaimLockTimeout: a
// transaction that wrote the slot holds a conflicting lock until it ends,
// so once the lock is granted every row ever written to the slot is
// committed or gone, and the check that follows (a new statement, so a new
// snapshot in READ COMMITTED) sees every committed one. A writer that
// reaches the slot after the lock waits and writes into the truncated
// slot: nothing is lost either way. It returns busy with a nil error when
// another relay holds the reclaim lock, and with the error when the slot's
// lock was not granted in time.
func (r *Relay) truncateSlot(ctx context.Context, s int16) (outcome string, err error) {
	name := pgx.Identifier{fmt.Sprintf("outbox_slot_%d", s)}.Sanitize()
	// A slot with rows in sight is left alone without taking its lock:
	// during a backlog every slot is occupied, and each lock taken would
	// hold the other relays' reads back for nothing.
	var rows bool
	if err := r.opts.Pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+name+")").Scan(&rows); err != nil {
		return failed, fmt.Errorf("look into outbox slot %d: %w", s, err)
	}
	if rows {
		return occupied, nil
	}
	outcome = failed
	err = pgtx.Run(ctx, r.opts.Pool, func(conn *pgxpool.Conn) error {
		var mine bool
		b := &pgx.Batch{}
		b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED") // the check after the lock must see every commit
		b.Queue(`SELECT pg_try_advisory_xact_lock($1)`, int64(reclaimLockKey)).QueryRow(func(row pgx.Row) error { return row.Scan(&mine) })
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("take the reclaim lock: %w", err)
		}
		if !mine {
			outcome = busy
			_, err := conn.Exec(ctx, "ROLLBACK")
			return err
		}
		b = &pgx.Batch{}
		b.Queue(fmt.Sprintf("SET LOCAL lock_timeout = %d", reclaimLockTimeout.Milliseconds()))
		b.Queue("LOCK TABLE " + name + " IN ACCESS EXCLUSIVE MODE")
		b.Queue("SELECT EXISTS (SELECT FROM " + name + ")").QueryRow(func(row pgx.Row) error { return row.Scan(&rows) })
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == pgerrcode.LockNotAvailable {
				outcome = busy
			}
			return fmt.Errorf("lock outbox slot %d: %w", s, err)
		}
		if rows {
			outcome = occupied
			_, err := conn.Exec(ctx, "ROLLBACK")
			return err
		}
		b = &pgx.Batch{}
		b.Queue("TRUNCATE " + name)
		b.Queue("COMMIT")
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("truncate outbox slot %d: %w", s, err)
		}
		outcome = truncated
		return nil
	})
	return outcome, err
}
