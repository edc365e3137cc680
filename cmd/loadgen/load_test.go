package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ss []sample
	for i := 1; i <= 1000; i++ {
		ss = append(ss, sample{latency: time.Duration(i) * time.Millisecond})
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {0.999, 999 * time.Millisecond}, {1, time.Second}} {
		if got := percentile(ss, c.q); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

func TestWorkloadSkew(t *testing.T) {
	hotShare := func(w workload) float64 {
		cmds := w.transfers(10000)
		hot := 0
		for _, c := range cmds {
			if c.FromAccountID == c.ToAccountID {
				t.Fatalf("transfer %s moves money to itself", c.CommandID)
			}
			var a, b int
			if _, err := fmt.Sscanf(c.FromAccountID, "acct-%d", &a); err != nil {
				t.Fatal(err)
			}
			if _, err := fmt.Sscanf(c.ToAccountID, "acct-%d", &b); err != nil {
				t.Fatal(err)
			}
			if a < w.hot && b < w.hot {
				hot++
			}
		}
		return float64(hot) / float64(len(cmds))
	}
	if got := hotShare(workload{accounts: 10000, hot: 10, skew: 0.5, seed: 1}); got < 0.45 || got > 0.55 {
		t.Errorf("skewed workload: %.2f of transfers between hot accounts, want about 0.5", got)
	}
	if got := hotShare(workload{accounts: 10000, hot: 10, seed: 1}); got > 0.01 {
		t.Errorf("uniform workload: %.2f of transfers between hot accounts, want about 0", got)
	}
}

func TestLatencyWindows(t *testing.T) {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var ss []sample
	// 25 s at 100/s: the i-th command of each second takes i+1 ms, plus a
	// second for each earlier window.
	for s := range 25 {
		for i := range 100 {
			ss = append(ss, newSample(start.Add(time.Duration(s)*time.Second+time.Duration(i)*10*time.Millisecond),
				time.Duration(i+1)*time.Millisecond+time.Duration(s/10)*time.Second, stages{}))
		}
	}
	ws := latencyWindows(ss, start, 10*time.Second)
	want := []window{
		{StartS: 0, Commands: 1000, P50ms: 50, P99ms: 99, MaxMs: 100},
		{StartS: 10, Commands: 1000, P50ms: 1050, P99ms: 1099, MaxMs: 1100},
		{StartS: 20, Commands: 500, P50ms: 2050, P99ms: 2099, MaxMs: 2100},
	}
	if !slices.Equal(ws, want) {
		t.Errorf("latencyWindows =\n%+v\nwant\n%+v", ws, want)
	}
	if w, ok := worstWindow(ws, 600); !ok || w.StartS != 10 {
		t.Errorf("worstWindow(least 600) = %+v, %v; want the window at 10 s", w, ok)
	}
	if w, ok := worstWindow(ws, 1); !ok || w.StartS != 20 {
		t.Errorf("worstWindow(least 1) = %+v, %v; want the window at 20 s", w, ok)
	}
}

func TestChartsArePNGs(t *testing.T) {
	ws := []window{{StartS: 0, Commands: 10, P50ms: 3, P99ms: 40, MaxMs: 90}, {StartS: 10, Commands: 10, P50ms: 0, P99ms: 45, MaxMs: 2000}}
	rs := []rateWindow{{StartS: 0, Accepted: 3000, Completed: 2800}, {StartS: 10, Accepted: 2900, Completed: 2950}}
	for _, c := range []struct {
		name string
		draw func(*bytes.Buffer) error
	}{
		{"latency", func(b *bytes.Buffer) error {
			return writeLatencyChart(b, "latency at 1000/s", ws, 10*time.Second, map[string]float64{"p99 target 50 ms": 50})
		}},
		{"latency, no windows", func(b *bytes.Buffer) error { return writeLatencyChart(b, "nothing", nil, time.Second, nil) }},
		{"throughput", func(b *bytes.Buffer) error { return writeThroughputChart(b, "throughput", rs, 10*time.Second) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := c.draw(&buf); err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(&buf)
			if err != nil {
				t.Fatalf("chart is not a PNG: %v", err)
			}
			if b := img.Bounds(); b.Dx() != 960 || b.Dy() != 432 {
				t.Errorf("chart is %v, want 960×432", b)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		header string
		want   time.Duration
		ok     bool
	}{
		{"1", time.Second, true},
		{" 3 ", 3 * time.Second, true},
		{"0", 0, true},
		{now.Add(5 * time.Second).Format(http.TimeFormat), 5 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true}, // in the past: now
		{"", 0, false},
		{"-1", 0, false},
		{"soon", 0, false},
	} {
		t.Run(c.header, func(t *testing.T) {
			got, ok := retryAfter(c.header, now)
			if got != c.want || ok != c.ok {
				t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", c.header, got, ok, c.want, c.ok)
			}
		})
	}
}

// TestSetupHonoursRateLimits: a batch refused with 429 is sent again after
// the Retry-After wait, until accepted; a server that never accepts makes
// the send fail after the bound; other refusals are not retried.
func TestSetupHonoursRateLimits(t *testing.T) {
	cmds := workload{accounts: 10, seed: 1}.transfers(3)
	clock := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name      string
		answers   []string // status[:Retry-After], one per request; the last repeats
		wantCalls int
		wantWaits []time.Duration
		wantErr   bool
	}{
		{"429 then 202", []string{"429:2", "202"}, 2, []time.Duration{2 * time.Second}, false},
		{"429 with a date, 503, then 202", []string{"429:date", "503:1", "202"}, 3, []time.Duration{10 * time.Second, time.Second}, false},
		{"429 without Retry-After waits a second", []string{"429", "202"}, 2, []time.Duration{time.Second}, false},
		{"a long Retry-After is capped", []string{"429:3600", "202"}, 2, []time.Duration{30 * time.Second}, false},
		{"always 429 gives up", []string{"429:1"}, 4, []time.Duration{time.Second, time.Second, time.Second}, true},
		{"400 is not retried", []string{"400"}, 1, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var calls int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				a := c.answers[min(calls, len(c.answers)-1)]
				calls++
				if r.URL.Path != "/v1/commands/batch" || r.Header.Get("Authorization") != "Bearer k" {
					t.Errorf("request %s %s with %q, want the batch route and the key", r.Method, r.URL.Path, r.Header.Get("Authorization"))
				}
				status, after, _ := strings.Cut(a, ":")
				if after == "date" {
					after = clock.Add(10 * time.Second).Format(http.TimeFormat)
				}
				if after != "" {
					w.Header().Set("Retry-After", after)
				}
				code, _ := strconv.Atoi(status)
				w.WriteHeader(code)
			}))
			defer srv.Close()
			var waits []time.Duration
			r := retrier{attempts: 4, maxWait: 30 * time.Second, now: func() time.Time { return clock }, sleep: func(_ context.Context, d time.Duration) error {
				waits = append(waits, d)
				return nil
			}}
			err := r.wrap(httpSender(srv.URL, "k"))(context.Background(), cmds)
			if (err != nil) != c.wantErr || calls != c.wantCalls || !slices.Equal(waits, c.wantWaits) {
				t.Errorf("send = %v after %d requests, waits %v; want error %v after %d, waits %v", err, calls, waits, c.wantErr, c.wantCalls, c.wantWaits)
			}
		})
	}
}

// TestHeadline judges each target from the scenarios' figures, and marks
// the targets of scenarios that did not run as not measured.
func TestHeadline(t *testing.T) {
	o := benchOptions{rate: 1000, sustained: 10 * time.Minute, throughputFor: 5 * time.Minute}
	good := map[string]result{
		"sustained-latency": {P50ms: 20, P99ms: 45, P999ms: 80, Steady: &steady{WindowSeconds: 10, WorstWindowP99ms: 140,
			OutboxBytesStart: 1 << 20, OutboxBytesFirstMinute: 4 << 20, OutboxBytesEnd: 8 << 20}},
		"sustained-throughput": {Steady: &steady{FirstMinutePerSecond: 3000, LastMinutePerSecond: 2700}},
		"txpipe":               {PerSecond: 4000},
		"naive":                {PerSecond: 400},
		"pg-ceiling":           {PerSecond: 10000},
	}
	bad := map[string]result{
		"sustained-latency": {P99ms: 51, Steady: &steady{WindowSeconds: 10, WorstWindowP99ms: 151,
			OutboxBytesFirstMinute: 4 << 20, OutboxBytesEnd: 9 << 20}},
		"sustained-throughput": {Steady: &steady{FirstMinutePerSecond: 3000, LastMinutePerSecond: 2690}},
		"txpipe":               {PerSecond: 3990},
		"naive":                {PerSecond: 400},
		"pg-ceiling":           {PerSecond: 10000},
	}
	ratios := func(m map[string]result) map[string]float64 {
		st, sth := m["sustained-latency"].Steady, m["sustained-throughput"].Steady
		return map[string]float64{
			"txpipe/naive":                 m["txpipe"].PerSecond / m["naive"].PerSecond,
			"txpipe/pg_ceiling":            m["txpipe"].PerSecond / m["pg-ceiling"].PerSecond,
			"outbox_end/first_minute":      float64(st.OutboxBytesEnd) / float64(st.OutboxBytesFirstMinute),
			"throughput_last/first_minute": sth.LastMinutePerSecond / sth.FirstMinutePerSecond,
		}
	}
	for _, c := range []struct {
		name         string
		byName       map[string]result
		wantPass     bool
		wantMeasured bool
	}{
		{"every target met, at its bound or within", good, true, true},
		{"every target just missed", bad, false, true},
		{"nothing ran", map[string]result{}, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := map[string]float64{}
			if len(c.byName) > 0 {
				r = ratios(c.byName)
			}
			ts := headline(c.byName, r, o)
			if len(ts) != 6 {
				t.Fatalf("headline has %d targets, want 6", len(ts))
			}
			for _, tg := range ts {
				if tg.Measured != c.wantMeasured || (c.wantMeasured && tg.Pass != c.wantPass) {
					t.Errorf("%s (%s): measured %v, pass %v; want measured %v, pass %v", tg.Name, tg.Shown, tg.Measured, tg.Pass, c.wantMeasured, c.wantPass)
				}
			}
		})
	}
}

// TestHeadlineWithoutAJudgedWindow: a run in which no window had outcomes
// for half its commands misses the worst-window target, whatever its
// (empty) worst window says.
func TestHeadlineWithoutAJudgedWindow(t *testing.T) {
	o := benchOptions{rate: 1000, sustained: 10 * time.Minute, throughputFor: 5 * time.Minute}
	byName := map[string]result{"sustained-latency": {P99ms: 45, Steady: &steady{WindowSeconds: 10}}}
	for _, tg := range headline(byName, map[string]float64{}, o) {
		if !strings.HasPrefix(tg.Name, "worst ") {
			continue
		}
		if !tg.Measured || tg.Pass || tg.Shown != noWindowJudged {
			t.Fatalf("%s: measured %v, pass %v, shown %q; want a measured miss shown as %q", tg.Name, tg.Measured, tg.Pass, tg.Shown, noWindowJudged)
		}
		return
	}
	t.Fatal("no worst-window target in the headline")
}

func TestEvenTicks(t *testing.T) {
	for _, c := range []struct {
		lo, hi float64
		want   []string
	}{
		{0, 2700, []string{"0", "500", "1000", "1500", "2000", "2500"}},
		{0, 1100, []string{"0", "200", "400", "600", "800", "1000"}},
		{0, 9, []string{"0", "2", "4", "6", "8"}},
		{5, 5, []string{"5"}},
	} {
		var got []string
		for _, tk := range (evenTicks{}).Ticks(c.lo, c.hi) {
			if tk.Label != "" {
				got = append(got, tk.Label)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("Ticks(%v, %v) labels %v, want %v", c.lo, c.hi, got, c.want)
		}
	}
}

// TestOutboxMinutesTakeEachMinutesLargest: a sawtooth compared by its
// largest sample per minute, not by where two readings happened to fall.
func TestOutboxMinutesTakeEachMinutesLargest(t *testing.T) {
	var samples []outboxSample
	for at := 2.0; at <= 600; at += 2 {
		b := int64(3 + int(at)%12) // 3…13 MiB (even seconds), a slot truncated every 12 s
		if at > 540 {
			b += 1 // the last minute a little larger
		}
		samples = append(samples, outboxSample{AtS: at, Bytes: b << 20})
	}
	first, last := outboxMinutes(samples, 600)
	if first != 13<<20 || last != 14<<20 {
		t.Errorf("outboxMinutes = %d, %d MiB; want 13 and 14", first>>20, last>>20)
	}
	if first, last := outboxMinutes(nil, 600); first != 0 || last != 0 {
		t.Errorf("no samples: %d, %d", first, last)
	}
}

// txpipe and txpipe-baseline take turns at running first; nothing else
// moves.
func TestBaselineTakesTurnsAtRunningFirst(t *testing.T) {
	steps := []scenario{{name: "naive"}, {name: "txpipe"}, {name: "txpipe-baseline"}, {name: "pg-ceiling"}}
	for round, want := range [][]int{{0, 1, 2, 3}, {0, 2, 1, 3}, {0, 1, 2, 3}} {
		if got := roundOrder(steps, round); !slices.Equal(got, want) {
			t.Errorf("round %d: order %v, want %v", round, got, want)
		}
	}
	if got := roundOrder(steps[:2], 1); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("without a baseline: order %v, want [0 1]", got)
	}
}

// TestWindowsNameWhereTheSlowestCommandWent: each window carries the
// stages of its slowest command, split at the times its records carry.
func TestWindowsNameWhereTheSlowestCommandWent(t *testing.T) {
	at := time.Date(2026, 12, 1, 2, 27, 41, 0, time.UTC)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	slow := split(at, at.Add(ms(5)), at.Add(ms(405)), at.Add(ms(420)), at.Add(ms(423)))
	if want := (stages{IngestMs: 5, WorkerMs: 400, RelayMs: 15, ConsumeMs: 3}); slow != want {
		t.Fatalf("split = %+v, want %+v", slow, want)
	}
	if got := split(at, time.Time{}, at, at, at); got != (stages{}) {
		t.Errorf("split without the command record's time = %+v, want zero", got)
	}
	ss := []sample{
		newSample(at, ms(10), stages{IngestMs: 2, WorkerMs: 5, RelayMs: 2, ConsumeMs: 1}),
		newSample(at.Add(ms(1)), ms(423), slow),
		newSample(at.Add(ms(2)), ms(30), stages{IngestMs: 1, WorkerMs: 20, RelayMs: 8, ConsumeMs: 1}),
	}
	ws := latencyWindows(ss, at, 10*time.Second)
	if len(ws) != 1 || ws[0].Slowest != slow {
		t.Fatalf("windows = %+v, want one whose slowest is %+v", ws, slow)
	}
	st := &steady{Windows: ws, WorstWindowAtS: 0, WorstWindowP99ms: ws[0].P99ms}
	if got := slowestText(st); !strings.Contains(got, "400 ms to the worker's decision") {
		t.Errorf("slowestText = %q, want the 400 ms to the worker's decision", got)
	}
	// No window judged (too few commands in each): nothing is named.
	if got := slowestText(&steady{Windows: ws}); got != "" {
		t.Errorf("slowestText without a worst window = %q, want nothing", got)
	}
}

func TestHostCPUInAWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	// Some task waited 0.5 s in each of the first 10 s, then all the time;
	// a quarter of the ticks busy and a tenth stolen throughout.
	var rs []cpuReading
	var waited int64
	for s := 0; s <= 20; s++ {
		rs = append(rs, cpuReading{at: at(s), waitedUs: waited, busy: int64(s) * 25, steal: int64(s) * 10, total: int64(s) * 100,
			hasPressure: true, hasTickCount: true})
		if s < 10 {
			waited += 500_000
		} else {
			waited += 1_000_000
		}
	}
	first, ok := cpuInWindow(rs, at(0), at(10))
	if !ok || first.PressurePct != 50 || first.BusyPct != 25 || first.StealPct != 10 {
		t.Fatalf("first window: %+v, %v; want pressure 50, busy 25, steal 10", first, ok)
	}
	second, ok := cpuInWindow(rs, at(10), at(20))
	if !ok || second.PressurePct != 100 {
		t.Fatalf("second window: %+v, %v; want pressure 100", second, ok)
	}
	// A window past the last reading is judged on the nearest readings.
	if late, ok := cpuInWindow(rs, at(18), at(30)); !ok || late.PressurePct != 100 {
		t.Fatalf("late window: %+v, %v; want pressure 100 from the last readings", late, ok)
	}
	if _, ok := cpuInWindow(rs[:1], at(0), at(10)); ok {
		t.Fatal("one reading judged a window")
	}
	// A host without PSI: pressure unknown, not zero.
	noPSI := []cpuReading{{at: at(0), hasTickCount: true}, {at: at(1), total: 100, busy: 50, hasTickCount: true}}
	if h := cpuBetween(noPSI[0], noPSI[1]); h.PressurePct != -1 || h.BusyPct != 50 {
		t.Fatalf("without PSI: %+v; want pressure -1 (unknown), busy 50", h)
	}
	// Readings off the whole seconds, as the sampler's are: a window runs
	// from its first reading (0.3 s) to the next window's first (10.3 s),
	// not from the reading before it. Some task waited all the time before
	// 0.3 s and from 10.3 s, never in between.
	var off []cpuReading
	waited = 0
	for s := -1; s <= 12; s++ {
		off = append(off, cpuReading{at: at(s).Add(300 * time.Millisecond), waitedUs: waited, hasPressure: true})
		if s < 0 || s >= 10 {
			waited += 1_000_000
		}
	}
	if inside, ok := cpuInWindow(off, at(0), at(10)); !ok || inside.PressurePct != 0 {
		t.Fatalf("window between readings off the second: %+v, %v; want pressure 0 from the readings inside it", inside, ok)
	}
	// Consecutive windows share their boundary reading, so a burst in the
	// second between a window's last reading inside it and the next
	// window's first counts in exactly one of them.
	var edge []cpuReading
	waited = 0
	for s := 0; s <= 21; s++ {
		edge = append(edge, cpuReading{at: at(s).Add(300 * time.Millisecond), waitedUs: waited, hasPressure: true})
		if s == 9 { // some task waited all of 9.3–10.3 s
			waited += 1_000_000
		}
	}
	w1, ok1 := cpuInWindow(edge, at(0), at(10))
	w2, ok2 := cpuInWindow(edge, at(10), at(20))
	if !ok1 || !ok2 || w1.PressurePct != 10 || w2.PressurePct != 0 {
		t.Fatalf("burst at the boundary: first %+v (%v), second %+v (%v); want 10 %% in the first and 0 in the second", w1, ok1, w2, ok2)
	}
	// A window between two readings is judged on the two around it.
	if h, ok := cpuInWindow(rs, at(10).Add(200*time.Millisecond), at(10).Add(800*time.Millisecond)); !ok || h.PressurePct != 100 {
		t.Fatalf("window inside one second: %+v, %v; want pressure 100 from the readings at 10 and 11 s", h, ok)
	}
}

func TestParseHostCounters(t *testing.T) {
	stat := "cpu  100 5 50 800 20 3 2 10 40 0\ncpu0 50 2 25 400 10 1 1 5 20 0\n"
	busy, steal, total, ok := parseStat(stat)
	// busy: user 100 + nice 5 + system 50 + irq 3 + softirq 2; guest (40)
	// is inside user already; total adds idle 800, iowait 20, steal 10.
	if !ok || busy != 160 || steal != 10 || total != 990 {
		t.Fatalf("parseStat: busy %d steal %d total %d ok %v; want 160, 10, 990, true", busy, steal, total, ok)
	}
	if _, _, _, ok := parseStat("cpu0 1 2 3\n"); ok {
		t.Fatal("parseStat took a line that is not the cpu total")
	}
	if _, _, _, ok := parseStat("cpu 1 2 x 4 5 6 7 8\n"); ok {
		t.Fatal("parseStat took a field that is not a number")
	}
	psi := "some avg10=72.10 avg60=71.06 avg300=47.66 total=245819628\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
	if v, ok := parsePressure(psi); !ok || v != 245819628 {
		t.Fatalf("parsePressure: %d, %v; want 245819628, true", v, ok)
	}
	if _, ok := parsePressure("full avg10=0.00 total=5\n"); ok {
		t.Fatal("parsePressure took the full line for the some line")
	}
	if got := readCPU(); !got.hasTickCount && !got.hasPressure {
		t.Log("this host exposes neither /proc/stat nor /proc/pressure/cpu")
	}
}

// TestSamplesHoldNoPointers: a soak keeps millions of samples, and the
// collector scans any that hold a pointer (a time.Time does) at every
// cycle; they must stay plain values, and keep their send time exactly.
func TestSamplesHoldNoPointers(t *testing.T) {
	var walk func(reflect.Type) bool
	walk = func(ty reflect.Type) bool {
		switch ty.Kind() {
		case reflect.Struct:
			for i := range ty.NumField() {
				if !walk(ty.Field(i).Type) {
					return false
				}
			}
			return true
		case reflect.Array:
			return walk(ty.Elem())
		case reflect.Pointer, reflect.UnsafePointer, reflect.String, reflect.Slice, reflect.Map,
			reflect.Interface, reflect.Chan, reflect.Func:
			return false
		default:
			return true
		}
	}
	if !walk(reflect.TypeFor[sample]()) {
		t.Fatal("sample holds a pointer: the collector would scan every sample of a soak")
	}
	for _, at := range []time.Time{
		time.Now().Add(-90 * time.Minute),                      // with a monotonic reading: Sub compares those
		time.Now().Add(-90 * time.Minute).Round(0),             // without one: Sub compares the wall times
		time.Date(2026, 12, 1, 11, 12, 0, 123456789, time.UTC), // a test's fixed time
	} {
		if s := newSample(at, time.Second, stages{}); s.sent().Sub(at) != 0 {
			t.Fatalf("sent() = %v, want %v", s.sent(), at)
		}
	}
}

// TestSamplesInChunks: samples past a chunk go to a new one, the chunks
// already full are never copied, and the count and the snapshot see every
// sample in order.
func TestSamplesInChunks(t *testing.T) {
	l := newLatencies()
	n := 2*sampleChunk + 7
	var first *sample
	for i := range n {
		l.add(sample{latency: time.Duration(i)})
		if i == 0 {
			first = &l.chunks[0][0]
		}
	}
	if got := l.done(); got != n {
		t.Fatalf("done() = %d, want %d", got, n)
	}
	if len(l.chunks) != 3 || &l.chunks[0][0] != first {
		t.Fatalf("%d chunks, first moved %v; want 3 chunks and the first where it was", len(l.chunks), &l.chunks[0][0] != first)
	}
	ss := l.snapshot()
	if len(ss) != n {
		t.Fatalf("snapshot has %d samples, want %d", len(ss), n)
	}
	for i, s := range ss {
		if s.latency != time.Duration(i) {
			t.Fatalf("snapshot[%d].latency = %v, want %v", i, s.latency, time.Duration(i))
		}
	}
	if newLatencies().done() != 0 || len(newLatencies().snapshot()) != 0 {
		t.Fatal("an empty collection has samples")
	}
}

// TestRateRefused: a rate that is not a positive, finite number of commands
// a second is refused before anything is sent, in both subcommands.
func TestRateRefused(t *testing.T) {
	for _, r := range []string{"0", "-5", "0.0001", "NaN", "+Inf", "1e300"} {
		for _, args := range [][]string{
			{"run", "--rate", r, "--api-key", "k"},
			{"bench", "--rate", r, "--database-url", "postgres://nowhere/x"},
		} {
			err := run(context.Background(), args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "--rate must be") {
				t.Errorf("loadgen %v: err %v, want the rate refused", args, err)
			}
		}
	}
	if err := checkRate(1000); err != nil {
		t.Errorf("checkRate(1000) = %v, want nil", err)
	}
}
