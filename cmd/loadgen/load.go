package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/kafkafetch"
	"github.com/txpipe/txpipe/internal/kafkawriter"
)

// workload describes the commands to send.
type workload struct {
	accounts int     // accounts acct-0 … acct-N-1, opened and funded beforehand
	hot      int     // size of the hot set
	skew     float64 // share of transfers between hot accounts
	seed     uint64
	// splits makes every command a transaction of three legs: two payments
	// and a commission to platformAccount (a marketplace split), where the
	// payer's fee plan is charged on each (throughput sets the plans).
	splits bool
}

// platformAccount receives the splits' commissions and fees.
const platformAccount = "platform"

// accountID names account i.
func accountID(i int) string { return fmt.Sprintf("acct-%d", i) }

// transfers returns n transfers of 1 to 100 EUR cents. With skew, that
// share of them moves money between two accounts of the hot set.
func (w workload) transfers(n int) []domain.Command {
	next := w.stream()
	cmds := make([]domain.Command, n)
	for i := range cmds {
		cmds[i] = next()
	}
	return cmds
}

// stream returns the workload's transfers one at a time, the same ones
// transfers returns: a long run need not hold them all. It is not safe for
// concurrent use.
func (w workload) stream() func() domain.Command {
	r := rand.New(rand.NewPCG(w.seed, 7))
	pick := func() (int, int) {
		size := w.accounts
		if w.skew > 0 && r.Float64() < w.skew {
			size = min(w.hot, w.accounts)
		}
		a := r.IntN(size)
		b := r.IntN(size - 1)
		if b >= a {
			b++
		}
		return a, b
	}
	return func() domain.Command {
		a, b := pick()
		if w.splits {
			_, c := pick()
			if c == a {
				c = b
			}
			return domain.Command{CommandID: uuid.Must(uuid.NewV7()).String(), Type: domain.TypeTransaction, Legs: []domain.Leg{
				{FromAccountID: accountID(a), ToAccountID: accountID(b), Amount: 1 + r.Int64N(100), Currency: "EUR"},
				{FromAccountID: accountID(a), ToAccountID: accountID(c), Amount: 1 + r.Int64N(100), Currency: "EUR"},
				{FromAccountID: accountID(a), ToAccountID: platformAccount, Amount: 1 + r.Int64N(10), Currency: "EUR"}}}
		}
		return domain.Command{CommandID: uuid.Must(uuid.NewV7()).String(), Type: domain.TypeTransfer, FromAccountID: accountID(a),
			ToAccountID: accountID(b), Amount: 1 + r.Int64N(100), Currency: "EUR"}
	}
}

// latencies collects end-to-end latencies: from a command's intended send
// time to its outcome event being consumed.
type latencies struct {
	mu       sync.Mutex
	intended map[string]time.Time
	chunks   [][]sample // full chunks of sampleChunk samples, then the one filling
	accepted atomic.Int64
	failed   atomic.Int64
}

type sample struct {
	sentAt  time.Duration // intended send time, as clockBase plus this
	latency time.Duration
	parts   stages // where latency went, when the outcome says (zero otherwise)
}

// clockBase is what samples count their send times from, so that a
// sample holds no pointer (a time.Time holds one) and the collector does
// not mark the millions of them a soak keeps (see sampleChunk for the
// stalls that did).
var clockBase = time.Now()

func newSample(sent time.Time, latency time.Duration, parts stages) sample {
	return sample{sentAt: sent.Sub(clockBase), latency: latency, parts: parts}
}

// sent is the sample's intended send time.
func (s sample) sent() time.Time { return clockBase.Add(s.sentAt) }

// stages split a command's latency by the times its records carry, all
// from this machine's clock: from the intended send time to the command
// record's timestamp (loadgen, HTTP, ingest, the produce), from there to
// the batch's decision time (the outcome's occurred_at: the worker's fetch
// and batching), from there to the outcome record's timestamp (the
// batch's write and commit, the relay's read and produce), and from there
// to loadgen consuming it.
type stages struct {
	IngestMs  float64 `json:"ingest_ms"`
	WorkerMs  float64 `json:"to_worker_ms"`
	RelayMs   float64 `json:"to_relay_ms"`
	ConsumeMs float64 `json:"to_loadgen_ms"`
}

// split is at's latency to now split at accepted (the command record's
// time), decided and published; zero when any of them is unknown.
func split(at, accepted, decided, published, now time.Time) stages {
	if accepted.IsZero() || decided.IsZero() || published.IsZero() {
		return stages{}
	}
	return stages{IngestMs: ms(accepted.Sub(at)), WorkerMs: ms(decided.Sub(accepted)), RelayMs: ms(published.Sub(decided)), ConsumeMs: ms(now.Sub(published))}
}

func newLatencies() *latencies { return &latencies{intended: make(map[string]time.Time)} }

// sampleChunk is how many samples a chunk holds (3 MiB of them). Samples
// are kept in chunks that never move, not in one slice: a slice that grows
// copies everything so far while holding the lock the sender and the
// outcome reader need, a stall at the same offsets of every run (537, 671,
// 839 … s at 1 000/s), and reserving one up front needs the run's length
// and a bound. A new chunk is one allocation of 3 MiB, every 65 s at
// 1 000/s.
const sampleChunk = 1 << 16

// add appends s under l.mu.
func (l *latencies) add(s sample) {
	if n := len(l.chunks); n == 0 || len(l.chunks[n-1]) == sampleChunk {
		l.chunks = append(l.chunks, make([]sample, 0, sampleChunk))
	}
	last := &l.chunks[len(l.chunks)-1]
	*last = append(*last, s)
}

func (l *latencies) expect(id string, at time.Time) {
	l.mu.Lock()
	l.intended[id] = at
	l.mu.Unlock()
}

// observe records id's outcome consumed at now; accepted, decided and
// published, when known, split its latency (stages).
func (l *latencies) observe(id string, now, accepted, decided, published time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if at, ok := l.intended[id]; ok {
		delete(l.intended, id)
		l.add(newSample(at, now.Sub(at), split(at, accepted, decided, published, now)))
	}
}

// forget drops the commands that were never accepted.
func (l *latencies) forget(cmds []domain.Command) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cmds {
		delete(l.intended, c.CommandID)
	}
}

// snapshot returns a copy of the samples so far.
func (l *latencies) snapshot() []sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	ss := make([]sample, 0, l.count())
	for _, c := range l.chunks {
		ss = append(ss, c...)
	}
	return ss
}

func (l *latencies) done() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count()
}

// count is how many samples l holds, under l.mu.
func (l *latencies) count() int {
	if len(l.chunks) == 0 {
		return 0
	}
	return (len(l.chunks)-1)*sampleChunk + len(l.chunks[len(l.chunks)-1])
}

// percentile returns the q-quantile (0 < q ≤ 1) of the latencies.
func percentile(ss []sample, q float64) time.Duration {
	if len(ss) == 0 {
		return 0
	}
	d := make([]time.Duration, len(ss))
	for i, s := range ss {
		d[i] = s.latency
	}
	slices.Sort(d)
	i := int(q*float64(len(d))+0.5) - 1
	return d[max(0, min(i, len(d)-1))]
}

// watchOutcomes consumes the events topic from its current end and records
// every outcome's arrival, until ctx ends. It fetches every partition in one
// request, so the measuring costs the broker little.
func watchOutcomes(ctx context.Context, brokers []string, client *kafka.Client, topic string, l *latencies) (func(), error) {
	var f *kafkafetch.Fetcher
	var pos map[int]int64
	// A topic created a moment ago may have no leaders yet, on a busy
	// broker for a while; a new fetcher forgets the leaders it saw.
	for attempt := 1; ; attempt++ {
		var err error
		f = kafkafetch.New(brokers, client.Transport, topic)
		if pos, err = topicEnd(ctx, client, f, topic); err == nil {
			break
		} else if attempt == 60 || ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			got, err := f.Fetch(ctx, pos, 100*time.Millisecond, 1)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			now := time.Now()
			for _, msgs := range got.Msgs {
				for _, m := range msgs {
					var ev struct {
						CommandID  string    `json:"command_id"`
						OccurredAt time.Time `json:"occurred_at"`
						Data       struct {
							AcceptedAt time.Time `json:"accepted_at"`
						} `json:"data"`
					}
					if json.Unmarshal(m.Value, &ev) == nil {
						l.observe(ev.CommandID, now, ev.Data.AcceptedAt, ev.OccurredAt, m.Time)
					}
				}
			}
			maps.Copy(pos, got.Next) // past transaction markers too
		}
	}()
	return func() { cancel(); <-done }, nil
}

// topicEnd is the end offset of every partition of topic.
func topicEnd(ctx context.Context, client *kafka.Client, f *kafkafetch.Fetcher, topic string) (map[int]int64, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 || len(md.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("read metadata of %s: %v", topic, err)
	}
	var parts []int
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
	}
	_, pos, err := f.Bounds(ctx, parts)
	return pos, err
}

// sender sends one group of commands and reports whether they were
// accepted.
type sender func(ctx context.Context, cmds []domain.Command) error

// httpSender posts single commands, or batches when len(cmds) > 1.
func httpSender(base, key string) sender {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}}
	return func(ctx context.Context, cmds []domain.Command) error {
		var body []byte
		path := "/v1/commands"
		if len(cmds) == 1 {
			body = cmds[0].Encode()
		} else {
			raw := make([]json.RawMessage, len(cmds))
			for i, c := range cmds {
				raw[i] = c.Encode()
			}
			body, _ = json.Marshal(map[string]any{"commands": raw})
			path += "/batch"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusAccepted {
			return &statusError{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		}
		return nil
	}
}

// statusError is an answer other than 202 Accepted.
type statusError struct {
	status     int
	retryAfter string // the Retry-After header, if any
}

func (e *statusError) Error() string { return fmt.Sprintf("status %d", e.status) }

// retryAfter reads a Retry-After header: a number of seconds or an HTTP
// date (RFC 9110, 10.2.3), as a wait from now. ok is false when v is
// neither.
func retryAfter(v string, now time.Time) (wait time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, 1<<32)) * time.Second, true
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(0, at.Sub(now)), true
}

// retrier sends again what was refused with 429 Too Many Requests or 503
// Service Unavailable (both say when to retry; command_ids make a resent
// command or batch apply once), waiting what Retry-After asks (1 s when it
// says nothing readable, at most maxWait at a time), up to attempts sends
// in all. Any other error is returned at once.
type retrier struct {
	attempts int
	maxWait  time.Duration
	// sleep waits d or until ctx ends, and now tells the time (a test
	// records the waits and fixes the clock instead).
	sleep func(ctx context.Context, d time.Duration) error
	now   func() time.Time
}

func newRetrier() retrier {
	return retrier{attempts: 30, maxWait: 30 * time.Second, now: time.Now, sleep: func(ctx context.Context, d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}}
}

func (r retrier) wrap(send sender) sender {
	return func(ctx context.Context, cmds []domain.Command) error {
		for attempt := 1; ; attempt++ {
			err := send(ctx, cmds)
			var se *statusError
			if err == nil || !errors.As(err, &se) || (se.status != http.StatusTooManyRequests && se.status != http.StatusServiceUnavailable) {
				return err
			}
			if attempt >= r.attempts {
				return fmt.Errorf("still refused after %d attempts: %w", attempt, err)
			}
			wait, ok := retryAfter(se.retryAfter, r.now())
			if !ok {
				wait = time.Second
			}
			if err := r.sleep(ctx, min(wait, r.maxWait)); err != nil {
				return err
			}
		}
	}
}

// kafkaSender produces straight to the commands topic, keyed as ingest does.
func kafkaSender(w *kafkawriter.Writer, topic string) sender {
	return func(ctx context.Context, cmds []domain.Command) error {
		msgs := make([]kafka.Message, len(cmds))
		for i, c := range cmds {
			msgs[i] = kafka.Message{Topic: topic, Key: []byte(c.DebitAccount()), Value: c.Encode()}
		}
		return w.WriteMessages(ctx, msgs...)
	}
}

// openLoop sends n commands from next in groups of group at rate commands
// per second, each group at its intended time whatever happened to the ones
// before, so a stall shows as latency instead of slowing the load. At most
// 1024 groups are outstanding; beyond that, sending waits, but latency
// still counts from the intended time. A failed group is forgotten.
func openLoop(ctx context.Context, n int, next func() domain.Command, group int, rate float64, send sender, l *latencies, progress func()) {
	start := time.Now()
	sem := make(chan struct{}, 1024)
	var wg sync.WaitGroup
	for i := 0; i < n; i += group {
		g := make([]domain.Command, min(group, n-i))
		for j := range g {
			g[j] = next()
		}
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return
			case <-time.After(d):
			}
		}
		for _, c := range g {
			l.expect(c.CommandID, at)
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := send(ctx, g); err != nil {
				l.failed.Add(int64(len(g)))
				l.forget(g)
				return
			}
			l.accepted.Add(int64(len(g)))
		})
		if progress != nil {
			progress()
		}
	}
	wg.Wait()
}
