// Package kafkawriter is txpipe's one Kafka producer, used by ingest, the
// relay and the tools.
//
// It does what Java's producer does and kafka-go's Writer does not: records
// bound for one broker travel in one produce request, whatever their
// partitions. kafka-go's Writer sends one request per partition, one at a time
// per partition, each closed by a timer; with twelve partitions and a thousand
// single-command requests a second that is close to a thousand produce
// requests a second, and a broker on a small machine spends most of a core
// on their overhead. Here one goroutine sends rounds: while a round is in
// flight, new records queue, and the next round takes all of them. Under load
// requests grow instead of multiplying; when idle a record goes out at once.
//
// Every request waits for all in-sync replicas (acks=all), keys pick their
// partition with murmur2 as the Java client does, and one round sends a
// partition's records in order in one record batch (or in consecutive
// batches when they exceed BatchBytes); after a failure nothing later of
// that partition is sent in that attempt, so a key's records land in order
// or the caller hears which did not.
package kafkawriter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataapi "github.com/segmentio/kafka-go/protocol/metadata"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
)

// Options configure a Writer.
type Options struct {
	Brokers   []string
	Transport kafka.RoundTripper // nil: kafka.DefaultTransport
	// Linger is how long an idle writer waits for more records after the
	// first before sending. Default 0: send at once (records that arrive
	// while a request is in flight gather for the next one anyway).
	Linger time.Duration
	// BatchBytes bounds one partition's record batch in a request. Default
	// 1 MiB, the broker's default message.max.bytes.
	BatchBytes int64
	// MaxAttempts is how often a round tries a partition's records before
	// reporting them failed. Default 20.
	MaxAttempts int
	// Timeout bounds a round: no attempt starts after it, and no request
	// outlives it by more than the request timeout (15 s). Default 30 s,
	// long enough to ride through a leader election.
	Timeout time.Duration
}

// ErrClosed is returned for records written after Close.
var ErrClosed = errors.New("kafkawriter: writer closed")

const (
	requestTimeout = 10 * time.Second // broker-side wait for the replicas
	metadataTTL    = 30 * time.Second
	maxRoundBytes  = 8 << 20 // records gathered into one round
	closeGrace     = 10 * time.Second
	backoffMin     = 100 * time.Millisecond
	backoffMax     = time.Second
)

// Writer produces records; safe for concurrent use.
type Writer struct {
	opts   Options
	client *kafka.Client
	addr   net.Addr

	calls   chan *call
	closing chan struct{}
	stopped chan struct{}
	once    sync.Once

	meta     map[string]topicMeta // used by the run goroutine only
	metaAt   time.Time
	metaErrs map[string]error // why the last metadata answer had no partitions of a topic

	writes, messages, bytes, errors, retries atomic.Int64
}

type topicMeta struct {
	partitions []int       // sorted ids
	leaders    map[int]int // partition → leader broker id
}

type call struct {
	ctx      context.Context // the caller's: once done, unsent records are dropped
	msgs     []kafka.Message
	errs     []error
	done     chan struct{}
	released bool
}

// release tells the caller its records are settled.
func (c *call) release() {
	if !c.released {
		c.released = true
		close(c.done)
	}
}

// New starts a Writer. Close it to stop its goroutine.
func New(o Options) *Writer {
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 20
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	addr := kafka.TCP(o.Brokers...)
	w := &Writer{
		opts:    o,
		client:  &kafka.Client{Addr: addr, Transport: o.Transport, Timeout: requestTimeout + 5*time.Second},
		addr:    addr,
		calls:   make(chan *call, 1024),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go w.run()
	return w
}

// WriteMessages produces msgs (each naming its topic) and returns once every
// one is acknowledged by all in-sync replicas. When some fail it returns an
// error wrapping kafka.WriteErrors, one entry per message (nil for those
// written). A record whose topic the brokers still list no partitions of
// after the round's metadata retries fails with what a broker says of the
// topic: UNKNOWN_TOPIC_OR_PARTITION (it does not exist) or
// TOPIC_AUTHORIZATION_FAILED (this client may not see it). When ctx ends
// first the records may or may not be written.
func (w *Writer) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	for _, m := range msgs {
		if m.Topic == "" {
			return errors.New("kafkawriter: a message names no topic")
		}
	}
	c := &call{ctx: ctx, msgs: msgs, errs: make([]error, len(msgs)), done: make(chan struct{})}
	select {
	case <-w.closing:
		return ErrClosed
	default:
	}
	select {
	case w.calls <- c:
	case <-w.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-c.done:
	case <-w.stopped:
		select {
		case <-c.done:
		default:
			return ErrClosed // queued as the writer closed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	var first error
	failed := 0
	for _, err := range c.errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if failed == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", kafka.WriteErrors(c.errs), first)
}

// Close stops the writer once the round in flight is done (it is abandoned
// after closeGrace); records still queued fail with ErrClosed.
func (w *Writer) Close() error {
	w.once.Do(func() { close(w.closing) })
	<-w.stopped
	return nil
}

// Stats are the writer's counters since it started.
type Stats struct{ Writes, Messages, Bytes, Errors, Retries int64 }

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	return Stats{w.writes.Load(), w.messages.Load(), w.bytes.Load(), w.errors.Load(), w.retries.Load()}
}

func (w *Writer) run() {
	defer close(w.stopped)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-w.closing:
		case <-w.stopped:
			return
		}
		select {
		case <-time.After(closeGrace):
			cancel() // abandon the round: backoff sleeps and requests in flight
		case <-w.stopped:
		}
	}()
	for {
		var first *call
		select {
		case first = <-w.calls:
		case <-w.closing:
			w.failQueued()
			return
		}
		round := w.gather(first)
		w.guardedSend(ctx, round)
		for _, c := range round {
			c.release()
		}
	}
}

// gather takes first and every call already queued (waiting up to Linger
// for more), up to maxRoundBytes.
func (w *Writer) gather(first *call) []*call {
	var round []*call
	size := 0
	add := func(c *call) {
		if err := c.ctx.Err(); err != nil {
			for i := range c.errs {
				c.errs[i] = err
			}
			c.release() // its caller is gone: send nothing for it
			return
		}
		round = append(round, c)
		size += callBytes(c)
	}
	add(first)
	var linger <-chan time.Time
	if w.opts.Linger > 0 {
		t := time.NewTimer(w.opts.Linger)
		defer t.Stop()
		linger = t.C
	}
	for size < maxRoundBytes {
		select {
		case c := <-w.calls:
			add(c)
			continue
		default:
		}
		if linger == nil {
			break
		}
		select {
		case c := <-w.calls:
			add(c)
			continue
		case <-linger:
		}
		break
	}
	return round
}

func (w *Writer) failQueued() {
	for {
		select {
		case c := <-w.calls:
			for i := range c.errs {
				c.errs[i] = ErrClosed
			}
			c.release()
		default:
			return
		}
	}
}

func callBytes(c *call) int {
	n := 0
	for _, m := range c.msgs {
		n += recordSize(m)
	}
	return n
}

// recordSize estimates the bytes a record takes in a record batch.
func recordSize(m kafka.Message) int {
	n := len(m.Key) + len(m.Value) + 24
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value) + 4
	}
	return n
}

// rec is one message of a round, with where it goes.
type rec struct {
	c *call
	i int
}

type partKey struct {
	topic string
	part  int
}

// send writes a round: each message gets its partition, a partition's
// records keep their order, and failed partitions are retried with backoff
// up to MaxAttempts within Timeout. Every message's error is set (nil when
// written); a call is released as soon as all of its records are settled,
// so a partition that keeps failing holds up only the callers with records
// on it.
func (w *Writer) send(ctx context.Context, round []*call) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	topics := map[string]bool{}
	for _, c := range round {
		for _, m := range c.msgs {
			topics[m.Topic] = true
		}
	}
	// A round whose callers have all given up ends at once.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for _, c := range round {
			select {
			case <-c.ctx.Done():
			case <-ctx.Done():
				return
			}
		}
		stop()
	}()
	for attempt := 0; attempt < w.opts.MaxAttempts; attempt++ {
		if attempt > 0 && !w.sleep(ctx, attempt) {
			break
		}
		_ = w.refreshMetadata(ctx, topics, attempt > 0) // what failed is in metaErrs
		if w.knows(topics) {
			break
		}
	}
	why := w.whyUnknown(ctx, topics)
	pending := map[partKey][]rec{}
	var order []partKey
	balancer := kafka.Murmur2Balancer{}
	for _, c := range round {
		for i, m := range c.msgs {
			tm, ok := w.meta[m.Topic]
			if !ok || len(tm.partitions) == 0 {
				cause := why[m.Topic]
				if cause == nil {
					cause = w.metaErrs[m.Topic]
				}
				if cause == nil {
					cause = errors.New("the brokers list no partitions for it")
				}
				c.errs[i] = fmt.Errorf("topic %q: partitions unknown: %w", m.Topic, cause)
				continue
			}
			k := partKey{m.Topic, balancer.Balance(m, tm.partitions...)}
			if _, seen := pending[k]; !seen {
				order = append(order, k)
			}
			pending[k] = append(pending[k], rec{c: c, i: i})
		}
	}
	releaseSettled(round, pending)
	last := map[partKey]error{}
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt > 0 {
			if attempt >= w.opts.MaxAttempts || !w.sleep(ctx, attempt) {
				break
			}
			w.retries.Add(1)
			dropAbandoned(pending)
			if w.refreshMetadata(ctx, topics, true) != nil && !w.knows(topics) {
				continue
			}
		}
		failed := w.attempt(ctx, pending, order)
		maps.Copy(last, failed)
		for k, recs := range pending {
			switch {
			case failed[k] == nil && len(recs) == 0:
				delete(pending, k)
			case failed[k] != nil && !retriable(failed[k]):
				fail(recs, failed[k])
				delete(pending, k)
			}
		}
		releaseSettled(round, pending)
	}
	for k, recs := range pending {
		err := last[k]
		if err == nil {
			err = ctx.Err()
		}
		fail(recs, fmt.Errorf("partition %s/%d: gave up: %w", k.topic, k.part, err))
	}
}

// knows reports whether every topic has partitions in the cache.
func (w *Writer) knows(topics map[string]bool) bool {
	for t := range topics {
		if len(w.meta[t].partitions) == 0 {
			return false
		}
	}
	return true
}

// releaseSettled releases the calls with no record left in pending.
func releaseSettled(round []*call, pending map[partKey][]rec) {
	waiting := map[*call]bool{}
	for _, recs := range pending {
		for _, r := range recs {
			waiting[r.c] = true
		}
	}
	for _, c := range round {
		if !waiting[c] {
			c.release()
		}
	}
}

// dropAbandoned removes from pending the records of callers that gave up,
// so a retry never lands records whose caller (a relay that rolled back)
// may be publishing them again.
func dropAbandoned(pending map[partKey][]rec) {
	for k, recs := range pending {
		kept := recs[:0:0]
		for _, r := range recs {
			if err := r.c.ctx.Err(); err != nil {
				r.c.errs[r.i] = err
				continue
			}
			kept = append(kept, r)
		}
		pending[k] = kept
	}
}

func fail(recs []rec, err error) {
	for _, r := range recs {
		r.c.errs[r.i] = err
	}
}

// attempt sends every pending partition once, one request per leader at a
// time, leaders in parallel, drops what was written from pending and
// returns the error of each partition that still has records.
func (w *Writer) attempt(ctx context.Context, pending map[partKey][]rec, order []partKey) map[partKey]error {
	byLeader := map[int][]partKey{}
	for _, k := range order {
		if _, ok := pending[k]; ok {
			leader := w.meta[k.topic].leaders[k.part]
			byLeader[leader] = append(byLeader[leader], k)
		}
	}
	var mu sync.Mutex
	written := map[partKey]int{}
	failed := map[partKey]error{}
	var wg sync.WaitGroup
	for _, keys := range byLeader {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Waves: each request carries at most BatchBytes of every
			// partition; a partition that fails sends nothing more.
			for {
				mu.Lock()
				req, sent := w.wave(pending, keys, written, failed)
				mu.Unlock()
				if len(sent) == 0 {
					return
				}
				errs := w.guardedRoundTrip(ctx, req, sent)
				mu.Lock()
				for k, n := range sent {
					if errs[k] != nil {
						failed[k] = errs[k]
						w.errors.Add(1)
					} else {
						written[k] += n
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for k, n := range written {
		pending[k] = pending[k][n:]
	}
	return failed
}

// wave builds the next request of one leader: up to BatchBytes of each
// partition's records from next[k] on. It returns the request and how many
// records of each partition it carries.
func (w *Writer) wave(pending map[partKey][]rec, keys []partKey, next map[partKey]int, failed map[partKey]error) (*produceapi.Request, map[partKey]int) {
	req := &produceapi.Request{Acks: int16(kafka.RequireAll), Timeout: int32(requestTimeout / time.Millisecond)}
	sent := map[partKey]int{}
	topicIndex := map[string]int{}
	for _, k := range keys {
		if failed[k] != nil {
			continue
		}
		recs := pending[k][next[k]:]
		if len(recs) == 0 {
			continue
		}
		var records []kafka.Record
		var size int64
		for _, r := range recs {
			m := r.c.msgs[r.i]
			s := int64(recordSize(m))
			if len(records) > 0 && size+s > w.opts.BatchBytes {
				break
			}
			size += s
			records = append(records, kafka.Record{
				Time:    m.Time,
				Key:     protocolBytes(m.Key),
				Value:   protocolBytes(m.Value),
				Headers: m.Headers,
			})
		}
		ti, ok := topicIndex[k.topic]
		if !ok {
			ti = len(req.Topics)
			topicIndex[k.topic] = ti
			req.Topics = append(req.Topics, produceapi.RequestTopic{Topic: k.topic})
		}
		req.Topics[ti].Partitions = append(req.Topics[ti].Partitions, produceapi.RequestPartition{
			Partition: int32(k.part),
			RecordSet: protocol.RecordSet{Version: 2, Records: protocol.NewRecordReader(records...)},
		})
		sent[k] = len(records)
		w.messages.Add(int64(len(records)))
		w.bytes.Add(size)
	}
	return req, sent
}

func protocolBytes(b []byte) protocol.Bytes {
	if b == nil {
		return nil
	}
	return protocol.NewBytes(b)
}

// roundTrip sends one produce request and returns each partition's error.
func (w *Writer) roundTrip(ctx context.Context, req *produceapi.Request, sent map[partKey]int) map[partKey]error {
	w.writes.Add(1)
	errs := map[partKey]error{}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout+5*time.Second)
	defer cancel()
	res, err := w.transport().RoundTrip(rctx, w.addr, req)
	if err != nil {
		for k := range sent {
			errs[k] = fmt.Errorf("produce: %w", err)
		}
		return errs
	}
	got := map[partKey]bool{}
	for _, t := range res.(*produceapi.Response).Topics {
		for _, p := range t.Partitions {
			k := partKey{t.Topic, int(p.Partition)}
			got[k] = true
			if p.ErrorCode != 0 {
				e := kafka.Error(p.ErrorCode)
				if p.ErrorMessage != "" {
					errs[k] = fmt.Errorf("%w: %s", e, p.ErrorMessage)
				} else {
					errs[k] = e
				}
			}
		}
	}
	for k := range sent {
		if !got[k] {
			errs[k] = fmt.Errorf("produce: no answer for %s/%d", k.topic, k.part)
		}
	}
	return errs
}

// guardedRoundTrip is roundTrip with a panic (encoding a request or
// decoding an answer) turned into an error of every partition it carried:
// it runs on a goroutine of ours, where nobody else could recover it.
func (w *Writer) guardedRoundTrip(ctx context.Context, req *produceapi.Request, sent map[partKey]int) (errs map[partKey]error) {
	defer func() {
		if r := recover(); r != nil {
			err := fmt.Errorf("kafkawriter: panic in a produce request: %v\n%s", r, debug.Stack())
			errs = map[partKey]error{}
			for k := range sent {
				errs[k] = err
			}
		}
	}()
	return w.roundTrip(ctx, req, sent)
}

// guardedSend is send with a panic elsewhere in a round turned into the
// failure of every record of the round not already failed: what became of
// them is unknown, so their callers retry (the relay's rows stay, ingest
// answers 503), which is at-least-once as ever.
func (w *Writer) guardedSend(ctx context.Context, round []*call) {
	defer func() {
		if r := recover(); r != nil {
			err := fmt.Errorf("kafkawriter: panic in a produce round, outcome unknown: %v\n%s", r, debug.Stack())
			for _, c := range round {
				if c.released {
					continue // its caller may be reading errs already
				}
				for i := range c.errs {
					if c.errs[i] == nil {
						c.errs[i] = err
					}
				}
			}
		}
	}()
	w.send(ctx, round)
}

// retriable reports whether a partition's failure may pass: leader changes,
// too few replicas, timeouts and lost connections are; a record too large or
// an authorization failure is not.
func retriable(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary()
	}
	return true // transport errors: connection refused, reset, timeout
}

func (w *Writer) sleep(ctx context.Context, attempt int) bool {
	d := backoffMin << min(attempt-1, 4)
	d = min(d, backoffMax)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// refreshMetadata loads the partitions and leaders of topics missing from
// the cache, or of all of them when force is set or the cache is old.
func (w *Writer) refreshMetadata(ctx context.Context, topics map[string]bool, force bool) error {
	var want []string
	stale := force || time.Since(w.metaAt) > metadataTTL
	for t := range topics {
		if _, ok := w.meta[t]; !ok || stale {
			want = append(want, t)
		}
	}
	if len(want) == 0 {
		return nil
	}
	slices.Sort(want)
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if w.metaErrs == nil {
		w.metaErrs = map[string]error{}
	}
	res, err := w.client.Metadata(mctx, &kafka.MetadataRequest{Addr: w.addr, Topics: want})
	if err != nil {
		err = fmt.Errorf("kafka metadata: %w", err)
		for _, t := range want {
			w.metaErrs[t] = err
		}
		return err
	}
	if w.meta == nil {
		w.meta = map[string]topicMeta{}
	}
	var errs []error
	for _, t := range res.Topics {
		delete(w.metaErrs, t.Name)
		if t.Error != nil {
			w.metaErrs[t.Name] = t.Error
			errs = append(errs, fmt.Errorf("topic %q: %w", t.Name, t.Error))
			continue
		}
		tm := topicMeta{leaders: map[int]int{}}
		for _, p := range t.Partitions {
			tm.partitions = append(tm.partitions, p.ID)
			tm.leaders[p.ID] = p.Leader.ID
		}
		slices.Sort(tm.partitions)
		w.meta[t.Name] = tm
	}
	w.metaAt = time.Now()
	return errors.Join(errs...)
}

func (w *Writer) transport() kafka.RoundTripper {
	if w.opts.Transport == nil {
		return kafka.DefaultTransport
	}
	return w.opts.Transport
}

// whyUnknown asks a broker itself about the topics of a round that still
// have no partitions after its metadata retries, and returns the error it
// gives for each. kafka-go's transport answers metadata requests from its
// cache of the topics this client may describe, where a topic that does not
// exist and a topic this client may not see both read
// UNKNOWN_TOPIC_OR_PARTITION; a broker tells them apart
// (TOPIC_AUTHORIZATION_FAILED), so a caller can tell a missing topic from a
// missing ACL. The transport sends a metadata request to a broker only when
// it allows topic auto-creation, so this one does: with
// auto.create.topics.enable=false (txpipe's brokers) nothing is created; a
// broker that auto-creates topics creates this one, as the metadata
// request of a Java producer would. It returns nil when the broker cannot
// be asked (the round is over, or the request fails).
func (w *Writer) whyUnknown(ctx context.Context, topics map[string]bool) map[string]error {
	var unknown []string
	for t := range topics {
		if len(w.meta[t].partitions) == 0 {
			unknown = append(unknown, t)
		}
	}
	if len(unknown) == 0 || ctx.Err() != nil {
		return nil
	}
	slices.Sort(unknown)
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := w.transport().RoundTrip(mctx, w.addr, &metadataapi.Request{TopicNames: unknown, AllowAutoTopicCreation: true})
	if err != nil {
		return nil
	}
	md, ok := res.(*metadataapi.Response)
	if !ok {
		return nil
	}
	why := map[string]error{}
	for _, t := range md.Topics {
		if t.ErrorCode != 0 {
			why[t.Name] = fmt.Errorf("a broker says: %w", kafka.Error(t.ErrorCode))
		}
	}
	return why
}
