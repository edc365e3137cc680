package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// BenchmarkOutboxSteadyState writes outbox rows at a fixed rate, in small
// transactions (one command's three rows: its outcome event and two
// postings, with txpipe's headers), while a real relay publishes them to
// real Kafka, for a while per run, and reports every 10 s window: the p50
// and p99 of insert → Kafka acknowledgement, the rows written and
// published, the outbox's size (every slot, indexes and TOAST included),
// its dead and live tuples (pg_stat_user_tables), the slots truncated, and
// what one read of the relay costs (EXPLAIN ANALYZE of its query: shared
// buffers touched, milliseconds). Each run has its own database and topics.
// docs/outbox.md has its figures, and those of the candidates it was
// measured against (at commit a46d445, where they were switchable).
//
//	go test -run '^$' -bench BenchmarkOutboxSteadyState -benchtime 1x -timeout 0 ./outbox/
//
// Settings (environment):
//
//	TXPIPE_OUTBOX_BENCH_RATES      commands a second, comma-separated (1000)
//	TXPIPE_OUTBOX_BENCH_DURATION   per run (3m)
//	TXPIPE_OUTBOX_BENCH_ROUNDS     runs at each rate, interleaved (2)
//	TXPIPE_OUTBOX_BENCH_HOLD       1: a REPEATABLE READ transaction in the
//	                               database holds its snapshot for the whole run
//	                               (a report, a pg_dump, a replica's feedback)
func BenchmarkOutboxSteadyState(b *testing.B) {
	cfg := benchSettings(b)
	var results []*runResult
	for range b.N {
		for round := 1; round <= cfg.rounds; round++ {
			for _, rate := range cfg.rates {
				b.Run(fmt.Sprintf("rate=%d/round=%d", rate, round), func(b *testing.B) {
					res := runSteady(b, rate, cfg)
					res.print(os.Stdout)
					results = append(results, res)
				})
			}
		}
	}
	summarize(os.Stdout, results)
}

type benchConfig struct {
	rates    []int
	duration time.Duration
	rounds   int
	hold     bool
}

func benchSettings(b *testing.B) benchConfig {
	cfg := benchConfig{rates: []int{1000}, duration: 3 * time.Minute, rounds: 2}
	if v := os.Getenv("TXPIPE_OUTBOX_BENCH_RATES"); v != "" {
		cfg.rates = nil
		for _, s := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 {
				b.Fatalf("TXPIPE_OUTBOX_BENCH_RATES: %q is not a rate", s)
			}
			cfg.rates = append(cfg.rates, n)
		}
	}
	if v := os.Getenv("TXPIPE_OUTBOX_BENCH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 30*time.Second {
			b.Fatalf("TXPIPE_OUTBOX_BENCH_DURATION: %q is not a duration of 30s or more", v)
		}
		cfg.duration = d
	}
	if v := os.Getenv("TXPIPE_OUTBOX_BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("TXPIPE_OUTBOX_BENCH_ROUNDS: %q is not a count", v)
		}
		cfg.rounds = n
	}
	cfg.hold = os.Getenv("TXPIPE_OUTBOX_BENCH_HOLD") == "1"
	return cfg
}

// benchWindow is the reporting window.
const benchWindow = 10 * time.Second

type window struct {
	written, published int
	lat                []float64 // insert → acknowledgement, ms
	sizeBytes          int64
	dead, live         int64
	vacuums            int64
	truncations        float64
	readBuffers        int64
	readMS             float64
}

type runResult struct {
	rate      int
	windows   []*window
	dropped   int64
	drainedIn time.Duration
}

// latencies records, per window of its acknowledgement, how long each
// record took from its insert.
type latencies struct {
	pub   outbox.Publisher
	start time.Time
	mu    sync.Mutex
	res   *runResult
}

func (l *latencies) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	err := l.pub.WriteMessages(ctx, msgs...)
	now := time.Now()
	var werrs kafka.WriteErrors
	perRecord := errors.As(err, &werrs) && len(werrs) == len(msgs)
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, m := range msgs {
		if err != nil && (!perRecord || werrs[i] != nil) {
			continue
		}
		ns, perr := strconv.ParseInt(kafkatest.Header(m, "bench_ns"), 10, 64)
		if perr != nil {
			continue
		}
		w := l.res.at(now.Sub(l.start))
		w.published++
		w.lat = append(w.lat, float64(now.UnixNano()-ns)/1e6)
	}
	return err
}

func (r *runResult) at(d time.Duration) *window {
	i := max(0, int(d/benchWindow))
	for len(r.windows) <= i {
		r.windows = append(r.windows, &window{})
	}
	return r.windows[i]
}

// runSteady runs the outbox at rate commands a second for cfg.duration.
func runSteady(b *testing.B, rate int, cfg benchConfig) *runResult {
	db := pgtest.New(b)
	kc := kafkatest.New(b)
	topics := kc.Topics(b, 12)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writers := openPool(b, db.URL, 24)
	relayPool := openPool(b, db.URL, 10)
	if cfg.hold {
		holdSnapshot(b, ctx, db.URL)
	}

	res := &runResult{rate: rate}
	lat := &latencies{pub: kc.Writer(b), res: res}
	reg := prometheus.NewRegistry()
	relay, err := outbox.NewRelay(outbox.RelayOptions{Pool: relayPool, Publisher: lat, Registerer: reg,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	lat.start = start
	var wg sync.WaitGroup
	relayCtx, stopRelay := context.WithCancel(ctx)
	wg.Add(1)
	go func() { defer wg.Done(); _ = relay.Run(relayCtx) }()

	// The writers: a dispatcher hands out transactions at the rate; a
	// transaction the writers cannot start in time is dropped and counted.
	jobs := make(chan struct{}, 4096)
	var written atomic.Int64
	writeCtx, stopWriting := context.WithTimeout(ctx, cfg.duration)
	defer stopWriting()
	var ww sync.WaitGroup
	for range 16 {
		ww.Add(1)
		go func() {
			defer ww.Done()
			rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
			for range jobs {
				if err := writeCommand(writeCtx, writers, topics, rng); err == nil {
					written.Add(1)
				}
			}
		}()
	}
	var dropped atomic.Int64
	ww.Add(1)
	go func() {
		defer ww.Done()
		defer close(jobs)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		issued := 0
		for {
			select {
			case <-writeCtx.Done():
				return
			case now := <-t.C:
				due := int(float64(rate)*now.Sub(start).Seconds()) - issued
				for range due {
					select {
					case jobs <- struct{}{}:
					default:
						dropped.Add(1)
					}
				}
				issued += due
			}
		}
	}()

	// Samples at the end of every window.
	sample := func(w *window) {
		w.written = int(written.Swap(0))
		sampleTables(ctx, db.Pool, w)
		w.truncations = counterSum(reg, "txpipe_relay_outbox_truncations_total", "truncated")
		sampleRead(ctx, db.Pool, w)
	}
	tick := time.NewTicker(benchWindow)
	for i := 0; ; i++ {
		<-tick.C
		lat.mu.Lock()
		w := res.at(time.Duration(i)*benchWindow + benchWindow/2)
		lat.mu.Unlock()
		sample(w)
		if writeCtx.Err() != nil {
			break
		}
	}
	tick.Stop()
	ww.Wait()
	res.dropped = dropped.Load()

	// Drain: the relay publishes what is left.
	drainStart := time.Now()
	for time.Since(drainStart) < time.Minute {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err == nil && n == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.drainedIn = time.Since(drainStart)
	stopRelay()
	wg.Wait()
	return res
}

func openPool(b *testing.B, url string, conns int) *pgxpool.Pool {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	pc.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// holdSnapshot keeps a REPEATABLE READ transaction open on the database
// until the run ends: VACUUM may then remove no tuple deleted after it
// began.
func holdSnapshot(b *testing.B, ctx context.Context, url string) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ`); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT count(*) FROM relay_leases`); err != nil {
		b.Fatal(err)
	}
}

var accountsForBench = func() []string {
	ids := make([]string, 10000)
	for i := range ids {
		ids[i] = fmt.Sprintf("acct-%05d", i)
	}
	return ids
}()

// writeCommand writes one transfer's outbox rows in one transaction, as a
// worker applying one command would: its outcome event and its two
// postings.
func writeCommand(ctx context.Context, pool *pgxpool.Pool, topics kafkatest.Topics, rng *rand.Rand) error {
	from, to := accountsForBench[rng.IntN(len(accountsForBench))], accountsForBench[rng.IntN(len(accountsForBench))]
	now := time.Now()
	id := fmt.Sprintf("%08x-%04x-7%03x-8%03x-%012x", rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xfff, rng.Uint32()&0xfff, rng.Uint64()&0xffffffffffff)
	headers := func(kind, eventID string) map[string]string {
		return map[string]string{"event_id": eventID, "ce_specversion": "1.0", "ce_id": eventID, "ce_source": "txpipe/worker",
			"ce_type": kind, "ce_time": now.UTC().Format(time.RFC3339Nano), "content-type": "application/json",
			"bench_ns": strconv.FormatInt(now.UnixNano(), 10)}
	}
	amount := 1 + rng.IntN(100000)
	event, _ := json.Marshal(map[string]any{"event_id": id + "-e", "type": "transfer.applied", "command_id": id, "occurred_at": now,
		"data": map[string]any{"transfer_id": id, "from_account_id": from, "to_account_id": to, "amount": amount, "currency": "EUR",
			"fee": 0, "status": "applied", "metadata": map[string]string{"note": "steady state"}}})
	posting := func(account string, amt int, n string) []byte {
		v, _ := json.Marshal(map[string]any{"event_id": id + n, "type": "posting.created", "command_id": id, "occurred_at": now,
			"data": map[string]any{"account_id": account, "account_version": rng.IntN(1 << 20), "currency": "EUR", "amount": amt,
				"balance_after": rng.IntN(1 << 30), "digest": fmt.Sprintf("%016x%016x%016x%016x", rng.Uint64(), rng.Uint64(), rng.Uint64(), rng.Uint64())}})
		return v
	}
	msgs := []outbox.Message{
		{Topic: topics.Events, Key: []byte(from), Value: event, Headers: headers("transfer.applied", id+"-e"), AcceptedAt: now},
		{Topic: topics.Postings, Key: []byte(from), Value: posting(from, -amount, "-d"), Headers: headers("posting.created", id+"-d")},
		{Topic: topics.Postings, Key: []byte(to), Value: posting(to, amount, "-c"), Headers: headers("posting.created", id+"-c")},
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		outbox.Queue(b, msgs)
		return tx.SendBatch(ctx, b).Close()
	})
}

// sampleTables reads the outbox's size, tuples and vacuums, over every
// partition.
func sampleTables(ctx context.Context, pool *pgxpool.Pool, w *window) {
	_ = pool.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::int8,
		coalesce(sum(s.n_dead_tup), 0)::int8, coalesce(sum(s.n_live_tup), 0)::int8,
		coalesce(sum(s.autovacuum_count + s.vacuum_count), 0)::int8
		FROM (SELECT relid FROM pg_partition_tree('outbox') UNION SELECT 'outbox'::regclass) AS t
		LEFT JOIN pg_stat_user_tables AS s ON s.relid = t.relid`).
		Scan(&w.sizeBytes, &w.dead, &w.live, &w.vacuums)
}

// sampleRead runs the relay's read (all 32 shards, a full batch, without
// its row locks) under EXPLAIN ANALYZE and keeps the shared buffers it
// touched and its time.
func sampleRead(ctx context.Context, pool *pgxpool.Pool, w *window) {
	var plan []byte
	err := pool.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id, slot, shard, topic, key, value, headers, accepted_at, created_at
		FROM outbox WHERE shard = ANY($1) ORDER BY id LIMIT 500`, allShards()).Scan(&plan)
	if err != nil {
		return
	}
	var out []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		} `json:"Plan"`
		Execution float64 `json:"Execution Time"`
	}
	if json.Unmarshal(plan, &out) == nil && len(out) == 1 {
		w.readBuffers = out[0].Plan.Hit + out[0].Plan.Read
		w.readMS = out[0].Execution
	}

}

func allShards() []int16 {
	s := make([]int16, outbox.Shards)
	for i := range s {
		s[i] = int16(i)
	}
	return s
}

// counterSum is the value of name's series with the given label value.
func counterSum(reg *prometheus.Registry, name, label string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					v += m.GetCounter().GetValue()
				}
			}
		}
	}
	return v
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func (r *runResult) print(out io.Writer) {
	fmt.Fprintf(out, "\n== %d commands/s: %d transactions dropped (writers late), drained in %s\n",
		r.rate, r.dropped, r.drainedIn.Round(100*time.Millisecond))
	fmt.Fprintf(out, "%6s %8s %8s %9s %9s %9s %9s %9s %8s %7s %6s %8s %8s\n",
		"t(s)", "written", "publ", "p50(ms)", "p99(ms)", "max(ms)", "size(MB)", "dead", "live", "vacuums", "truncs", "read_buf", "read_ms")
	for i, w := range r.windows {
		slices.Sort(w.lat)
		fmt.Fprintf(out, "%6d %8d %8d %9.1f %9.1f %9.1f %9.1f %9d %8d %7d %6.0f %8d %8.2f\n",
			(i+1)*int(benchWindow/time.Second), w.written, w.published, percentile(w.lat, 0.5), percentile(w.lat, 0.99),
			percentile(w.lat, 1), float64(w.sizeBytes)/(1<<20), w.dead, w.live, w.vacuums, w.truncations, w.readBuffers, w.readMS)
	}
}

// stats are one run's figures, past its first window (warm-up).
type stats struct {
	p50, p99, medianWindowP99, worstWindowP99 float64
	sizeAt60, sizeEnd, maxSize                float64 // MB
	maxDead                                   int64
	medianReadBuffers, medianReadMS           float64
}

func (r *runResult) stats() stats {
	var all, p99s, bufs, ms []float64
	var s stats
	for i, w := range r.windows {
		if i == 0 {
			continue
		}
		if len(w.lat) > 0 {
			all = append(all, w.lat...)
			p99s = append(p99s, percentile(w.lat, 0.99))
		}
		if w.sizeBytes > 0 {
			mb := float64(w.sizeBytes) / (1 << 20)
			s.sizeEnd = mb
			s.maxSize = max(s.maxSize, mb)
			if i == 5 {
				s.sizeAt60 = mb
			}
			bufs = append(bufs, float64(w.readBuffers))
			ms = append(ms, w.readMS)
		}
		s.maxDead = max(s.maxDead, w.dead)
	}
	slices.Sort(all)
	slices.Sort(p99s)
	slices.Sort(bufs)
	slices.Sort(ms)
	s.p50, s.p99 = percentile(all, 0.5), percentile(all, 0.99)
	s.medianWindowP99, s.worstWindowP99 = percentile(p99s, 0.5), percentile(p99s, 1)
	s.medianReadBuffers, s.medianReadMS = percentile(bufs, 0.5), percentile(ms, 0.5)
	return s
}

func median(v []float64) float64 {
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// summarize prints, per rate, the median over its runs of each figure.
func summarize(out io.Writer, results []*runResult) {
	byRate := make(map[int][]stats)
	var rates []int
	for _, r := range results {
		if _, ok := byRate[r.rate]; !ok {
			rates = append(rates, r.rate)
		}
		byRate[r.rate] = append(byRate[r.rate], r.stats())
	}
	fields := []struct {
		name string
		get  func(stats) float64
	}{
		{"p50 ms", func(s stats) float64 { return s.p50 }},
		{"p99 ms", func(s stats) float64 { return s.p99 }},
		{"median window p99 ms", func(s stats) float64 { return s.medianWindowP99 }},
		{"worst window p99 ms", func(s stats) float64 { return s.worstWindowP99 }},
		{"size at 60 s MB", func(s stats) float64 { return s.sizeAt60 }},
		{"size at end MB", func(s stats) float64 { return s.sizeEnd }},
		{"largest size MB", func(s stats) float64 { return s.maxSize }},
		{"most dead tuples", func(s stats) float64 { return float64(s.maxDead) }},
		{"read: buffers (median)", func(s stats) float64 { return s.medianReadBuffers }},
		{"read: ms (median)", func(s stats) float64 { return s.medianReadMS }},
	}
	fmt.Fprintf(out, "\n== Summary: median over runs\n")
	for _, rate := range rates {
		runs := byRate[rate]
		fmt.Fprintf(out, "%d commands/s (%d runs):", rate, len(runs))
		for _, f := range fields {
			var v []float64
			for _, s := range runs {
				v = append(v, f.get(s))
			}
			fmt.Fprintf(out, " %s %.1f;", f.name, median(v))
		}
		fmt.Fprintln(out)
	}
}
