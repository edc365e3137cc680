package pgnode

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestFenceRefusesAnOlderTimeline connects to the real PostgreSQL through
// Fence: accepted while its timeline is the highest this process has seen
// of its system, refused once a higher one was seen (as after a failover,
// when the lost primary comes back as a primary), and accepted again for
// another system.
func TestFenceRefusesAnOlderTimeline(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	n, err := Ask(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ValidateConnect = Fence(nil)
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect on the highest timeline seen: %v", err)
	}
	c.Close(ctx)

	seen.mu.Lock()
	seen.highest[n.System] = n.Timeline + 1 // a promoted standby of this system was seen
	seen.mu.Unlock()
	defer func() {
		seen.mu.Lock()
		seen.highest[n.System] = n.Timeline
		seen.mu.Unlock()
	}()
	if c, err := pgx.ConnectConfig(ctx, cfg); err == nil || !errors.Is(err, ErrOlderTimeline) {
		if c != nil {
			c.Close(ctx)
		}
		t.Fatalf("connect to timeline %d after %d was seen: %v, want %v", n.Timeline, n.Timeline+1, err, ErrOlderTimeline)
	}
}

func TestAChangeOfPrimaryIsAFailover(t *testing.T) {
	reg := prometheus.NewRegistry()
	w, err := NewWatcher(nil, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a := Node{Addr: "10.0.0.1:5432", Timeline: 1}
	w.observe(a, nil, at)
	w.observe(a, nil, at.Add(Interval))
	if n := testutil.ToFloat64(w.failovers); n != 0 {
		t.Fatalf("failovers = %v after the first primary seen twice, want 0", n)
	}
	// The primary's machine is lost: no answer, then the promoted standby.
	w.observe(Node{}, errors.New("connection refused"), at.Add(2*Interval))
	if !strings.Contains(w.Detail(), "connection refused") || !strings.Contains(w.Detail(), a.Addr) {
		t.Errorf("detail during the gap = %q, want the last primary and the error", w.Detail())
	}
	b := Node{Addr: "10.0.0.2:5432", Timeline: 2}
	w.observe(b, nil, at.Add(3*Interval))
	if n := testutil.ToFloat64(w.failovers); n != 1 {
		t.Errorf("failovers = %v after the promotion, want 1", n)
	}
	if v := testutil.ToFloat64(w.primary.WithLabelValues(b.Addr, "2", "")); v != 1 {
		t.Errorf("%s{node=%q} = %v, want 1", MetricPrimary, b.Addr, v)
	}
	if got := testutil.CollectAndCount(w.primary); got != 1 {
		t.Errorf("%d %s series, want only the new primary's", got, MetricPrimary)
	}
	if v := testutil.ToFloat64(w.timeline); v != 2 {
		t.Errorf("timeline = %v, want 2", v)
	}
	if d := w.Detail(); !strings.Contains(d, "primary 10.0.0.2:5432, timeline 2") || !strings.Contains(d, "1 failover(s) seen") {
		t.Errorf("detail = %q", d)
	}
	// The same node on a higher timeline (promoted in place, a switchover
	// and back) is a change too.
	w.observe(Node{Addr: b.Addr, Timeline: 3}, nil, at.Add(4*Interval))
	if n := testutil.ToFloat64(w.failovers); n != 2 {
		t.Errorf("failovers = %v after a new timeline, want 2", n)
	}
	// A process cut off from the database stops naming a primary.
	for i := range forgetAfter {
		w.observe(Node{}, errors.New("timeout"), at.Add(time.Duration(5+i)*Interval))
	}
	if got := testutil.CollectAndCount(w.primary); got != 0 {
		t.Errorf("%d %s series after %d failed answers, want none", got, MetricPrimary, forgetAfter)
	}
	// A URL that reaches a standby is not taken for the primary.
	w.observe(Node{Addr: "10.0.0.3:5432", InRecovery: true}, nil, at.Add(20*Interval))
	if n := testutil.ToFloat64(w.failovers); n != 2 || !strings.Contains(w.Detail(), "is a standby") {
		t.Errorf("after a standby answered: failovers %v, detail %q", n, w.Detail())
	}
}
