package pgnode

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

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
	if v := testutil.ToFloat64(w.primary.WithLabelValues(b.Addr)); v != 1 {
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
	// A URL that reaches a standby is not taken for the primary.
	w.observe(Node{Addr: "10.0.0.3:5432", InRecovery: true}, nil, at.Add(5*Interval))
	if n := testutil.ToFloat64(w.failovers); n != 2 || !strings.Contains(w.Detail(), "is a standby") {
		t.Errorf("after a standby answered: failovers %v, detail %q", n, w.Detail())
	}
}
