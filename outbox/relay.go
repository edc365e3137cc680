package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/txpipe/txpipe/internal/pgtx"
	"github.com/txpipe/txpipe/internal/retry"
)

// Publisher sends messages to Kafka and returns once every one of them is
// acknowledged (a *kafka.Writer built by internal/kafkawriter).
type Publisher interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// RelayOptions configure a Relay.
type RelayOptions struct {
	Pool      *pgxpool.Pool
	Publisher Publisher
	// BatchSize is the most rows published per transaction. Default 500.
	BatchSize int
	// PollInterval is how often the relay looks for rows when no
	// notification woke it: the safety net for notifications lost while the
	// listening connection was down. Default 1 s.
	PollInterval time.Duration
	// LeaseTTL is how long a relay's shard leases last without renewal:
	// how soon the others take over from a relay that stopped, paused or
	// lost PostgreSQL. Renewed every LeaseTTL/3. Default 10 s.
	LeaseTTL time.Duration
	// ID names the relay in the lease table; default host-pid-random.
	ID         string
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Relay publishes outbox rows to Kafka in id order and deletes them once
// Kafka acknowledged them. Several relays share the work: each publishes
// the shards it holds the lease of (see leases), and each batch also locks
// its rows (FOR UPDATE), so no row is ever published by two relays at once
// and a key's records keep their order.
type Relay struct {
	opts    RelayOptions
	metrics *relayMetrics
	ready   readiness
	leases  *leases
}

// NewRelay checks the options and registers the relay's metrics.
func NewRelay(o RelayOptions) (*Relay, error) {
	if o.Pool == nil || o.Publisher == nil || o.Log == nil || o.Registerer == nil {
		return nil, errors.New("relay: Pool, Publisher, Registerer and Log are required")
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.ID == "" {
		o.ID = newRelayID()
	}
	m, err := newRelayMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	return &Relay{opts: o, metrics: m,
		leases: &leases{pool: o.Pool, id: o.ID, ttl: o.LeaseTTL, log: o.Log, metrics: m}}, nil
}

// Ready reports nil once the relay's last lease upkeep and its last attempt
// to publish succeeded, or why they are failing. It is a readiness check for
// /readyz. A relay dealt no shard (more relays than shards) is ready: it
// stands by.
func (r *Relay) Ready(context.Context) error {
	if err := r.leases.ready.err(); err != nil {
		return fmt.Errorf("leases: %w", err)
	}
	return r.ready.err()
}

// Run relays until ctx is done. Failures (PostgreSQL or Kafka unreachable)
// are retried with exponential backoff capped at 5 s, for as long as it
// takes: the outbox keeps the rows, so waiting loses nothing. It returns nil
// when ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { r.leases.run(ctx, wake); return nil })
	g.Go(func() error { r.listen(ctx, wake); return nil })
	g.Go(func() error { r.watchBacklog(ctx); return nil })
	g.Go(func() error { r.loop(ctx, wake); return nil })
	return g.Wait()
}

func (r *Relay) loop(ctx context.Context, wake <-chan struct{}) {
	bo := retry.Policy(5 * time.Second)
	for ctx.Err() == nil {
		n, err := r.publishBatch(ctx)
		if errors.Is(err, errFenced) {
			r.metrics.fenced.Inc()
			r.opts.Log.Warn("relay lost a lease mid-batch; its new holder publishes the rows", "relay", r.opts.ID)
			if err = r.leases.recheck(ctx); err == nil {
				continue // the shards it still holds may have rows waiting
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.ready.set(err)
			r.metrics.failures.Inc()
			var pe *publishError
			if errors.As(err, &pe) {
				r.leases.kafkaFailed()
			}
			d := bo.NextBackOff()
			r.opts.Log.Warn("relay publish failed, will retry", "err", err, "retry_in", d)
			retry.Sleep(ctx, d)
			continue
		}
		r.ready.set(nil)
		r.leases.roundSucceeded(n > 0)
		bo.Reset()
		if n == r.opts.BatchSize {
			continue // more rows are likely waiting
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-time.After(r.opts.PollInterval):
		}
	}
}

// maxBatchBytes bounds the records of one relay transaction, so that every
// partition's share of a publish fits one record batch (the broker's default
// limit is 1 MiB) and one request. The writer never sends a partition's later
// records after its earlier ones failed, so a retry cannot publish a key's
// older records after its newer ones either way; this keeps the transaction
// and its row locks short.
const maxBatchBytes = 1<<20 - 16<<10

// publishTimeout bounds one publish, so a Kafka outage does not hold the
// batch's row locks (and back vacuum) for minutes. It is longer than the
// writer's round (30 s, plus a request in flight): records of a publish
// that timed out are dropped by the writer, not sent after the rollback.
const publishTimeout = 60 * time.Second

// publishError is Kafka failing to take a batch (as opposed to
// PostgreSQL failing): the failure a relay steps down for.
type publishError struct {
	n   int
	err error
}

func (e *publishError) Error() string { return fmt.Sprintf("publish %d records: %v", e.n, e.err) }
func (e *publishError) Unwrap() error { return e.err }

type row struct {
	id         int64
	shard      int16
	topic      string
	key, value []byte
	headers    map[string]string
	acceptedAt pgtype.Timestamptz
	createdAt  time.Time
}

// size estimates the bytes the record takes in a produce request.
func (x row) size() int {
	n := len(x.key) + len(x.value) + 32
	for k, v := range x.headers {
		n += len(k) + len(v) + 8
	}
	return n
}

// publishBatch publishes the oldest rows and deletes them, in one
// transaction: the row locks keep a second relay off these rows until they
// are gone, and a crash after Kafka acknowledged but before the delete only
// publishes them again (at-least-once; consumers dedupe on event_id).
func (r *Relay) publishBatch(ctx context.Context) (int, error) {
	// One connection, and a transaction opened by the batch that reads the
	// rows (BEGIN queued ahead of the SELECT) and committed by the one that
	// deletes them: two round trips where BEGIN, SELECT, DELETE and COMMIT
	// would take four.
	var published []row
	err := pgtx.Run(ctx, r.opts.Pool, func(conn *pgxpool.Conn) error {
		var err error
		published, err = r.publishIn(ctx, conn)
		return err
	})
	if err != nil {
		return 0, err
	}
	now := time.Now()
	for _, x := range published {
		r.metrics.published.WithLabelValues(x.topic).Inc()
		if x.acceptedAt.Valid {
			r.metrics.endToEnd.Observe(now.Sub(x.acceptedAt.Time).Seconds())
		}
	}
	if len(published) > 0 {
		r.metrics.batchSize.Observe(float64(len(published)))
	}
	return len(published), nil
}

// publishIn runs publishBatch's transaction on conn and returns the rows
// it published.
func (r *Relay) publishIn(ctx context.Context, conn *pgxpool.Conn) ([]row, error) {
	shards, epochs := r.leases.held()
	if len(shards) == 0 {
		return nil, nil
	}
	var batch []row
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(`SELECT id, shard, topic, key, value, headers, accepted_at, created_at
		FROM outbox WHERE shard = ANY($2) ORDER BY id LIMIT $1 FOR UPDATE`, r.opts.BatchSize, shards).Query(func(rows pgx.Rows) error {
		var err error
		batch, err = pgx.CollectRows(rows, func(rr pgx.CollectableRow) (row, error) {
			var x row
			var h []byte
			err := rr.Scan(&x.id, &x.shard, &x.topic, &x.key, &x.value, &h, &x.acceptedAt, &x.createdAt)
			if err == nil {
				err = json.Unmarshal(h, &x.headers)
			}
			return x, err
		})
		return err
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	batch, parked := fit(batch)
	if len(parked) > 0 {
		if err := r.park(ctx, conn, parked); err != nil {
			return nil, err
		}
	}
	if len(batch) > 0 {
		msgs := make([]kafka.Message, len(batch))
		for i, x := range batch {
			msgs[i] = kafka.Message{Topic: x.topic, Key: x.key, Value: x.value}
			for k, v := range x.headers {
				msgs[i].Headers = append(msgs[i].Headers, kafka.Header{Key: k, Value: []byte(v)})
			}
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		defer cancel()
		if err := r.opts.Publisher.WriteMessages(pctx, msgs...); err != nil {
			return nil, &publishError{n: len(msgs), err: err}
		}
		r.metrics.publishDuration.Observe(time.Since(start).Seconds())
	}
	b = &pgx.Batch{}
	fenced := false
	if len(batch) > 0 {
		ids := make([]int64, len(batch))
		inBatch := make(map[int16]bool)
		for i, x := range batch {
			ids[i] = x.id
			inBatch[x.shard] = true
		}
		var fenceShards []int16
		var fenceEpochs []int64
		for i, s := range shards { // in shard order, as every lease lock is taken
			if inBatch[s] {
				fenceShards, fenceEpochs = append(fenceShards, s), append(fenceEpochs, epochs[i])
			}
		}
		// The fence: delete only while this relay still holds the lease of
		// every shard in the batch with the epoch it read the rows under. FOR SHARE
		// holds off a takeover until this transaction ends.
		b.Queue(`DELETE FROM outbox WHERE id = ANY($1) AND (
				SELECT count(*) FROM (SELECT 1 FROM relay_leases AS l
					JOIN unnest($2::int2[], $3::int8[]) AS u (shard, epoch) ON l.shard = u.shard AND l.epoch = u.epoch
					WHERE l.owner = $4 ORDER BY l.shard FOR SHARE OF l) AS held) = cardinality($2::int2[])`,
			ids, fenceShards, fenceEpochs, r.opts.ID).Exec(func(ct pgconn.CommandTag) error {
			fenced = ct.RowsAffected() != int64(len(ids))
			return nil
		})
	}
	b.Queue("COMMIT")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("delete published rows: %w", err)
	}
	if fenced {
		// The rows were locked by this transaction, so none was deleted by
		// anyone else: the fence refused, and the commit deleted nothing.
		return nil, errFenced
	}
	return batch, nil
}

// fit splits rows, in id order, into those that fit one publish call
// (maxBatchBytes in all) and those that can never be published because one
// record alone exceeds it. Rows after the first that does not fit wait for
// the next call.
func fit(rows []row) (batch, parked []row) {
	total := 0
	for _, x := range rows {
		size := x.size()
		if size > maxBatchBytes {
			parked = append(parked, x)
			continue
		}
		if total+size > maxBatchBytes {
			break
		}
		batch = append(batch, x)
		total += size
	}
	return batch, parked
}

// park moves rows that can never be published to outbox_parked, so they do
// not block the rows behind them. An operator must look at them: the
// consumers of their topic will see a gap.
func (r *Relay) park(ctx context.Context, tx *pgxpool.Conn, rows []row) error {
	ids := make([]int64, len(rows))
	for i, x := range rows {
		ids[i] = x.id
		r.opts.Log.Error("outbox row too large to publish; parked", "id", x.id, "topic", x.topic, "bytes", x.size())
	}
	_, err := tx.Exec(ctx, `WITH moved AS (DELETE FROM outbox WHERE id = ANY($1) RETURNING *)
		INSERT INTO outbox_parked (id, topic, key, value, headers, accepted_at, created_at, reason)
		SELECT id, topic, key, value, headers, accepted_at, created_at, 'too_large' FROM moved`, ids)
	if err != nil {
		return fmt.Errorf("park rows: %w", err)
	}
	r.metrics.parked.Add(float64(len(rows)))
	return nil
}

// listen holds a dedicated connection LISTENing on NotifyChannel and signals
// wake on every notification. It reconnects with backoff; notifications sent
// while it is down are lost, which the poll interval covers.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	bo := retry.Policy(5 * time.Second)
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, wake, bo)
		if ctx.Err() != nil {
			return
		}
		d := bo.NextBackOff()
		r.opts.Log.Warn("relay listen connection lost, polling until it is back", "err", err, "retry_in", d)
		retry.Sleep(ctx, d)
	}
}

func (r *Relay) listenOnce(ctx context.Context, wake chan<- struct{}, bo backoff.BackOff) error {
	conn, err := pgx.ConnectConfig(ctx, r.opts.Pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	bo.Reset()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		select {
		case wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// watchBacklog samples the outbox size and the age of its oldest row, the
// signals that tell an operator the relay is falling behind.
func (r *Relay) watchBacklog(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		var n int64
		var oldest pgtype.Timestamptz
		err := r.opts.Pool.QueryRow(ctx, `SELECT count(*), min(created_at) FROM outbox`).Scan(&n, &oldest)
		if err == nil {
			r.metrics.pending.Set(float64(n))
			age := 0.0
			if oldest.Valid {
				age = max(0, time.Since(oldest.Time).Seconds())
			}
			r.metrics.oldestAge.Set(age)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
