package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkawriter"
)

// benchOptions configure "loadgen bench".
type benchOptions struct {
	txpipe   string
	brokers  []string
	adminURL string
	out      string
	quick    bool
	accounts int
	rate     float64
	// workerArgs are extra flags for the worker of the txpipe scenarios,
	// for tuning experiments.
	workerArgs []string
	// only, when set, runs just the scenarios whose names start with it.
	only string
	// rounds is how many times each throughput scenario runs.
	rounds int
	// latency, when set, is how long the latency run sends.
	latency time.Duration
	log     io.Writer
}

// result is one scenario's figures.
type result struct {
	Scenario string  `json:"scenario"`
	Commands int     `json:"commands"`
	Seconds  float64 `json:"seconds"`
	// AppliedSeconds is when the workers had decided every command (the
	// relay may still be publishing).
	AppliedSeconds float64 `json:"applied_seconds,omitempty"`
	PerSecond      float64 `json:"per_second"`
	P50ms          float64 `json:"p50_ms,omitempty"`
	P99ms          float64 `json:"p99_ms,omitempty"`
	P999ms         float64 `json:"p999_ms,omitempty"`
	WorkerRSSMiB   float64 `json:"worker_peak_rss_mib,omitempty"`
	RelayRSSMiB    float64 `json:"relay_peak_rss_mib,omitempty"`
	IngestRSSMiB   float64 `json:"ingest_peak_rss_mib,omitempty"`
	Note           string  `json:"note,omitempty"`
}

type report struct {
	Date    time.Time          `json:"date"`
	Quick   bool               `json:"quick"`
	Results []result           `json:"results"`
	Ratios  map[string]float64 `json:"ratios"`
}

func runBench(ctx context.Context, o benchOptions) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	n := map[string]int{"naive": 10000, "txpipe": 100000, "pg": 100000, "kafka": 100000}
	latencySeconds := 60.0
	if o.quick {
		n = map[string]int{"naive": 3000, "txpipe": 20000, "pg": 20000, "kafka": 20000}
		latencySeconds = 10
	}
	if o.latency > 0 {
		latencySeconds = o.latency.Seconds()
	}
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(o.brokers...), Timeout: 10 * time.Second, Transport: transport}
	uniform := workload{accounts: o.accounts, seed: 1}
	skewed := workload{accounts: o.accounts, hot: 10, skew: 0.5, seed: 2}
	rep := report{Date: time.Now().UTC(), Quick: o.quick, Ratios: map[string]float64{}}
	var naive, txp, skew, scaled, pgc, kfc, lat result
	steps := []struct {
		name string
		dst  *result
		f    func() (result, error)
	}{
		{"naive (batch size 1)", &naive, func() (result, error) {
			// One transaction per command, one transaction stream per partition:
			// the textbook pipeline, and the strongest batch-size-1 baseline.
			return throughput(ctx, o, client, "naive", n["naive"], uniform, 1, 1, "--batch-size", "1", "--lanes", "12")
		}},
		{"txpipe (defaults)", &txp, func() (result, error) {
			return throughput(ctx, o, client, "txpipe", n["txpipe"], uniform, 1, 1, o.workerArgs...)
		}},
		{"txpipe skewed (half on 10 hot accounts)", &skew, func() (result, error) {
			return throughput(ctx, o, client, "txpipe-skewed", n["txpipe"], skewed, 1, 1, o.workerArgs...)
		}},
		{"txpipe scaled out (3 workers, 2 relays)", &scaled, func() (result, error) {
			return throughput(ctx, o, client, "txpipe-3w2r", n["txpipe"], uniform, 3, 2, o.workerArgs...)
		}},
		{"PostgreSQL ceiling", &pgc, func() (result, error) { return pgCeiling(ctx, o, client, n["pg"], uniform) }},
		{"Kafka ceiling", &kfc, func() (result, error) { return kafkaCeiling(ctx, o, client, transport, n["kafka"], uniform) }},
	}
	// The machine is shared and noisy: every throughput scenario runs
	// o.rounds times, interleaved, and the median run counts.
	runs := make([][]result, len(steps))
	for round := range o.rounds {
		for i, st := range steps {
			if o.only != "" && !strings.HasPrefix(st.name, o.only) {
				continue
			}
			fmt.Fprintf(o.log, "bench: round %d/%d: %s …\n", round+1, o.rounds, st.name)
			r, err := st.f()
			if err != nil {
				return fmt.Errorf("%s: %w", st.name, err)
			}
			fmt.Fprintf(o.log, "bench: %s: %d commands in %.1f s = %.0f/s\n", st.name, r.Commands, r.Seconds, r.PerSecond)
			runs[i] = append(runs[i], r)
		}
	}
	for i, st := range steps {
		if len(runs[i]) == 0 {
			continue
		}
		*st.dst = median(runs[i])
		rep.Results = append(rep.Results, *st.dst)
	}
	latName := fmt.Sprintf("latency at %.0f/s over HTTP", o.rate)
	if o.only == "" || strings.HasPrefix(latName, o.only) {
		fmt.Fprintf(o.log, "bench: %s …\n", latName)
		r, err := latencyRun(ctx, o, client, latencySeconds, uniform)
		if err != nil {
			return fmt.Errorf("%s: %w", latName, err)
		}
		lat = r
		rep.Results = append(rep.Results, r)
	}
	if o.only != "" {
		printTable(o.log, rep.Results)
		return nil
	}
	rep.Ratios["txpipe/naive"] = txp.PerSecond / naive.PerSecond
	rep.Ratios["txpipe/pg_ceiling"] = txp.PerSecond / pgc.PerSecond
	rep.Ratios["skewed/uniform"] = skew.PerSecond / txp.PerSecond
	rep.Ratios["scaled/one_worker"] = scaled.PerSecond / txp.PerSecond
	rep.Ratios["p99_ms_at_1000"] = lat.P99ms
	if err := writeReport(o.out, rep); err != nil {
		return err
	}
	printTable(o.log, rep.Results)
	fmt.Fprintf(o.log, "results: %s\n", o.out)
	fmt.Printf("ratios: txpipe/naive=%.2f txpipe/pg_ceiling=%.2f skewed/uniform=%.2f scaled/one_worker=%.2f p99_ms_at_1000=%.1f\n",
		rep.Ratios["txpipe/naive"], rep.Ratios["txpipe/pg_ceiling"], rep.Ratios["skewed/uniform"], rep.Ratios["scaled/one_worker"], rep.Ratios["p99_ms_at_1000"])
	return nil
}

// throughput preloads nothing: it starts a worker and a relay as separate
// processes, produces n transfers straight to the commands topic as fast
// as Kafka takes them, and measures until the last outcome event is on the
// events topic — end to end from the first produce.
func throughput(ctx context.Context, o benchOptions, client *kafka.Client, name string, n int, wl workload, workers, relays int, workerArgs ...string) (result, error) {
	s, err := newStack(ctx, name, o.txpipe, o.adminURL, o.brokers, o.out, o.accounts)
	if err != nil {
		return result{}, err
	}
	defer s.close(context.WithoutCancel(ctx), client)
	var worker, relay *proc
	for i := range workers {
		p, err := s.start(ctx, "worker", workerArgs...)
		if err != nil {
			return result{}, err
		}
		if i == 0 {
			worker = p // RSS is reported for the first of each role
		}
	}
	for i := range relays {
		p, err := s.start(ctx, "relay")
		if err != nil {
			return result{}, err
		}
		if i == 0 {
			relay = p
		}
	}
	cmds := wl.transfers(n)
	// A transport of its own: a shared one caches metadata from before
	// this scenario's topics existed.
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	sc := &kafka.Client{Addr: kafka.TCP(o.brokers...), Timeout: 10 * time.Second, Transport: tr}
	w := kafkawriter.New(kafkawriter.Options{Brokers: o.brokers, Transport: tr})
	defer w.Close()
	send := kafkaSender(w, s.topics["commands"])
	start := time.Now()
	for i := 0; i < len(cmds); i += 1000 {
		if err := send(ctx, cmds[i:min(i+1000, len(cmds))]); err != nil {
			return result{}, fmt.Errorf("produce: %w", err)
		}
	}
	applied := make(chan float64, 1)
	go func() {
		// The stored offsets say how many records the workers applied;
		// that table has a row per partition, so polling it costs nothing.
		for {
			var c int64
			if err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&c); err != nil || c >= int64(n) {
				applied <- time.Since(start).Seconds()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if err := waitFor(ctx, sc, s.topics["events"], int64(n), o.log); err != nil {
		return result{}, err
	}
	secs := time.Since(start).Seconds()
	r := result{Scenario: name, Commands: n, Seconds: secs, PerSecond: float64(n) / secs, AppliedSeconds: <-applied,
		WorkerRSSMiB: mib(worker.peakRSS()), RelayRSSMiB: mib(relay.peakRSS())}
	var notes []string
	if workers > 1 || relays > 1 {
		notes = append(notes, fmt.Sprintf("%d workers, %d relays", workers, relays))
	}
	if len(workerArgs) > 0 {
		notes = append(notes, strings.Join(workerArgs, " "))
	}
	r.Note = strings.Join(notes, "; ")
	return r, nil
}

// waitFor waits until topic holds n records, printing progress every 5 s.
func waitFor(ctx context.Context, client *kafka.Client, topic string, n int64, log io.Writer) error {
	last := time.Now()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		got, err := kafkaadmin.Count(ctx, client, topic)
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		if time.Since(last) > 5*time.Second {
			fmt.Fprintf(log, "bench:   %d/%d outcomes\n", got, n)
			last = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d outcomes after 10 minutes", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pgCeiling writes the ledger rows of n transfers — two entries, a transfer
// row, a processed-command row and the two balance updates each — straight
// through pgx, set-based in transactions of 1000 transfers, on one
// connection: no Kafka, no rules, no outbox.
func pgCeiling(ctx context.Context, o benchOptions, client *kafka.Client, n int, wl workload) (result, error) {
	s, err := newStack(ctx, "pg-ceiling", o.txpipe, o.adminURL, o.brokers, o.out, o.accounts)
	if err != nil {
		return result{}, err
	}
	defer s.close(context.WithoutCancel(ctx), client)
	cmds := wl.transfers(n)
	version := make(map[string]int64)
	balance := make(map[string]int64)
	for i := range o.accounts {
		balance[accountID(i)] = 1000000000
	}
	start := time.Now()
	for i := 0; i < n; i += 1000 {
		chunk := cmds[i:min(i+1000, n)]
		now := time.Now()
		var entries [][]any
		delta := make(map[string]int64)
		ids, froms, tos := make([]string, len(chunk)), make([]string, len(chunk)), make([]string, len(chunk))
		amounts := make([]int64, len(chunk))
		for j, c := range chunk {
			ids[j], froms[j], tos[j], amounts[j] = c.CommandID, c.FromAccountID, c.ToAccountID, c.Amount
			for _, leg := range []struct {
				acct string
				amt  int64
			}{{c.FromAccountID, -c.Amount}, {c.ToAccountID, c.Amount}} {
				version[leg.acct]++
				balance[leg.acct] += leg.amt
				delta[leg.acct] += leg.amt
				entries = append(entries, []any{leg.acct, version[leg.acct], c.CommandID, "transfer", "EUR", leg.amt, balance[leg.acct], now})
			}
		}
		accts, deltas, versions := make([]string, 0, len(delta)), make([]int64, 0, len(delta)), make([]int64, 0, len(delta))
		for a, d := range delta {
			accts, deltas, versions = append(accts, a), append(deltas, d), append(versions, version[a])
		}
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue(`UPDATE accounts a SET balance = a.balance + u.d, version = u.v, updated_at = now()
				FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u (id, d, v) WHERE a.account_id = u.id`, accts, deltas, versions)
			b.Queue(`INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount, status, created_at, updated_at)
				SELECT id::uuid, 'transfer', f, t, 'EUR', a, 'posted', now(), now() FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[]) AS u (id, f, t, a)`,
				ids, froms, tos, amounts)
			b.Queue(`INSERT INTO processed_commands (command_id, type, fingerprint, status, debit_account_id, processed_at, source_partition, source_offset)
				SELECT id::uuid, 'transfer', '\x00', 'applied', f, now(), 0, 0 FROM unnest($1::text[], $2::text[]) AS u (id, f)`, ids, froms)
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"entries"},
				[]string{"account_id", "account_version", "command_id", "command_type", "currency", "amount", "balance_after", "created_at"},
				pgx.CopyFromRows(entries))
			return err
		})
		if err != nil {
			return result{}, fmt.Errorf("write chunk: %w", err)
		}
	}
	secs := time.Since(start).Seconds()
	return result{Scenario: "pg-ceiling", Commands: n, Seconds: secs, PerSecond: float64(n) / secs,
		Note: "set-based pgx, 1000 transfers per transaction, one connection"}, nil
}

// kafkaCeiling produces n command records with txpipe's writer settings
// (acks=all) and consumes them with kafka-go partition readers, at the same
// time: no database.
func kafkaCeiling(ctx context.Context, o benchOptions, client *kafka.Client, transport *kafka.Transport, n int, wl workload) (result, error) {
	topic := fmt.Sprintf("bench.kafka-ceiling.%d", time.Now().UnixNano())
	if err := kafkaadmin.EnsureTopics(ctx, client, []kafkaadmin.Topic{{Name: topic, Partitions: 12, ReplicationFactor: 1}}); err != nil {
		return result{}, err
	}
	defer client.DeleteTopics(context.WithoutCancel(ctx), &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	cmds := wl.transfers(n)
	var consumed atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for p := range 12 {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: o.brokers, Topic: topic, Partition: p, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 50 * time.Millisecond})
		wg.Go(func() {
			defer r.Close()
			for {
				if _, err := r.ReadMessage(cctx); err != nil {
					return
				}
				consumed.Add(1)
			}
		})
	}
	w := kafkawriter.New(kafkawriter.Options{Brokers: o.brokers, Transport: transport})
	defer w.Close()
	send := kafkaSender(w, topic)
	start := time.Now()
	for i := 0; i < n; i += 1000 {
		if err := send(ctx, cmds[i:min(i+1000, n)]); err != nil {
			return result{}, err
		}
	}
	for consumed.Load() < int64(n) {
		if time.Since(start) > 5*time.Minute {
			return result{}, fmt.Errorf("consumed %d of %d", consumed.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	cancel()
	wg.Wait()
	return result{Scenario: "kafka-ceiling", Commands: n, Seconds: secs, PerSecond: float64(n) / secs,
		Note: "produce (acks=all) and consume concurrently, 12 partitions"}, nil
}

// latencyRun sends single-command HTTP requests at o.rate for seconds, open
// loop, to an ingest, a worker and a relay running as separate processes,
// and measures each command from its intended send time to its outcome
// event being consumed.
func latencyRun(ctx context.Context, o benchOptions, client *kafka.Client, seconds float64, wl workload) (result, error) {
	s, err := newStack(ctx, "latency", o.txpipe, o.adminURL, o.brokers, o.out, o.accounts)
	if err != nil {
		return result{}, err
	}
	defer s.close(context.WithoutCancel(ctx), client)
	ingest, err := s.start(ctx, "ingest")
	if err != nil {
		return result{}, err
	}
	worker, err := s.start(ctx, "worker")
	if err != nil {
		return result{}, err
	}
	relay, err := s.start(ctx, "relay")
	if err != nil {
		return result{}, err
	}
	tr := &kafka.Transport{} // fresh metadata: this scenario's topics are new
	defer tr.CloseIdleConnections()
	sc := &kafka.Client{Addr: kafka.TCP(o.brokers...), Timeout: 10 * time.Second, Transport: tr}
	l := newLatencies()
	stop, err := watchOutcomes(ctx, o.brokers, sc, s.topics["events"], l)
	if err != nil {
		return result{}, err
	}
	defer stop()
	// Warm up for 2 s (connections, pools, caches), unmeasured.
	warm := newLatencies()
	warmCmds := wl.transfers(int(2 * o.rate))
	openLoop(ctx, warmCmds, 1, o.rate, httpSender("http://"+ingest.http, s.key), warm, nil)
	if err := waitFor(ctx, sc, s.topics["events"], int64(len(warmCmds)), o.log); err != nil {
		return result{}, err
	}
	n := int(o.rate * seconds)
	cmds := wl.transfers(n)
	procs := []*proc{worker, relay, ingest}
	rssStart := make([]int64, len(procs))
	for i, p := range procs {
		rssStart[i] = p.rss()
	}
	start := time.Now()
	lastProgress := time.Now()
	openLoop(ctx, cmds, 1, o.rate, httpSender("http://"+ingest.http, s.key), l, func() {
		if time.Since(lastProgress) > 5*time.Second {
			fmt.Fprintf(o.log, "bench:   sent %d, accepted %d, outcomes %d\n", l.accepted.Load()+l.failed.Load(), l.accepted.Load(), l.done())
			lastProgress = time.Now()
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for l.done() < int(l.accepted.Load()) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	var rss []string
	for i, p := range procs {
		rss = append(rss, fmt.Sprintf("%s %.1f→%.1f", p.role, mib(rssStart[i]), mib(p.rss())))
	}
	l.mu.Lock()
	ss := append([]sample(nil), l.samples...)
	l.mu.Unlock()
	f, err := os.Create(filepath.Join(o.out, "latency.png"))
	if err != nil {
		return result{}, err
	}
	yMax, err := writeChart(f, ss)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return result{}, err
	}
	missing := int(l.accepted.Load()) - len(ss)
	note := fmt.Sprintf("%.0f/s open loop, single POSTs; chart latency.png (x: %.0f s, y: 0–%.0f ms); %d failed, %d without outcome; RSS MiB at start→end: %s",
		o.rate, seconds, ms(yMax), l.failed.Load(), missing, strings.Join(rss, ", "))
	return result{Scenario: "latency", Commands: len(ss), Seconds: secs, PerSecond: float64(len(ss)) / secs,
		P50ms: ms(percentile(ss, 0.5)), P99ms: ms(percentile(ss, 0.99)), P999ms: ms(percentile(ss, 0.999)),
		WorkerRSSMiB: mib(worker.peakRSS()), RelayRSSMiB: mib(relay.peakRSS()), IngestRSSMiB: mib(ingest.peakRSS()), Note: note}, nil
}

// median returns the run with the median throughput, noting every run's.
func median(rs []result) result {
	sorted := append([]result(nil), rs...)
	slices.SortFunc(sorted, func(a, b result) int { return cmp.Compare(a.PerSecond, b.PerSecond) })
	m := sorted[len(sorted)/2]
	if len(rs) > 1 {
		var all []string
		for _, r := range rs {
			all = append(all, fmt.Sprintf("%.0f", r.PerSecond))
		}
		m.Note = strings.TrimSpace(fmt.Sprintf("median of %d runs (%s/s); %s", len(rs), strings.Join(all, ", "), m.Note))
	}
	return m
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func writeReport(dir string, rep report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "results.md"))
	if err != nil {
		return err
	}
	printTable(f, rep.Results)
	fmt.Fprintf(f, "\nratios: txpipe/naive=%.2f txpipe/pg_ceiling=%.2f skewed/uniform=%.2f p99_ms_at_1000=%.1f\n",
		rep.Ratios["txpipe/naive"], rep.Ratios["txpipe/pg_ceiling"], rep.Ratios["skewed/uniform"], rep.Ratios["p99_ms_at_1000"])
	return f.Close()
}

func printTable(w io.Writer, rs []result) {
	fmt.Fprintln(w, "| scenario | commands | seconds | applied at s | commands/s | p50 ms | p99 ms | p99.9 ms | worker RSS MiB | relay RSS MiB | note |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %d | %.1f | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", r.Scenario, r.Commands, r.Seconds, opt(r.AppliedSeconds), r.PerSecond,
			opt(r.P50ms), opt(r.P99ms), opt(r.P999ms), opt(r.WorkerRSSMiB), opt(r.RelayRSSMiB), r.Note)
	}
}

func opt(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f", v)
}
