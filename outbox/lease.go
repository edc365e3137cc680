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
	// failingSince is when this relay's publishes to Kafka started failing
	// in a row (zero once a round goes through). A relay that cannot publish
	// for a whole TTL while another relay can steps down: it gives its
	// shards to the others and stays out for a cooldown that doubles each
	// time (up to maxCooldown), so a relay cut off from Kafka cannot hold its
	// shards hostage. Alone, or when every relay fails alike (Kafka is down
	// for all), it stays: nobody could do better, and it must be there the
	// moment Kafka is back.
	failingSince time.Time
	outUntil     time.Time
	cooldown     time.Duration
}

// maxCooldown bounds how long a relay that stepped down stays out.
const maxCooldown = 5 * time.Minute

// kafkaFailed records a failed publish to Kafka.
func (l *leases) kafkaFailed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failingSince.IsZero() {
		l.failingSince = time.Now()
	}
}

// roundSucceeded records a publish round without error; published says
// whether it sent anything (which alone proves Kafka takes this relay's
// records, and ends a run of step-downs).
func (l *leases) roundSucceeded(published bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failingSince = time.Time{}
	if published {
		l.cooldown = 0
	}
}

// failing reports whether this relay has failed to publish for a whole TTL.
func (l *leases) failing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.failingSince.IsZero() && time.Since(l.failingSince) > l.ttl
}

// out reports whether this relay is in a step-down's cooldown.
func (l *leases) out() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().Before(l.outUntil)
}

// stepDown starts a cooldown and returns its length.
func (l *leases) stepDown() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cooldown = min(max(2*l.cooldown, 3*l.ttl), maxCooldown)
	l.outUntil = time.Now().Add(l.cooldown)
	l.failingSince = time.Time{}
	return l.cooldown
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
	if l.out() {
		return errSteppedDown
	}
	failing := l.failing()
	type member struct {
		id      string
		failing bool
	}
	var members []member
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO relay_members (relay_id, heartbeat_at, failing) VALUES ($1, now(), $2)
		ON CONFLICT (relay_id) DO UPDATE SET heartbeat_at = now(), failing = $2`, l.id, failing)
	b.Queue(`DELETE FROM relay_members WHERE heartbeat_at < now() - $1::interval * 10`, l.ttl)
	b.Queue(`SELECT relay_id, failing FROM relay_members WHERE heartbeat_at > now() - $1::interval ORDER BY relay_id`, l.ttl).
		Query(func(rows pgx.Rows) error {
			var err error
			members, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (member, error) {
				var m member
				err := r.Scan(&m.id, &m.failing)
				return m, err
			})
			return err
		})
	if err := l.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("relay heartbeat: %w", err)
	}
	me := slices.IndexFunc(members, func(m member) bool { return m.id == l.id })
	if me < 0 {
		return errors.New("relay heartbeat: this relay is not among the members")
	}
	if failing && slices.ContainsFunc(members, func(m member) bool { return m.id != l.id && !m.failing }) {
		cooldown := l.stepDown()
		l.log.Warn("relay cannot publish to Kafka while another relay can; giving it the shards", "relay", l.id, "back_in", cooldown)
		l.metrics.stepDowns.Inc()
		l.leave(ctx)
		return errSteppedDown
	}
	var target []int16
	for s := range Shards {
		if s%len(members) == me {
			target = append(target, int16(s))
		}
	}
	released := make(map[int16]bool)
	now := make(map[int16]int64)
	b = &pgx.Batch{}
	// Lease rows are locked in shard order everywhere (here, in leave and
	// in the publish fence), so no two transactions wait on each other.
	b.Queue(`UPDATE relay_leases AS l SET owner = NULL, expires_at = '-infinity'
		FROM (SELECT shard FROM relay_leases WHERE owner = $1 AND shard <> ALL($2) ORDER BY shard FOR UPDATE) AS g
		WHERE l.shard = g.shard RETURNING l.shard`, l.id, target).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var s int16
			if err := rows.Scan(&s); err != nil {
				return err
			}
			released[s] = true
		}
		return rows.Err()
	})
	b.Queue(`UPDATE relay_leases AS l SET owner = $1, expires_at = now() + $3::interval,
			epoch = CASE WHEN l.owner = $1 THEN l.epoch ELSE l.epoch + 1 END
		FROM (SELECT shard FROM relay_leases WHERE shard = ANY($2) AND (owner = $1 OR owner IS NULL OR expires_at < now())
			ORDER BY shard FOR UPDATE) AS g
		WHERE l.shard = g.shard RETURNING l.shard, l.epoch`, l.id, target, l.ttl).Query(func(rows pgx.Rows) error {
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
	l.owned = now // never written in place: held and recheck read or replace it
	l.mu.Unlock()
	var acquired, lost int
	for s, e := range now {
		if before[s] != e {
			acquired++
		}
	}
	for s, e := range before {
		if now[s] != e && !released[s] {
			lost++
		}
	}
	l.metrics.leaseChanges.WithLabelValues("acquired").Add(float64(acquired))
	l.metrics.leaseChanges.WithLabelValues("released").Add(float64(len(released)))
	l.metrics.leaseChanges.WithLabelValues("lost").Add(float64(lost))
	l.metrics.shardsOwned.Set(float64(len(now)))
	if acquired > 0 || lost > 0 || len(released) > 0 {
		l.log.Info("relay shards changed", "relay", l.id, "relays", len(members), "shards", len(now),
			"acquired", acquired, "released", len(released), "lost", lost)
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
	kept := make(map[int16]int64, len(l.owned))
	for s, e := range l.owned {
		if current[s] == e {
			kept[s] = e
		} else {
			l.metrics.leaseChanges.WithLabelValues("lost").Inc()
		}
	}
	l.owned = kept
	l.metrics.shardsOwned.Set(float64(len(kept)))
	return nil
}

// leave gives back every lease and the membership, so the others deal the
// shards among themselves at their next round.
func (l *leases) leave(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(`UPDATE relay_leases AS l SET owner = NULL, expires_at = '-infinity'
		FROM (SELECT shard FROM relay_leases WHERE owner = $1 ORDER BY shard FOR UPDATE) AS g WHERE l.shard = g.shard`, l.id)
	b.Queue(`DELETE FROM relay_members WHERE relay_id = $1`, l.id)
	if err := l.pool.SendBatch(ctx, b).Close(); err != nil {
		l.log.Warn("relay could not give back its leases; they expire after the TTL", "err", err)
	}
	l.mu.Lock()
	l.owned = nil
	l.mu.Unlock()
	l.metrics.shardsOwned.Set(0)
}
