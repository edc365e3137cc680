package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
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
	// BatchSize is the most rows read per transaction (a row holds one or
	// more records; maxBatchBytes bounds what is published). Default 200.
	BatchSize int
	// PollInterval is how often the relay looks for rows when no
	// notification woke it: the safety net for notifications lost while the
	// listening connection was down. Default 1 s.
	PollInterval time.Duration
	// LeaseTTL is how long a relay's shard leases last without renewal:
	// how soon the others take over from a relay that stopped, paused or
	// lost PostgreSQL. Renewed every LeaseTTL/3. Default 10 s.
	LeaseTTL time.Duration
	// TopicRefusalGrace is how long Kafka must keep refusing a topic as
	// missing (UNKNOWN_TOPIC_OR_PARTITION: the brokers do not list it for a
	// whole writer round, about 16 s of metadata retries) or as not
	// authorized before the relay parks its rows: a topic being created, or
	// an ACL being granted, is refused for a moment, and a parked row is a
	// gap its consumers see until an operator unparks it. Meanwhile its rows
	// wait in the outbox and the other topics' rows flow. Default 1 min.
	TopicRefusalGrace time.Duration
	// Listen is the connection the relay LISTENs on for the workers'
	// wake-ups: nil, the pool's. Behind a pooler in transaction mode
	// (PgBouncer) a LISTEN does not stay with the client that made it, so
	// it must name PostgreSQL itself, or NoListen be set.
	Listen *pgx.ConnConfig
	// NoListen: no LISTEN at all; the relay finds new rows by polling
	// every PollInterval.
	NoListen bool
	// ID names the relay in the lease table; default host-pid-random.
	ID         string
	Registerer prometheus.Registerer
	Log        *slog.Logger

	reclaimEvery time.Duration // tests: how often to look for slots to truncate (reclaimInterval)
}

// Relay publishes outbox rows to Kafka in id order and deletes them once
// Kafka acknowledged them; between batches it truncates the outbox's slots
// whose rows are all published (reclaim.go). Several relays share the work: each publishes
// the shards it holds the lease of (see leases), and each batch also locks
// its rows (FOR UPDATE), so no row is ever published by two relays at once
// and a key's records keep their order.
//
// A row Kafka refuses for good, or that cannot be made a record, is moved
// to outbox_parked with the reason (ParkReasons), counted and logged, so it
// never holds up the rows behind it; its consumers see a gap until an
// operator fixes the cause and unparks it (Unpark).
type Relay struct {
	opts     RelayOptions
	readSQL  string // readSQL with opts.BatchSize
	metrics  *relayMetrics
	ready    readiness
	leases   *leases
	refusals refusals // the loop goroutine's
	// reclaimWarned is when the loop goroutine last logged a failed
	// truncation.
	reclaimWarned time.Time
}

// NewRelay checks the options and registers the relay's metrics.
func NewRelay(o RelayOptions) (*Relay, error) {
	if o.Pool == nil || o.Publisher == nil || o.Log == nil || o.Registerer == nil {
		return nil, errors.New("relay: Pool, Publisher, Registerer and Log are required")
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 200
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.TopicRefusalGrace <= 0 {
		o.TopicRefusalGrace = time.Minute
	}
	if o.ID == "" {
		o.ID = newRelayID()
	}
	if o.reclaimEvery <= 0 {
		o.reclaimEvery = reclaimInterval
	}
	m, err := newRelayMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	return &Relay{opts: o, readSQL: fmt.Sprintf(readSQL, o.BatchSize), metrics: m, refusals: refusals{grace: o.TopicRefusalGrace},
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

// Run relays until ctx is done. Failures (PostgreSQL or Kafka unreachable,
// a panic while handling a batch) are retried with exponential backoff
// capped at 5 s, for as long as it takes: the outbox keeps the rows, so
// waiting loses nothing. It returns nil when ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { r.leases.run(ctx, wake); return nil })
	if !r.opts.NoListen {
		g.Go(func() error { r.listen(ctx, wake); return nil })
	}
	g.Go(func() error { r.watchBacklog(ctx); return nil })
	g.Go(func() error { r.loop(ctx, wake); return nil })
	return g.Wait()
}

func (r *Relay) loop(ctx context.Context, wake <-chan struct{}) {
	bo := retry.Policy(5 * time.Second)
	var reclaimed time.Time
	for ctx.Err() == nil {
		// Between batches, so that this relay's own batch never holds a
		// lock the truncation waits for.
		if time.Since(reclaimed) >= r.opts.reclaimEvery {
			r.reclaim(ctx)
			reclaimed = time.Now()
		}
		n, full, err := r.publishBatch(ctx)
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
				// Refusals are Kafka answering: stepping down would not help.
				if pe.unreachable && n == 0 {
					r.leases.kafkaFailed()
				} else {
					r.leases.roundSucceeded(n > 0)
				}
			}
			if n > 0 {
				// Some rows went through: go on with the next batch at
				// once; the rows that stayed are in it again.
				r.opts.Log.Debug("relay published a batch partly; the rest stays", "err", err, "published", n)
				bo.Reset()
				continue
			}
			d := bo.NextBackOff()
			r.opts.Log.Warn("relay publish failed, will retry", "err", err, "retry_in", d)
			retry.Sleep(ctx, d)
			continue
		}
		r.ready.set(nil)
		r.leases.roundSucceeded(n > 0)
		bo.Reset()
		if full {
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

// maxIsolated bounds the rows one batch publishes one at a time (see
// isolate); the rest wait for the next batch.
const maxIsolated = 100

// publishError is rows of a batch that stay in the outbox because Kafka did
// not take them (as opposed to PostgreSQL failing). unreachable: some failed
// for a reason other than a refusal (Kafka unreachable, leaders moving),
// the failure a relay steps down for.
type publishError struct {
	n           int
	unreachable bool
	err         error
}

func (e *publishError) Error() string { return fmt.Sprintf("%d records not published: %v", e.n, e.err) }
func (e *publishError) Unwrap() error { return e.err }

// errPanicked is a batch the relay gave up on because handling it panicked
// (recovered, logged and counted where it happened).
var errPanicked = errors.New("handling the batch panicked")

// record is one record of an outbox row, as read.
type record struct {
	id         int64 // its row's
	ord        int32 // its position in the row, from 1
	slot       int16
	shard      int16
	topic      string
	key, value []byte
	headers    []byte // JSON as stored: decoded by toRecord
	acceptedAt pgtype.Timestamptz
	createdAt  time.Time
	msg        kafka.Message // the record, made by toRecord
	size       int           // its bytes in a produce request, estimated
	// malformed: the row's records could not be read; this record stands
	// for them all, its value the row's bytes.
	malformed error
}

// outboxRow is an outbox row a batch read: the records it holds.
type outboxRow struct {
	id          int64
	slot, shard int16
	records     int
	// single: the row is of the layout before migration 0024, one record
	// in scalar columns.
	single bool
}

type parkedRecord struct {
	record
	reason string
	cause  error
	parked int64 // its id in outbox_parked, once settled
}

// batchResult is what became of a batch's rows: published (delete them),
// parked (move them to outbox_parked), or neither (they stay for the next
// batch; retained counts them, cause says why the first one stayed).
type batchResult struct {
	rows        []outboxRow
	records     []record // every record of rows, in order
	published   []record
	parked      []parkedRecord
	retained    int
	cause       error
	unreachable bool
	// cut: records were left out of the publish because the batch was full
	// (maxBatchBytes); more are waiting.
	cut bool
}

func (b *batchResult) park(x record, reason string, cause error) {
	b.parked = append(b.parked, parkedRecord{record: x, reason: reason, cause: cause})
}

// retain leaves records in the outbox; unreachable: not because of a
// refusal.
func (b *batchResult) retain(records []record, cause error, unreachable bool) {
	b.retained += len(records)
	if b.cause == nil {
		b.cause = cause
	}
	b.unreachable = b.unreachable || unreachable
}

// publishBatch publishes the oldest rows of the shards this relay holds and,
// in the same transaction, deletes those Kafka acknowledged and parks those
// it refuses for good: the row locks keep a second relay off these rows
// until they are gone, and a crash after Kafka acknowledged but before the
// commit only publishes them again (at-least-once; consumers dedupe on
// event_id). Rows that failed for a passing reason stay for the next batch:
// it returns how many rows it published, whether it read a full batch (more
// rows are likely waiting) and, when some rows stayed, a *publishError. A
// panic while handling the batch is recovered: the transaction rolls back
// and the batch is retried.
func (r *Relay) publishBatch(ctx context.Context) (published int, full bool, err error) {
	// One connection, and a transaction opened by the batch that reads the
	// rows (BEGIN queued ahead of the SELECT) and committed by the one that
	// settles them: two round trips where BEGIN, SELECT, DELETE and COMMIT
	// would take four.
	res := &batchResult{}
	err = pgtx.Run(ctx, r.opts.Pool, func(conn *pgxpool.Conn) (err error) {
		defer func() {
			if p := recover(); p != nil {
				r.recovered(p)
				err = errPanicked
			}
		}()
		return r.publishIn(ctx, conn, res)
	})
	if err != nil {
		return 0, false, err
	}
	r.account(res)
	full = len(res.rows) == r.opts.BatchSize || res.cut
	if res.retained > 0 {
		return len(res.published), full, &publishError{n: res.retained, unreachable: res.unreachable, err: res.cause}
	}
	return len(res.published), full, nil
}

// publishIn runs publishBatch's transaction on conn.
func (r *Relay) publishIn(ctx context.Context, conn *pgxpool.Conn, res *batchResult) error {
	shards, epochs := r.leases.held()
	if len(shards) == 0 {
		return nil
	}
	rows, records, err := r.read(ctx, conn, shards)
	if err != nil {
		return err
	}
	res.rows, res.records = rows, records
	send, err := r.prepare(records, res)
	if err != nil {
		return err
	}
	if len(send) > 0 {
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		defer cancel()
		r.publish(pctx, send, res)
	}
	return r.settle(ctx, conn, shards, epochs, res)
}

// read opens the transaction and locks the oldest rows of shards; it
// returns them and their records, in order. A row whose records cannot be
// read, or could not be parked as text, is one record that says so
// (parked undecodable whole, with the row's key, and its bytes as the
// value).
func (r *Relay) read(ctx context.Context, conn *pgxpool.Conn, shards []int16) ([]outboxRow, []record, error) {
	var rows []outboxRow
	var records []record
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED")
	b.Queue(relaySettings)
	b.Queue(r.readSQL, shards).Query(func(rs pgx.Rows) error {
		var (
			x              outboxRow
			packed         []byte
			topic, headers pgtype.Text
			key, value     []byte
			accepted       pgtype.Timestamptz
			createdAt      time.Time
		)
		_, err := pgx.ForEachRow(rs, []any{&x.id, &x.slot, &x.shard, &packed, &topic, &key, &value, &headers, &accepted, &createdAt}, func() error {
			x.single = packed == nil
			start := len(records)
			if x.single {
				records = append(records, record{id: x.id, ord: 1, slot: x.slot, shard: x.shard,
					topic: topic.String, key: key, value: value, headers: []byte(headers.String), acceptedAt: accepted, createdAt: createdAt})
			} else {
				var err error
				if records, err = unpackRecords(records, x, createdAt, packed); err != nil {
					records = append(records[:start], record{id: x.id, ord: 1, slot: x.slot, shard: x.shard,
						key: key, value: packed, createdAt: createdAt, malformed: err})
				}
			}
			x.records = len(records) - start
			rows = append(rows, x)
			return nil
		})
		return err
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, nil, fmt.Errorf("read outbox: %w", err)
	}
	return rows, records, nil
}

// prepare makes records into Kafka records and returns those to send, in
// order, up to maxBatchBytes (the records after the first that does not
// fit wait for the next batch). It parks the records that cannot be made
// one, or are too large for any batch, and holds back those of a topic
// Kafka refused a moment ago (parked once TopicRefusalGrace is over). A
// record whose handling panics is parked as internal_error when another
// record was handled, so the panic is that record's; when every record
// panics the batch fails instead.
func (r *Relay) prepare(records []record, res *batchResult) ([]record, error) {
	var made, panicked []record
	for _, x := range records {
		var reason string
		var cause error
		switch ok := r.guard(func() { reason, cause = toRecord(&x) }); {
		case !ok:
			panicked = append(panicked, x)
		case reason != "":
			res.park(x, reason, cause)
		default:
			made = append(made, x)
		}
	}
	if len(panicked) > 0 {
		if len(panicked) == len(records) {
			return nil, errPanicked
		}
		for _, x := range panicked {
			res.park(x, ReasonInternalError, errPanicked)
		}
	}
	now := time.Now()
	var send []record
	total := 0
	for _, x := range made {
		if reason, park, held := r.refusals.standing(x.topic, now); held {
			cause := fmt.Errorf("topic %q: Kafka refused it less than %s ago: %s", x.topic, refusalRecheck, reason)
			if park {
				res.park(x, reason, cause)
			} else {
				res.retain([]record{x}, cause, false)
			}
			continue
		}
		if x.size > maxBatchBytes {
			res.park(x, ReasonTooLarge, fmt.Errorf("%d bytes, more than a relay batch may hold (%d)", x.size, maxBatchBytes))
			continue
		}
		if total+x.size > maxBatchBytes {
			res.cut = true
			break
		}
		send = append(send, x)
		total += x.size
	}
	return send, nil
}

// toRecord makes x's Kafka record, or says why x cannot be one.
func toRecord(x *record) (reason string, cause error) {
	if x.malformed != nil {
		return ReasonUndecodable, x.malformed
	}
	if x.topic == "" {
		return ReasonUndecodable, errors.New("the record names no topic")
	}
	headers, err := parseHeaders(x.headers)
	if err != nil {
		return ReasonUndecodable, fmt.Errorf("headers are not a JSON object of strings: %w", err)
	}
	addCloudEvents(&headers, x.key, x.value)
	x.msg = kafka.Message{Topic: x.topic, Key: x.key, Value: x.value, Headers: headers.sorted()}
	x.size = len(x.key) + len(x.value) + 32
	for _, h := range x.msg.Headers {
		x.size += len(h.Key) + len(h.Value) + 8
	}
	return "", nil
}

// publish sends records in one call and sorts each into published, parked
// or retained. Records Kafka refused as such are sent again one by one
// (isolate); records of a topic it refused wait, or are parked once it has
// refused the topic for TopicRefusalGrace; the rest stay for the next
// batch. By the writer's contract a partition's records after one that
// failed failed too, so what is published is, per partition, a prefix of
// its records in this batch: removing exactly those keeps every key's
// order.
func (r *Relay) publish(ctx context.Context, records []record, res *batchResult) {
	start := time.Now()
	errs, ok := r.write(ctx, records)
	if !ok {
		r.isolate(ctx, records, res) // the publish panicked: learn whether one record did it
		return
	}
	r.metrics.publishDuration.Observe(time.Since(start).Seconds())
	now := time.Now()
	var suspects []record
	for i, x := range records {
		reason, topicWide := refusal(errs[i])
		switch {
		case errs[i] == nil:
			res.published = append(res.published, x)
			r.refusals.accepted(x.topic)
		case reason == "":
			res.retain([]record{x}, errs[i], true)
		case !topicWide:
			suspects = append(suspects, x)
		case r.refusals.observe(x.topic, reason, now):
			res.park(x, reason, errs[i])
		default:
			res.retain([]record{x}, fmt.Errorf("%w (parked if still refused after %s)", errs[i], r.opts.TopicRefusalGrace), false)
		}
	}
	r.isolate(ctx, suspects, res)
}

// isolate publishes records one at a time, in order, to learn which of
// them Kafka (or the publisher) refuses: a partition's record batch fails
// whole when one of its records is refused, so its other records are
// innocent. A record refused again alone is parked. A record whose publish
// panics alone is parked as internal_error if another record went through
// alone, so the panic is the record's and not the publisher's; otherwise
// it stays, and two such records with none through stop it (the publisher
// panics whatever it sends). The first record that fails alone for any
// other reason stops it: that record and the rest stay for the next batch,
// so no later record of a key is published ahead of an earlier one that
// may still be.
func (r *Relay) isolate(ctx context.Context, records []record, res *batchResult) {
	var panicked []record
	through := false
	for i, x := range records {
		if i == maxIsolated {
			res.retain(records[i:], fmt.Errorf("more than %d records to publish one by one; the rest wait for the next batch", maxIsolated), false)
			break
		}
		errs, ok := r.write(ctx, []record{x})
		if !ok {
			panicked = append(panicked, x)
			if len(panicked) == 2 && !through {
				res.retain(records[i+1:], errPanicked, false)
				break
			}
			continue
		}
		if errs[0] == nil {
			res.published = append(res.published, x)
			through = true
			continue
		}
		reason, topicWide := refusal(errs[0])
		if reason != "" && !topicWide {
			res.park(x, reason, errs[0])
			continue
		}
		res.retain(records[i:], errs[0], reason == "")
		break
	}
	for _, x := range panicked {
		if through {
			res.park(x, ReasonInternalError, errPanicked)
		} else {
			res.retain([]record{x}, errPanicked, false)
		}
	}
}

// write publishes records and returns each one's error (nil: acknowledged).
// ok is false when the publisher panicked (recovered; nothing is known of
// what it sent).
func (r *Relay) write(ctx context.Context, records []record) (errs []error, ok bool) {
	msgs := make([]kafka.Message, len(records))
	for i, x := range records {
		msgs[i] = x.msg
	}
	var err error
	if !r.guard(func() { err = r.opts.Publisher.WriteMessages(ctx, msgs...) }) {
		return nil, false
	}
	errs = make([]error, len(records))
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == len(records) {
		copy(errs, werrs)
	} else if err != nil {
		for i := range errs {
			errs[i] = err
		}
	}
	return errs, true
}

// recordRef names a record: its row and its position in it.
type recordRef struct {
	id  int64
	ord int32
}

// settle removes from the outbox what the batch is done with, then
// commits: a row whose every record was published or parked is deleted; a
// row of which only some were is rewritten to hold the others, in order;
// parked records are copied to outbox_parked. All of it is fenced: it
// happens only while this relay still holds the lease of every shard it
// touches with the epoch it read the rows under (FOR SHARE holds off a
// takeover until the commit); otherwise the commit changes nothing and it
// returns errFenced.
func (r *Relay) settle(ctx context.Context, conn *pgxpool.Conn, shards []int16, epochs []int64, res *batchResult) error {
	b := &pgx.Batch{}
	held := true
	if len(res.published)+len(res.parked) > 0 {
		done := make(map[int64]int, len(res.rows))
		for _, x := range res.published {
			done[x.id]++
		}
		for _, x := range res.parked {
			done[x.id]++
		}
		touched := make(map[int16]bool)
		deleted := make(map[int16][]int64)
		var partial []outboxRow
		for _, row := range res.rows {
			switch n := done[row.id]; {
			case n == 0:
			case n == row.records:
				deleted[row.slot] = append(deleted[row.slot], row.id)
				touched[row.shard] = true
			default:
				partial = append(partial, row)
				touched[row.shard] = true
			}
		}
		var fenceShards []int16
		var fenceEpochs []int64
		for i, s := range shards { // in shard order, as every lease lock is taken
			if touched[s] {
				fenceShards, fenceEpochs = append(fenceShards, s), append(fenceEpochs, epochs[i])
			}
		}
		slots := slices.Sorted(maps.Keys(deleted))
		args := []any{fenceShards, fenceEpochs, r.opts.ID}
		for _, s := range slots {
			args = append(args, deleted[s])
		}
		if len(partial) > 0 {
			args = append(args, res.kept(partial)...)
		}
		if len(res.parked) > 0 {
			args = append(args, res.parkedArgs()...)
		}
		b.Queue(settleSQL(slots, len(partial) > 0, len(res.parked) > 0), args...).QueryRow(func(row pgx.Row) error {
			var parked []int64
			if err := row.Scan(&held, &parked); err != nil {
				return err
			}
			if held && len(parked) != len(res.parked) {
				return fmt.Errorf("settle parked %d records, want %d", len(parked), len(res.parked))
			}
			for i := range parked {
				res.parked[i].parked = parked[i]
			}
			return nil
		})
	}
	b.Queue("COMMIT")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("settle published and parked records: %w", err)
	}
	if !held {
		// The rows were locked by this transaction, so none was changed by
		// anyone else: the fence refused, and the commit changed nothing.
		return errFenced
	}
	return nil
}

// kept returns the settle statement's arguments that rewrite rows, each
// to the records of it the batch neither published nor parked, packed
// again in order: the rows' ids, their records, how many, and their slots.
func (b *batchResult) kept(rows []outboxRow) []any {
	partial := make(map[int64]bool, len(rows))
	for _, row := range rows {
		partial[row.id] = true
	}
	done := make(map[recordRef]bool)
	for _, x := range b.published {
		if partial[x.id] {
			done[recordRef{x.id, x.ord}] = true
		}
	}
	for _, x := range b.parked {
		if partial[x.id] {
			done[recordRef{x.id, x.ord}] = true
		}
	}
	packed := make(map[int64][]byte, len(rows))
	counts := make(map[int64]int32, len(rows))
	for _, x := range b.records {
		if !partial[x.id] || done[recordRef{x.id, x.ord}] {
			continue
		}
		if packed[x.id] == nil {
			packed[x.id] = []byte{rowFormat}
		}
		var accepted time.Time
		if x.acceptedAt.Valid {
			accepted = x.acceptedAt.Time
		}
		packed[x.id] = appendRecord(packed[x.id], x.topic, x.key, x.value, string(x.headers), accepted)
		counts[x.id]++
	}
	ids, records, n := make([]int64, len(rows)), make([][]byte, len(rows)), make([]int32, len(rows))
	slots := make(map[int16]bool)
	for i, row := range rows {
		ids[i], records[i], n[i] = row.id, packed[row.id], counts[row.id]
		slots[row.slot] = true
	}
	return []any{ids, records, n, slices.Sorted(maps.Keys(slots))}
}

// parkedArgs returns the settle statement's arguments that copy the
// parked records to outbox_parked, in row and position order (the order
// the statement returns their ids in): the row's id for a row of the older
// layout (it keeps its id) and NULL otherwise, each record's row and
// position, then its topic, key, value, headers, acceptance and creation
// times, and reason.
func (b *batchResult) parkedArgs() []any {
	slices.SortFunc(b.parked, func(x, y parkedRecord) int {
		return cmp.Or(cmp.Compare(x.id, y.id), cmp.Compare(x.ord, y.ord))
	})
	single := make(map[int64]bool)
	for _, row := range b.rows {
		if row.single {
			single[row.id] = true
		}
	}
	n := len(b.parked)
	ids, rows, ords := make([]pgtype.Int8, n), make([]int64, n), make([]int32, n)
	topics, keys, values := make([]string, n), make([][]byte, n), make([][]byte, n)
	headers, accepted, created, reasons := make([]string, n), make([]pgtype.Timestamptz, n), make([]time.Time, n), make([]string, n)
	for i, x := range b.parked {
		ids[i], rows[i], ords[i] = pgtype.Int8{Int64: x.id, Valid: single[x.id]}, x.id, x.ord
		topics[i], keys[i], values[i], headers[i] = x.topic, x.key, x.value, string(x.headers)
		accepted[i], created[i], reasons[i] = x.acceptedAt, x.createdAt, x.reason
	}
	return []any{ids, rows, ords, topics, keys, values, headers, accepted, created, reasons}
}

// relaySettings opens every batch's transaction:
//   - idle_in_transaction_session_timeout: a relay paused mid-batch
//     (SIGSTOP, a frozen VM) would hold its rows' locks past its lease, and
//     the relay that takes its shards over would wait on them: PostgreSQL
//     ends the session once it sits idle longer than a publish may take
//     (publishTimeout), releasing them;
//   - plan_cache_mode: the read and the settle have one right plan whatever
//     their parameters (each slot's primary key walked in id order; the
//     slots the settle's rows are not in pruned when it starts), so they
//     use the plan prepared once per connection. Left to choose, PostgreSQL
//     plans them again at every call, since a generic plan's estimate
//     counts all eight slots; at 1 000 commands/s that planning took longer
//     than running them (docs/benchmarks.md, "Planning");
//   - enable_sort, enable_seqscan: a plan made while a slot looks empty
//     (just truncated) would read it whole (and, for the read, sort it),
//     and it would last until a slot is truncated again, which a relay
//     that has fallen behind does not do: each call would cost more as the
//     backlog grew (measured: the slots' deletes, planned on an empty
//     slot, took 0.4 ms a call at 1 000 commands/s, where the index
//     lookups of one statement over every slot took 0.12). With both off,
//     every plan is the primary keys' at any size.
const relaySettings = `SELECT set_config('idle_in_transaction_session_timeout', '75s', true),
	set_config('plan_cache_mode', 'force_generic_plan', true),
	set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true)`

// readSQL, with the batch size as its LIMIT (a constant of the relay, so
// that the plan is made for it): $1 the shards held. A row of records
// comes with records set; a row of the older layout (migration 0024) with
// its one record's columns.
const readSQL = `SELECT id, slot, shard, records, topic, key, value, CASE WHEN records IS NULL THEN headers::text END, accepted_at, created_at
	FROM outbox WHERE shard = ANY($1::int2[]) ORDER BY id LIMIT %d FOR UPDATE`

// settleFence opens every settle statement: $1, $2 the shards touched
// and the epochs this relay holds them under; $3 the relay.
const settleFence = `WITH fence AS (
	SELECT count(*) = cardinality($1::int2[]) AS held FROM (
		SELECT 1 FROM relay_leases AS l
		JOIN unnest($1::int2[], $2::int8[]) AS u (shard, epoch) ON l.shard = u.shard AND l.epoch = u.epoch
		WHERE l.owner = $3 ORDER BY l.shard FOR SHARE OF l) AS h)`

// settleSQL is the statement that settles a batch, fenced (settleFence).
// For each of slots, in order, it deletes the rows done with of that
// slot's partition, named, so that the plan searches that partition alone
// ($4, $5, …: each slot's ids). With kept, it rewrites each row done with
// in part to the records it keeps (the next four parameters: the rows'
// ids, their records packed again, how many, and the rows' slots). With
// parked, it copies the parked records to outbox_parked (the last ten,
// see parkedArgs), each under its row's id for a row of the older layout
// and under a new id from the outbox's sequence otherwise, and returns
// those ids in order. Both are rare and touch few rows.
func settleSQL(slots []int16, kept, parked bool) string {
	var q strings.Builder
	q.WriteString(settleFence)
	for i, s := range slots {
		fmt.Fprintf(&q, ",\nd%d AS (DELETE FROM outbox_slot_%d WHERE id = ANY($%d::int8[]) AND (SELECT held FROM fence))", s, s, i+4)
	}
	n := len(slots) + 4
	if kept {
		fmt.Fprintf(&q, `,
kept AS (
	UPDATE outbox AS o SET records = k.records, record_count = k.n
	FROM unnest($%d::int8[], $%d::bytea[], $%d::int4[]) AS k (id, records, n)
	WHERE o.slot = ANY($%d::int2[]) AND o.id = k.id AND (SELECT held FROM fence))`, n, n+1, n+2, n+3)
		n += 4
	}
	if !parked {
		q.WriteString("\nSELECT held, '{}'::int8[] FROM fence")
		return q.String()
	}
	fmt.Fprintf(&q, `,
park AS (
	SELECT coalesce(p.id, nextval('outbox_id_seq')) AS parked_id, p.n, p.row_id, p.ord,
		p.topic, p.key, p.value, p.headers, p.accepted_at, p.created_at, p.reason
	FROM unnest($%d::int8[], $%d::int8[], $%d::int4[], $%d::text[], $%d::bytea[], $%d::bytea[], $%d::text[], $%d::timestamptz[],
			$%d::timestamptz[], $%d::text[])
		WITH ORDINALITY AS p (id, row_id, ord, topic, key, value, headers, accepted_at, created_at, reason, n)
	WHERE (SELECT held FROM fence)),
parked AS (
	INSERT INTO outbox_parked (id, row_id, ord, topic, key, value, headers, accepted_at, created_at, reason)
	SELECT parked_id, row_id, ord, topic, key, value, headers, accepted_at, created_at, reason FROM park)
SELECT held, (SELECT coalesce(array_agg(parked_id ORDER BY n), '{}') FROM park) FROM fence`, n, n+1, n+2, n+3, n+4, n+5, n+6, n+7, n+8, n+9)
	return q.String()
}

// parkedLog is the message of a parked record's log line.
const parkedLog = "outbox record parked: it cannot be published as it is; its consumers see a gap until it is unparked"

// account counts and logs, once committed, what a batch did. Each parked
// record is logged once, at Error (its consumers will see a gap), with its
// id in outbox_parked, the row it was in, its topic and reason, never its
// key or value.
func (r *Relay) account(res *batchResult) {
	now := time.Now()
	for _, x := range res.published {
		r.metrics.published.WithLabelValues(x.topic).Inc()
		if x.acceptedAt.Valid {
			r.metrics.endToEnd.Observe(now.Sub(x.acceptedAt.Time).Seconds())
		}
	}
	if len(res.published) > 0 {
		r.metrics.batchSize.Observe(float64(len(res.published)))
	}
	for _, x := range res.parked {
		r.metrics.parked.WithLabelValues(x.reason).Inc()
		r.opts.Log.Error(parkedLog,
			"id", x.parked, "row", x.id, "topic", x.topic, "reason", x.reason, "bytes", len(x.key)+len(x.value), "err", x.cause)
	}
}

// guard runs fn and reports whether it returned: a panic is recovered,
// logged with its stack and counted, once, here.
func (r *Relay) guard(fn func()) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			r.recovered(p)
			ok = false
		}
	}()
	fn()
	return true
}

// recovered logs and counts a recovered panic.
func (r *Relay) recovered(p any) {
	r.metrics.panics.Inc()
	r.opts.Log.Error("relay recovered from a panic; the batch is retried or the row that caused it parked",
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
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
	cfg := r.opts.Pool.Config().ConnConfig.Copy()
	if r.opts.Listen != nil {
		cfg = r.opts.Listen.Copy()
	}
	// Named, so an operator can tell the relays' listening sessions in
	// pg_stat_activity (one stuck there holds the notification queue).
	cfg.RuntimeParams["application_name"] = listenApplicationName
	conn, err := pgx.ConnectConfig(ctx, cfg)
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

// listenApplicationName is the application_name of the relays' LISTEN
// sessions.
const listenApplicationName = "txpipe-relay-listen"

// watchBacklog samples the rows waiting in the outbox and the age of its
// oldest, the signals that tell an operator the relay is falling behind,
// the outbox's size on disk (steady unless slots stop being truncated),
// and how full
// PostgreSQL's notification queue is: at NotifyQueueMaxUsage a listener is
// stuck, the workers stop notifying and the relays wake on their poll
// interval only, which it logs once each time it happens.
func (r *Relay) watchBacklog(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	held := false
	for {
		var n int64
		var oldest pgtype.Timestamptz
		var usage float64
		var size int64
		err := r.opts.Pool.QueryRow(ctx, `SELECT `+pendingSQL+`, min(created_at), pg_notification_queue_usage(),
			(SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8 FROM pg_partition_tree('outbox')) FROM outbox`).Scan(&n, &oldest, &usage, &size)
		if err == nil {
			r.metrics.pending.Set(float64(n))
			r.metrics.outboxBytes.Set(float64(size))
			age := 0.0
			if oldest.Valid {
				age = max(0, time.Since(oldest.Time).Seconds())
			}
			r.metrics.oldestAge.Set(age)
			r.metrics.notifyQueue.Set(usage)
			if atBound := usage >= NotifyQueueMaxUsage; atBound != held {
				held = atBound
				if held {
					r.opts.Log.Warn("PostgreSQL's notification queue is held by a listener that does not read; relays wake on their poll interval only",
						"usage", usage, "poll_interval", r.opts.PollInterval)
				} else {
					r.opts.Log.Info("PostgreSQL's notification queue is free again; relays are woken by notifications")
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
