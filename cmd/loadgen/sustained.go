package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
)

// steady holds the figures of the steady-state scenarios.
type steady struct {
	// StartedAt is when the measured period began, so that a window
	// (start_s after it) can be matched with the servers' logs.
	StartedAt time.Time `json:"started_at,omitzero"`
	// sustained-latency
	WindowSeconds    float64  `json:"window_seconds,omitempty"`
	WorstWindowP99ms float64  `json:"worst_window_p99_ms,omitempty"`
	WorstWindowAtS   float64  `json:"worst_window_start_s,omitempty"`
	Windows          []window `json:"windows,omitempty"`
	// The outbox's total size (every partition, indexes and TOAST) when
	// the measured period starts; for sustained-latency, the largest of the
	// samples (every 2 s) in its first minute and in its last, and the
	// samples; for sustained-throughput, its size at the end.
	OutboxBytesStart       int64          `json:"outbox_bytes_start,omitempty"`
	OutboxBytesFirstMinute int64          `json:"outbox_bytes_first_minute,omitempty"`
	OutboxBytesEnd         int64          `json:"outbox_bytes_end,omitempty"`
	OutboxSamples          []outboxSample `json:"outbox_samples,omitempty"`
	// RSS of txpipe all when the measured period starts and ends.
	RSSStartMiB float64 `json:"rss_start_mib,omitempty"`
	RSSEndMiB   float64 `json:"rss_end_mib,omitempty"`
	// Host is how busy the host's CPUs were over the measured period
	// (sustained-latency; each window has its own too): the figures above
	// depend on it, and on a shared machine it says whether a slow run was
	// txpipe's doing or its neighbours'.
	Host *hostCPU `json:"host_cpu,omitempty"`
	// sustained-throughput: outcomes published per second in the first and
	// the last minute.
	FirstMinutePerSecond float64      `json:"first_minute_per_second,omitempty"`
	LastMinutePerSecond  float64      `json:"last_minute_per_second,omitempty"`
	Rates                []rateWindow `json:"rates,omitempty"`
}

// warmUp is how long the sustained scenarios send, unmeasured, before the
// measured period: connections and pools open, caches fill, as in a
// pipeline that was already running.
const warmUp = 5 * time.Second

// sustainedLatency runs txpipe all, as make run starts it, on a copy of the
// preload and sends single-command POSTs at o.rate for d, open loop,
// measuring each command from its intended send time to its outcome event
// being consumed; it samples the outbox's size and the process's RSS.
func sustainedLatency(ctx context.Context, o benchOptions, client *kafka.Client, d time.Duration, wl workload) (result, error) {
	s, err := newStack(ctx, "sustained-latency", o)
	if err != nil {
		return result{}, err
	}
	defer s.close(context.WithoutCancel(ctx), client)
	all, err := s.start(ctx, "all")
	if err != nil {
		return result{}, err
	}
	sc, closeClient := freshClient(o.brokers)
	defer closeClient()
	l := newLatencies()
	stop, err := watchOutcomes(ctx, o.brokers, sc, s.topics["events"], l)
	if err != nil {
		return result{}, err
	}
	defer stop()
	send := httpSender("http://"+all.http, s.key)
	stream := wl.stream()
	warm := newLatencies()
	warmN := int(warmUp.Seconds() * o.rate)
	openLoop(ctx, warmN, stream, 1, o.rate, send, warm, nil)
	if err := waitFor(ctx, sc, s.topics["events"], int64(warmN), o.log); err != nil {
		return result{}, err
	}

	var st steady
	if st.OutboxBytesStart, err = outboxBytes(ctx, s.pool); err != nil {
		return result{}, err
	}
	st.RSSStartMiB = mib(all.rss())
	n := int(o.rate * d.Seconds())
	start := time.Now()
	st.StartedAt = start.UTC()
	// The outbox's size every 2 s: a ring of slots truncated in turn is a
	// sawtooth, so one reading at the minute and one at the end would
	// compare two arbitrary points of it; the largest of each minute does
	// not depend on where in the cycle a reading falls.
	var samples []outboxSample
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	sampling.Go(func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				if b, err := outboxBytes(sampleCtx, s.pool); err == nil {
					samples = append(samples, outboxSample{AtS: time.Since(start).Seconds(), Bytes: b})
				}
			case <-sampleCtx.Done():
				return
			}
		}
	})
	var cpu []cpuReading
	sampling.Go(func() {
		cpu = append(cpu, readCPU())
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				cpu = append(cpu, readCPU())
			case <-sampleCtx.Done():
				cpu = append(cpu, readCPU())
				return
			}
		}
	})
	lastProgress := time.Now()
	openLoop(ctx, n, stream, 1, o.rate, send, l, func() {
		if time.Since(lastProgress) > 10*time.Second {
			fmt.Fprintf(o.log, "bench:   %.0f s: sent %d, accepted %d, outcomes %d\n", time.Since(start).Seconds(),
				l.accepted.Load()+l.failed.Load(), l.accepted.Load(), l.done())
			lastProgress = time.Now()
		}
	})
	st.RSSEndMiB = mib(all.rss())
	stopSampling()
	sampling.Wait()
	st.OutboxSamples = samples
	st.OutboxBytesFirstMinute, st.OutboxBytesEnd = outboxMinutes(samples, time.Since(start).Seconds())
	deadline := time.Now().Add(60 * time.Second)
	for l.done() < int(l.accepted.Load()) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	ss := l.snapshot()
	size := windowSize(d)
	st.WindowSeconds = size.Seconds()
	st.Windows = latencyWindows(ss, start, size)
	if w, ok := worstWindow(st.Windows, int(o.rate*size.Seconds()/2)); ok {
		st.WorstWindowP99ms, st.WorstWindowAtS = w.P99ms, w.StartS
	}
	if len(cpu) >= 2 {
		h := cpuBetween(cpu[0], cpu[len(cpu)-1])
		st.Host = &h
	}
	for i, w := range st.Windows {
		from := start.Add(time.Duration(w.StartS * float64(time.Second)))
		if h, ok := cpuInWindow(cpu, from, from.Add(size)); ok {
			st.Windows[i].Host = &h
		}
	}
	f, err := os.Create(filepath.Join(o.out, "latency.png"))
	if err != nil {
		return result{}, err
	}
	title := fmt.Sprintf("txpipe all on %s preloaded commands: %.0f commands/s offered (single POSTs, open loop) for %s",
		thousands(int64(o.preload)), o.rate, d)
	err = writeLatencyChart(f, title, st.Windows, size, map[string]float64{
		fmt.Sprintf("target: p99 over the run ≤ %.0f ms", targetP99ms):          targetP99ms,
		fmt.Sprintf("target: p99 of every window ≤ %.0f ms", targetWindowP99ms): targetWindowP99ms,
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return result{}, err
	}
	missing := int(l.accepted.Load()) - len(ss)
	note := fmt.Sprintf("txpipe all; %.0f/s open loop, single POSTs, for %s after %s of warm-up; %d failed, %d without outcome; chart latency.png",
		o.rate, d, warmUp, l.failed.Load(), missing)
	return result{Scenario: "sustained-latency", Commands: len(ss), Seconds: secs, PerSecond: float64(len(ss)) / secs,
		P50ms: ms(percentile(ss, 0.5)), P99ms: ms(percentile(ss, 0.99)), P999ms: ms(percentile(ss, 0.999)),
		WorkerRSSMiB: mib(all.peakRSS()), Note: note, Steady: &st}, nil
}

// The closed loop of sustained-throughput: throughputSenders clients each
// post batches of throughputBatch commands, one after another, and wait
// while more than throughputUnfinished accepted commands have no outcome
// yet. That keeps the pipeline saturated without piling up a backlog in
// Kafka that would outlast the run (ingest alone accepts several times
// what the workers apply).
const (
	throughputSenders    = 8
	throughputBatch      = 100
	throughputUnfinished = 20000
)

// sustainedThroughput runs txpipe all with no rate limit on a copy of the
// preload and posts batches to the HTTP batch endpoint, closed loop, for
// d; it reports the outcomes published per second in the first and in the
// last minute.
func sustainedThroughput(ctx context.Context, o benchOptions, client *kafka.Client, d time.Duration, wl workload) (result, error) {
	s, err := newStack(ctx, "sustained-throughput", o)
	if err != nil {
		return result{}, err
	}
	defer s.close(context.WithoutCancel(ctx), client)
	// Upstreams that send in bulk get a limit of their own; the default
	// (2000 commands a second per key) would measure the limiter.
	all, err := s.start(ctx, "all", "--rate-limit", "0")
	if err != nil {
		return result{}, err
	}
	sc, closeClient := freshClient(o.brokers)
	defer closeClient()
	l := newLatencies()
	stop, err := watchOutcomes(ctx, o.brokers, sc, s.topics["events"], l)
	if err != nil {
		return result{}, err
	}
	defer stop()
	var st steady
	if st.OutboxBytesStart, err = outboxBytes(ctx, s.pool); err != nil {
		return result{}, err
	}
	st.RSSStartMiB = mib(all.rss())
	send := httpSender("http://"+all.http, s.key)
	stream := wl.stream()
	var mu sync.Mutex // guards stream
	var acceptedAt []time.Time
	var amu sync.Mutex
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range throughputSenders {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(end) {
				if int(l.accepted.Load())-l.done() > throughputUnfinished {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				mu.Lock()
				cmds := make([]domain.Command, throughputBatch)
				for i := range cmds {
					cmds[i] = stream()
				}
				mu.Unlock()
				now := time.Now()
				for _, c := range cmds {
					l.expect(c.CommandID, now)
				}
				if err := send(ctx, cmds); err != nil {
					failed.Add(int64(len(cmds)))
					l.forget(cmds)
					time.Sleep(100 * time.Millisecond)
					continue
				}
				l.accepted.Add(int64(len(cmds)))
				amu.Lock()
				acceptedAt = append(acceptedAt, time.Now())
				amu.Unlock()
			}
		})
	}
	lastProgress := time.Now()
	for time.Now().Before(end) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		if time.Since(lastProgress) > 10*time.Second {
			fmt.Fprintf(o.log, "bench:   %.0f s: accepted %d, outcomes %d\n", time.Since(start).Seconds(), l.accepted.Load(), l.done())
			lastProgress = time.Now()
		}
	}
	wg.Wait()
	if st.OutboxBytesEnd, err = outboxBytes(ctx, s.pool); err != nil {
		return result{}, err
	}
	st.RSSEndMiB = mib(all.rss())
	ss := l.snapshot()
	size := windowSize(d)
	st.WindowSeconds = size.Seconds()
	completed := make([]time.Time, len(ss))
	for i, x := range ss {
		completed[i] = x.sent().Add(x.latency)
	}
	st.Rates = rateWindows(start, d, size, acceptedAt, throughputBatch, completed)
	st.FirstMinutePerSecond = countIn(completed, start, start.Add(time.Minute)) / 60
	st.LastMinutePerSecond = countIn(completed, end.Add(-time.Minute), end) / 60
	total := countIn(completed, start, end)
	f, err := os.Create(filepath.Join(o.out, "throughput.png"))
	if err != nil {
		return result{}, err
	}
	err = writeThroughputChart(f, fmt.Sprintf("txpipe all on %s preloaded commands: HTTP batches of %d, closed loop, for %s",
		thousands(int64(o.preload)), throughputBatch, d), st.Rates, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return result{}, err
	}
	note := fmt.Sprintf("txpipe all --rate-limit 0; %d clients posting batches of %d, at most %d commands without outcome; %d failed; chart throughput.png",
		throughputSenders, throughputBatch, throughputUnfinished, failed.Load())
	return result{Scenario: "sustained-throughput", Commands: int(total), Seconds: d.Seconds(), PerSecond: total / d.Seconds(),
		WorkerRSSMiB: mib(all.peakRSS()), Note: note, Steady: &st}, nil
}

// rateWindows counts, per window of size over d from start, the commands
// accepted (batch of them at each time in accepted) and completed, per
// second.
func rateWindows(start time.Time, d, size time.Duration, accepted []time.Time, batch int, completed []time.Time) []rateWindow {
	n := int((d + size - 1) / size)
	ws := make([]rateWindow, n)
	for i := range ws {
		ws[i].StartS = float64(i) * size.Seconds()
	}
	add := func(at time.Time, count float64, f func(*rateWindow, float64)) {
		i := int(at.Sub(start) / size)
		if at.Before(start) || i >= n {
			return
		}
		f(&ws[i], count/size.Seconds())
	}
	for _, at := range accepted {
		add(at, float64(batch), func(w *rateWindow, v float64) { w.Accepted += v })
	}
	for _, at := range completed {
		add(at, 1, func(w *rateWindow, v float64) { w.Completed += v })
	}
	return ws
}

// countIn counts the times in [from, to).
func countIn(ts []time.Time, from, to time.Time) float64 {
	n := 0
	for _, t := range ts {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return float64(n)
}

type outboxSample struct {
	AtS   float64 `json:"at_s"`
	Bytes int64   `json:"bytes"`
}

// outboxMinutes returns the largest sample of the first minute and of the
// last minute before end (seconds since the start). A run shorter than two
// minutes has overlapping minutes; a first minute without samples is 0.
func outboxMinutes(samples []outboxSample, end float64) (first, last int64) {
	for _, x := range samples {
		if x.AtS <= 60 {
			first = max(first, x.Bytes)
		}
		if x.AtS >= end-60 {
			last = max(last, x.Bytes)
		}
	}
	return first, last
}

// outboxBytes is the outbox's total size on disk: heap, indexes and TOAST
// of the table or, when it is partitioned, of every partition
// (pg_partition_tree lists nothing for a plain table).
func outboxBytes(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var b int64
	err := pool.QueryRow(ctx, `SELECT CASE WHEN c.relkind = 'p'
			THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree(c.oid))
			ELSE pg_total_relation_size(c.oid) END::bigint
		FROM pg_class c WHERE c.oid = 'outbox'::regclass`).Scan(&b)
	if err != nil {
		return 0, fmt.Errorf("measure the outbox: %w", err)
	}
	return b, nil
}

// freshClient is a Kafka client with a transport of its own: a shared one
// caches metadata from before a scenario's topics existed.
func freshClient(brokers []string) (*kafka.Client, func()) {
	tr := &kafka.Transport{}
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}, tr.CloseIdleConnections
}

// thousands writes n with thin spaces between groups of three digits.
func thousands(n int64) string {
	s := fmt.Sprint(n)
	out := ""
	for len(s) > 3 {
		out = " " + s[len(s)-3:] + out
		s = s[:len(s)-3]
	}
	return s + out
}
