// Package ledger owns the ledger's tables: accounts, transfers, entries,
// processed_commands, dead_lettered_commands, consumer_offsets and
// consumer_offset_resets. Every statement on them lives here, behind
// functions named for what they do; the workers (package consumers), the
// query API (package producers), the auditor (txpipe verify) and loadgen
// call it. The outbox table belongs to package outbox and api_keys to
// package producers/apikey.
//
// The worker's batch transaction is Load (BEGIN, the offset fence, stored
// decisions, row locks: one round trip, two when the batch names
// transfers, rarely one more to check a fee plan that moved) and Write (every effect, the outbox rows, the new offsets,
// COMMIT: one round trip). What happens between them, the decision, is the
// caller's and touches no database.
//
// Lock order, everywhere a transaction takes more than one kind of row
// lock: the partition's consumer_offsets rows in partition order, then
// transfers in transfer_id order, then accounts in account_id order. No
// transaction waits for a transfer while it holds an account, so the
// workers, the hold expirer, the metadata re-sealer and an offset reset
// cannot deadlock one another.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Positions maps a partition of the commands topic to the offset of its
// next record to apply.
type Positions map[int]int64

// ErrFenced means a partition's stored offset is not where the caller
// believes the partition stands: another worker (or an earlier attempt of
// this one) has moved it, or the partition is halted. Nothing was
// committed.
var ErrFenced = errors.New("stored offset moved: this worker's position is stale")

// Sender runs a batch of statements on one connection: a *pgxpool.Conn
// inside internal/pgtx.Run, a pgx.Tx, or a *pgx.Conn.
type Sender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Source names the stored offsets a worker fences on: those of one
// consumer group on one topic.
type Source struct {
	Group, Topic string
	// Clock dates the batches' decisions (nil: PostgreSQL's now()).
	Clock Clock
}

// readCommitted is the isolation of the expirer's and the closer's
// transactions, whatever the server's default_transaction_isolation: their
// SKIP LOCKED and FOR SHARE reads would fail with serialization errors
// under REPEATABLE READ (the batches' own BEGIN says it, internal/pgtx).
var readCommitted = pgx.TxOptions{IsoLevel: pgx.ReadCommitted}

// Clock gives the time decisions are made at from PostgreSQL's now(), read
// at the start of their transaction: one clock for every worker, whatever
// their hosts say. Nil is PostgreSQL's own; tests inject one to cross a
// day boundary.
type Clock func(db time.Time) time.Time

// At is the clock that always says t (tests).
func At(t time.Time) Clock { return func(time.Time) time.Time { return t } }

// read is the time c gives for the database's db, in UTC.
func (c Clock) read(db time.Time) time.Time {
	if c != nil {
		db = c(db)
	}
	return db.UTC()
}

// readClock reads the database's clock in tx through c.
func readClock(ctx context.Context, tx pgx.Tx, c Clock) (time.Time, error) {
	var now time.Time
	if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return time.Time{}, fmt.Errorf("read the database clock: %w", err)
	}
	return c.read(now), nil
}

// offsetColumns returns pos as parallel arrays in partition order, the
// order in which a transaction locks consumer_offsets rows.
func offsetColumns(pos Positions) (parts []int32, offsets []int64) {
	for _, p := range slices.Sorted(maps.Keys(pos)) {
		parts = append(parts, int32(p))
		offsets = append(offsets, pos[p])
	}
	return parts, offsets
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// scanPositions reads (partition, next_offset) rows into into.
func scanPositions(rows pgx.Rows, into Positions) error {
	for rows.Next() {
		var p int32
		var o int64
		if err := rows.Scan(&p, &o); err != nil {
			return err
		}
		into[int(p)] = o
	}
	return rows.Err()
}
