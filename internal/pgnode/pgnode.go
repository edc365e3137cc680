// Package pgnode follows which PostgreSQL node a process's pool writes to,
// so that an operator sees a failover: its metrics, its /status panel and
// its readiness detail name the primary, its timeline, and when this
// process last saw it change. It also fences: a process never connects to
// a node on an older timeline of the same database system than one it has
// already written to (a lost primary come back as a primary).
//
// A pool opened on a multi-host URL (host=a,b with
// target_session_attrs=read-write) connects to whichever node is read-write
// now; after a promotion, new connections land on the promoted standby, and
// its timeline is one higher. The watcher asks the node it is connected to
// every few seconds, so it sees the change soon after the pool does.
package pgnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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

// forgetAfter is how many answers in a row may fail before the watcher
// stops naming a primary (its series go): a process cut off from the
// database does not claim one for ever.
const forgetAfter = 3

// Interval is how often the watcher asks.
const Interval = 5 * time.Second

// Node is the PostgreSQL server a connection reached.
type Node struct {
	Addr       string // host:port as the server sees itself (behind PgBouncer: the server's, not the pooler's)
	InRecovery bool   // a standby
	System     string // the database system's identifier, shared by a primary and its standbys
	Timeline   int64  // the primary's WAL timeline; promotion raises it (0 on a standby)
}

// nodeSQL names the server, its system, and on a primary its timeline: the
// first eight hex digits of the current WAL file's name. Every function it
// calls is open to any role.
const nodeSQL = `SELECT coalesce(host(inet_server_addr()), 'socket') || ':' || current_setting('port'),
	pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())::text,
	CASE WHEN pg_is_in_recovery() THEN 0
	ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END`

// Ask returns the node one of pool's connections reaches.
func Ask(ctx context.Context, pool *pgxpool.Pool) (Node, error) {
	var n Node
	err := pool.QueryRow(ctx, nodeSQL).Scan(&n.Addr, &n.InRecovery, &n.System, &n.Timeline)
	if err == nil {
		seen.raise(n)
	}
	return n, err
}

// timelines is the highest timeline this process has written on, per
// database system.
type timelines struct {
	mu      sync.Mutex
	highest map[string]int64
}

var seen = &timelines{highest: map[string]int64{}}

// raise records a primary seen; it returns the highest timeline of its
// system before.
func (t *timelines) raise(n Node) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.highest[n.System]
	if !n.InRecovery && n.Timeline > h {
		t.highest[n.System] = n.Timeline
	}
	return h
}

// of returns the highest timeline seen of system.
func (t *timelines) of(system string) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.highest[system]
}

// ErrOlderTimeline refuses a node behind a primary this process has seen.
var ErrOlderTimeline = errors.New("a primary on an older timeline than one this process has written to")

// Fence wraps a ValidateConnectFunc (pgx's check of target_session_attrs;
// nil: none) so that a connection is also refused when its node is a
// primary on a lower timeline of the same database system than this
// process has already seen: after a failover, the lost primary restarted
// with its old configuration accepts writes too, and would take
// connections (pgx keeps the first read-write host of the URL) and serve
// commits the promoted node never had.
func Fence(next pgconn.ValidateConnectFunc) pgconn.ValidateConnectFunc {
	return func(ctx context.Context, c *pgconn.PgConn) error {
		var notPreferred *pgconn.NotPreferredError
		if next != nil {
			if err := next(ctx, c); err != nil {
				if !errors.As(err, &notPreferred) {
					return err
				}
				// prefer-standby found a primary: pgx may come back to
				// it when no standby answers, without asking again, so
				// it is fenced now.
				if ferr := fence(ctx, c); ferr != nil {
					return ferr
				}
				return err
			}
		}
		return fence(ctx, c)
	}
}

// fence is Fence's check of one connection.
func fence(ctx context.Context, c *pgconn.PgConn) error {
	res := c.ExecParams(ctx, nodeSQL, nil, nil, nil, nil).Read()
	var pgErr *pgconn.PgError
	if errors.As(res.Err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "42883" || pgErr.Code == "0A000") {
		// A server that does not let this role read its control data
		// or WAL position (revoked grants; a managed service without
		// these functions, or refusing them): connect unfenced rather
		// than not at all.
		unfenced.Do(func() {
			slog.Warn("PostgreSQL does not let txpipe read its timeline: connecting without the fence against an older primary",
				"err", res.Err)
		})
		return nil
	}
	if res.Err != nil {
		return res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 4 {
		return fmt.Errorf("ask the node: %d rows", len(res.Rows))
	}
	r := res.Rows[0]
	tl, err := strconv.ParseInt(string(r[3]), 10, 64)
	if err != nil {
		return fmt.Errorf("ask the node: timeline %q", r[3])
	}
	n := Node{Addr: string(r[0]), InRecovery: string(r[1]) == "t", System: string(r[2]), Timeline: tl}
	if n.InRecovery {
		return nil // a standby: target_session_attrs decides
	}
	if h := seen.raise(n); n.Timeline < h {
		return fmt.Errorf("%s on timeline %d, %d seen before: %w", n.Addr, n.Timeline, h, ErrOlderTimeline)
	}
	return nil
}

// unfenced logs once that the fence cannot work.
var unfenced sync.Once

// Watcher follows the primary of a pool.
type Watcher struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	primary   *prometheus.GaugeVec
	timeline  prometheus.Gauge
	failovers prometheus.Counter
	changedAt prometheus.Gauge

	mu        sync.Mutex
	failures  int // answers failed in a row
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
			Help: "1 for the PostgreSQL node (host:port as it names itself), timeline and database system this process writes to; the series changes at a failover, and goes while the node does not answer. Two timelines of one system at once across processes: two primaries.",
		}, []string{"node", "timeline", "system"}),
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
		if err == nil && !n.InRecovery && n.Timeline < seen.of(n.System) {
			// A connection made before the fence knew better (or through a
			// pooler repointed since) reaches an older primary: drop the
			// pool's connections; new ones are fenced.
			w.log.Error("connected to a PostgreSQL primary on an older timeline than one already written to: two primaries? dropping the pool's connections",
				"node", n.Addr, "timeline", n.Timeline, "highest", seen.of(n.System))
			w.pool.Reset()
		}
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
		w.failures++
		if w.failures == forgetAfter {
			w.primary.Reset()
		}
		return
	}
	w.failures = 0
	if n.InRecovery {
		// A pool without target_session_attrs=read-write on a standby: say
		// so rather than call it the primary.
		w.lastErr = fmt.Errorf("%s is a standby (in recovery): the database URL should name the primary, or every node with target_session_attrs=read-write", n.Addr)
		return
	}
	if n == w.cur {
		w.primary.WithLabelValues(n.Addr, strconv.FormatInt(n.Timeline, 10), n.System).Set(1) // again, after a Reset
		return
	}
	if w.cur.Addr != "" {
		w.changes++
		w.changed = now
		w.failovers.Inc()
		w.changedAt.Set(float64(now.Unix()))
		w.log.Warn("the PostgreSQL primary changed: a failover or switchover",
			"from", w.cur.Addr, "from_timeline", w.cur.Timeline, "to", n.Addr, "to_timeline", n.Timeline)
		w.primary.Reset()
	} else {
		w.log.Info("PostgreSQL primary", "node", n.Addr, "timeline", n.Timeline)
	}
	w.cur, w.since = n, now
	w.primary.WithLabelValues(n.Addr, strconv.FormatInt(n.Timeline, 10), n.System).Set(1)
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
