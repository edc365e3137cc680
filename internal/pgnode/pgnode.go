// Package pgnode follows which PostgreSQL node a process's pool writes to,
// so that an operator sees a failover: its metrics, its /status panel and
// its readiness detail name the primary, its timeline, and when this
// process last saw it change.
//
// A pool opened on a multi-host URL (host=a,b with
// target_session_attrs=read-write) connects to whichever node is read-write
// now; after a promotion, new connections land on the promoted standby, and
// its timeline is one higher. The watcher asks the node it is connected to
// every few seconds, so it sees the change soon after the pool does.
package pgnode

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/txpipe/txpipe/internal/httpserver"
)

// Metric names.
const (
	MetricPrimary   = "txpipe_postgres_primary_info"
	MetricTimeline  = "txpipe_postgres_timeline"
	MetricFailovers = "txpipe_postgres_failovers_total"
	MetricChangedAt = "txpipe_postgres_primary_changed_timestamp_seconds"
)

// Interval is how often the watcher asks.
const Interval = 5 * time.Second

// Node is the PostgreSQL server a connection reached.
type Node struct {
	Addr       string // host:port as the server sees itself (behind PgBouncer: the server's, not the pooler's)
	InRecovery bool   // a standby
	Timeline   int64  // the primary's WAL timeline; promotion raises it (0 on a standby)
}

// nodeSQL names the server, and on a primary its timeline: the first eight
// hex digits of the current WAL file's name.
const nodeSQL = `SELECT coalesce(host(inet_server_addr()), 'socket') || ':' || current_setting('port'),
	pg_is_in_recovery(),
	CASE WHEN pg_is_in_recovery() THEN 0
	ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END`

// Ask returns the node one of pool's connections reaches.
func Ask(ctx context.Context, pool *pgxpool.Pool) (Node, error) {
	var n Node
	err := pool.QueryRow(ctx, nodeSQL).Scan(&n.Addr, &n.InRecovery, &n.Timeline)
	return n, err
}

// Watcher follows the primary of a pool.
type Watcher struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	primary   *prometheus.GaugeVec
	timeline  prometheus.Gauge
	failovers prometheus.Counter
	changedAt prometheus.Gauge

	mu        sync.Mutex
	cur       Node
	since     time.Time // when this process first saw cur
	changes   int       // failovers seen
	changed   time.Time // the last one
	lastErr   error
	lastAsked time.Time
}

// NewWatcher registers the watcher's metrics with reg.
func NewWatcher(pool *pgxpool.Pool, reg prometheus.Registerer, log *slog.Logger) (*Watcher, error) {
	w := &Watcher{
		pool: pool,
		log:  log,
		primary: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricPrimary,
			Help: "1 for the PostgreSQL node (host:port as it names itself) this process writes to; the series changes at a failover.",
		}, []string{"node"}),
		timeline: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricTimeline,
			Help: "The WAL timeline of the primary this process writes to: each promotion raises it.",
		}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricFailovers,
			Help: "Changes of the primary this process saw (another node, or a higher timeline): failovers and switchovers.",
		}),
		changedAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricChangedAt,
			Help: "Unix time at which this process last saw the primary change (0: never).",
		}),
	}
	for _, c := range []prometheus.Collector{w.primary, w.timeline, w.failovers, w.changedAt} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Run asks every Interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		actx, cancel := context.WithTimeout(ctx, Interval)
		n, err := Ask(actx, w.pool)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		w.observe(n, err, time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// observe records one answer.
func (w *Watcher) observe(n Node, err error, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastErr, w.lastAsked = err, now
	if err != nil {
		return
	}
	if n.InRecovery {
		// A pool without target_session_attrs=read-write on a standby: say
		// so rather than call it the primary.
		w.lastErr = fmt.Errorf("%s is a standby (in recovery): the database URL should name the primary, or every node with target_session_attrs=read-write", n.Addr)
		return
	}
	if n == w.cur {
		return
	}
	if w.cur.Addr != "" {
		w.changes++
		w.changed = now
		w.failovers.Inc()
		w.changedAt.Set(float64(now.Unix()))
		w.log.Warn("the PostgreSQL primary changed: a failover or switchover",
			"from", w.cur.Addr, "from_timeline", w.cur.Timeline, "to", n.Addr, "to_timeline", n.Timeline)
		w.primary.DeleteLabelValues(w.cur.Addr)
	} else {
		w.log.Info("PostgreSQL primary", "node", n.Addr, "timeline", n.Timeline)
	}
	w.cur, w.since = n, now
	w.primary.WithLabelValues(n.Addr).Set(1)
	w.timeline.Set(float64(n.Timeline))
}

// Detail says which node is the primary, for /readyz.
func (w *Watcher) Detail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur.Addr == "" {
		if w.lastErr != nil {
			return "no primary seen yet: " + w.lastErr.Error()
		}
		return "no primary seen yet"
	}
	s := fmt.Sprintf("primary %s, timeline %d, since %s", w.cur.Addr, w.cur.Timeline, w.since.UTC().Format(time.RFC3339))
	if w.changes > 0 {
		s += fmt.Sprintf("; %d failover(s) seen, the last at %s", w.changes, w.changed.UTC().Format(time.RFC3339))
	}
	if w.lastErr != nil {
		s += fmt.Sprintf("; last asked %s: %v", w.lastAsked.UTC().Format(time.RFC3339), w.lastErr)
	}
	return s
}

// Panel is the status page's table of the primary.
func (w *Watcher) Panel() httpserver.Panel {
	return httpserver.Panel{
		ID:      "postgres-primary",
		Title:   "PostgreSQL primary",
		Columns: []string{"node", "timeline", "seen since", "failovers seen", "last failover", "last answer"},
		Empty:   "not seen yet",
		Rows: func(context.Context) ([][]string, error) {
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.cur.Addr == "" {
				if w.lastErr != nil {
					return nil, w.lastErr
				}
				return nil, nil
			}
			last, answer := "never", "ok"
			if w.changes > 0 {
				last = w.changed.UTC().Format(time.RFC3339)
			}
			if w.lastErr != nil {
				answer = w.lastErr.Error()
			}
			return [][]string{{w.cur.Addr, strconv.FormatInt(w.cur.Timeline, 10), w.since.UTC().Format(time.RFC3339),
				strconv.Itoa(w.changes), last, answer}}, nil
		},
	}
}
