package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/internal/retry"
)

// Shards is how many shards the outbox is split into by key
// (migrations/0008_outbox_shards.sql computes each row's). All of a key's
// rows are in one shard, and one relay at a time publishes a shard: the
// holder of its lease. So several relays share the outbox and every key's
// records still reach Kafka in the order they were written.
const Shards = 32

// errFenced means the relay lost the lease of a shard in its batch between
// reading the rows and marking them published: another relay holds it now
// and publishes them; this relay's commit marked nothing.
var errFenced = errors.New("lease lost during the batch: marked nothing published")

// errSteppedDown is the readiness of a relay that gave its shards away
// because it could not publish.
var errSteppedDown = errors.New("stepped down: could not publish for a whole lease TTL; the other relays hold the shards")

// leases keeps this relay's share of the shards. Every TTL/3 it
// heartbeats, deals the shards among the relays alive (shard s to the
// (s mod n)-th relay id in order), gives back the shards dealt to others,
// renews its own and takes the free or expired ones dealt to it. Taking a
// lease bumps its epoch; a batch marks rows published only while its
// shards' epochs are still the ones it read (the fence), so a relay that
// was paused or cut off past its TTL cannot act as the owner.
type leases struct {
	pool    *pgxpool.Pool
	id      string
	ttl     time.Duration
	log     *slog.Logger
	metrics *relayMetrics
	ready   readiness

	mu    sync.Mutex
	owned map[int16]int64 // shard → epoch of this relay's lease
	// failingSince is when this relay's publishes started failing in a
	// row (zero while they succeed). A relay that cannot publish for a
	// whole TTL steps down: it gives its shards to the others and stays
	// out for a cooldown that doubles each time (up to maxCooldown), so a
	// relay cut off from Kafka cannot hold its shards hostage.
	failingSince time.Time
	outUntil     time.Time
	cooldown     time.Duration
}

// maxCooldown bounds how long a relay that stepped down stays out.
const maxCooldown = 5 * time.Minute

func (l *leases) publishFailed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failingSince.IsZero() {
		l.failingSince = time.Now()
	}
}

func (l *leases) publishSucceeded() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failingSince, l.cooldown = time.Time{}, 0
}

// stepDown reports whether this relay must stay out of the deal now: it
// has failed to publish for a whole TTL (then it starts a cooldown), or its
// cooldown runs.
func (l *leases) stepDown() (now, out bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.failingSince.IsZero() && time.Since(l.failingSince) > l.ttl {
		l.cooldown = min(max(2*l.cooldown, 3*l.ttl), maxCooldown)
		l.outUntil = time.Now().Add(l.cooldown)
		l.failingSince = time.Time{}
		return true, true
	}
	return false, time.Now().Before(l.outUntil)
}

func newRelayID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// held returns the shards this relay holds, in order, with their epochs.
func (l *leases) held() ([]int16, []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	shards := slices.Sorted(maps.Keys(l.owned))
	epochs := make([]int64, len(shards))
	for i, s := range shards {
		epochs[i] = l.owned[s]
	}
	return shards, epochs
}

// run maintains the leases until ctx ends, then gives them back so the
// other relays take them over at once instead of after the TTL.
func (l *leases) run(ctx context.Context, changed chan<- struct{}) {
	bo := retry.Policy(l.ttl / 3)
	for {
		err := l.maintain(ctx, changed)
		l.ready.set(err)
		wait := l.ttl / 3
		if err != nil && !errors.Is(err, errSteppedDown) {
			if ctx.Err() != nil {
				break
			}
			wait = bo.NextBackOff()
			l.log.Warn("relay lease upkeep failed, will retry", "err", err, "retry_in", wait)
		} else {
			bo.Reset()
		}
		retry.Sleep(ctx, wait)
		if ctx.Err() != nil {
			break
		}
	}
	l.leave(context.WithoutCancel(ctx))
}

// maintain runs one round of lease upkeep and signals changed when this
// relay's shards changed.
func (l *leases) maintain(ctx context.Context, changed chan<- struct{}) error {
	if now, out := l.stepDown(); out {
		if now {
			l.log.Warn("relay cannot publish; giving its shards to the other relays", "relay", l.id, "back_in", l.cooldown)
			l.metrics.stepDowns.Inc()
			l.leave(ctx)
		}
		return errSteppedDown
	}
	var members []string
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO relay_members (relay_id, heartbeat_at) VALUES ($1, now())
		ON CONFLICT (relay_id) DO UPDATE SET heartbeat_at = now()`, l.id)
	b.Queue(`DELETE FROM relay_members WHERE heartbeat_at < now() - $1::interval * 10`, l.ttl)
	b.Queue(`SELECT relay_id FROM relay_members WHERE heartbeat_at > now() - $1::interval ORDER BY relay_id`, l.ttl).
		Query(func(rows pgx.Rows) error {
			var err error
			members, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		})
	if err := l.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("relay heartbeat: %w", err)
	}
	me := slices.Index(members, l.id)
	if me < 0 {
		return errors.New("relay heartbeat: this relay is not among the members")
	}
	var target []int16
	for s := range Shards {
		if s%len(members) == me {
			target = append(target, int16(s))
		}
	}
	var released int
	now := make(map[int16]int64)
	b = &pgx.Batch{}
	b.Queue(`UPDATE relay_leases SET owner = NULL, expires_at = '-infinity'
		WHERE owner = $1 AND shard <> ALL($2)`, l.id, target).Exec(func(ct pgconn.CommandTag) error {
		released = int(ct.RowsAffected())
		return nil
	})
	b.Queue(`UPDATE relay_leases SET owner = $1, expires_at = now() + $3::interval,
			epoch = CASE WHEN owner = $1 THEN epoch ELSE epoch + 1 END
		WHERE shard = ANY($2) AND (owner = $1 OR owner IS NULL OR expires_at < now())
		RETURNING shard, epoch`, l.id, target, l.ttl).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var s int16
			var e int64
			if err := rows.Scan(&s, &e); err != nil {
				return err
			}
			now[s] = e
		}
		return rows.Err()
	})
	if err := l.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("relay leases: %w", err)
	}
	l.mu.Lock()
	before := l.owned
	l.owned = now
	l.mu.Unlock()
	var acquired, lost int
	for s, e := range now {
		if before[s] != e {
			acquired++
		}
	}
	for s, e := range before {
		if now[s] != e {
			lost++
		}
	}
	lost -= released // given back on purpose, not lost
	l.metrics.leaseChanges.WithLabelValues("acquired").Add(float64(acquired))
	l.metrics.leaseChanges.WithLabelValues("released").Add(float64(released))
	l.metrics.leaseChanges.WithLabelValues("lost").Add(float64(max(0, lost)))
	l.metrics.shardsOwned.Set(float64(len(now)))
	if acquired > 0 || lost > 0 || released > 0 {
		l.log.Info("relay shards changed", "relay", l.id, "relays", len(members), "shards", len(now),
			"acquired", acquired, "released", released, "lost", max(0, lost))
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	return nil
}

// recheck drops, after a fenced batch, the leases this relay no longer
// holds with the epoch it knew, so its next batch leaves those shards to
// their new holder.
func (l *leases) recheck(ctx context.Context) error {
	rows, err := l.pool.Query(ctx, `SELECT shard, epoch FROM relay_leases WHERE owner = $1`, l.id)
	if err != nil {
		return fmt.Errorf("recheck relay leases: %w", err)
	}
	current := make(map[int16]int64)
	for rows.Next() {
		var s int16
		var e int64
		if err := rows.Scan(&s, &e); err != nil {
			rows.Close()
			return fmt.Errorf("recheck relay leases: %w", err)
		}
		current[s] = e
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("recheck relay leases: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for s, e := range l.owned {
		if current[s] != e {
			delete(l.owned, s)
			l.metrics.leaseChanges.WithLabelValues("lost").Inc()
		}
	}
	l.metrics.shardsOwned.Set(float64(len(l.owned)))
	return nil
}

// leave gives back every lease and the membership, so the others deal the
// shards among themselves at their next round.
func (l *leases) leave(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(`UPDATE relay_leases SET owner = NULL, expires_at = '-infinity' WHERE owner = $1`, l.id)
	b.Queue(`DELETE FROM relay_members WHERE relay_id = $1`, l.id)
	if err := l.pool.SendBatch(ctx, b).Close(); err != nil {
		l.log.Warn("relay could not give back its leases; they expire after the TTL", "err", err)
	}
	l.mu.Lock()
	l.owned = nil
	l.mu.Unlock()
	l.metrics.shardsOwned.Set(0)
}
