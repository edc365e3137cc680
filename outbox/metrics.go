package outbox

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Names of the relay's metrics that others read (the status page).
const (
	MetricPublished        = "txpipe_relay_published_total"             // records Kafka acknowledged, by topic
	MetricPendingRows      = "txpipe_outbox_pending_rows"               // records not published yet (every shard's)
	MetricOldestPendingAge = "txpipe_outbox_oldest_pending_age_seconds" // age of the oldest of them
	MetricShardsOwned      = "txpipe_relay_shards_owned"                // of the Shards
)

type relayMetrics struct {
	published        *prometheus.CounterVec
	failures         prometheus.Counter
	parked           *prometheus.CounterVec
	panics           prometheus.Counter
	notifyQueue      prometheus.Gauge
	publishDuration  prometheus.Histogram
	batchSize        prometheus.Histogram
	endToEnd         prometheus.Histogram
	pending          prometheus.Gauge
	oldestAge        prometheus.Gauge
	shardsOwned      prometheus.Gauge
	leaseChanges     *prometheus.CounterVec
	fenced           prometheus.Counter
	stepDowns        prometheus.Counter
	outboxBytes      prometheus.Gauge
	truncations      *prometheus.CounterVec
	truncateDuration prometheus.Histogram
}

// EndToEndBuckets are the buckets of the accepted → published latency
// histogram; they include the SLO thresholds (250 ms, 1 s).
var EndToEndBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

func newRelayMetrics(reg prometheus.Registerer) (*relayMetrics, error) {
	m := &relayMetrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricPublished,
			Help: "Outbox records published to Kafka and acknowledged, by topic.",
		}, []string{"topic"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_relay_failures_total",
			Help: "Relay batches that failed, or left rows of theirs for the next batch (PostgreSQL or Kafka failing, a panic, a topic refused within its grace).",
		}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "txpipe_relay_parked_total",
			Help: "Outbox rows moved to outbox_parked because Kafka refuses them for good or the relay cannot make a record of them, by reason (see ParkReasons).",
		}, []string{"reason"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_relay_recovered_panics_total",
			Help: "Panics the relay recovered from while handling a batch (the batch was retried, or the row that caused it parked).",
		}),
		notifyQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "txpipe_postgres_notify_queue_usage_ratio",
			Help: "pg_notification_queue_usage(): the share of PostgreSQL's notification queue held by its slowest listener (sampled every 5 s); at outbox.NotifyQueueMaxUsage the workers stop notifying.",
		}),
		publishDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_relay_publish_duration_seconds",
			Help:    "Time for Kafka to acknowledge one relay batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_relay_batch_size_records",
			Help:    "Records per published relay batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		endToEnd: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_e2e_latency_seconds",
			Help:    "Time from a command's acceptance by Kafka to its outcome event's acknowledgement.",
			Buckets: EndToEndBuckets,
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricPendingRows,
			Help: "Outbox records not yet published (sampled every 5 s); the name is older than rows holding several records (migration 0024).",
		}),
		oldestAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricOldestPendingAge,
			Help: "Age of the oldest unpublished outbox record; 0 when the outbox is empty (sampled every 5 s).",
		}),
		shardsOwned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricShardsOwned,
			Help: "Outbox shards this relay holds the lease of (of 32, shared among the relays alive).",
		}),
		leaseChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "txpipe_relay_lease_changes_total",
			Help: "Shard leases this relay acquired, released (dealt to another relay) or lost (taken over after it expired).",
		}, []string{"change"}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_relay_fenced_batches_total",
			Help: "Batches that marked nothing published because a lease was lost mid-batch; the new holder publishes them (possibly again).",
		}),
		stepDowns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_relay_step_downs_total",
			Help: "Times this relay gave its shards to the others because it could not publish for a whole lease TTL.",
		}),
		outboxBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "txpipe_outbox_size_bytes",
			Help: "On-disk size of the outbox, every slot with its indexes (sampled every 5 s).",
		}),
		truncations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "txpipe_relay_outbox_truncations_total",
			Help: "Attempts to truncate an outbox slot whose window is over, by outcome: truncated, occupied (rows not yet published), busy (its lock not granted in time), failed.",
		}, []string{"outcome"}),
		truncateDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_relay_outbox_truncate_duration_seconds",
			Help:    "Time to truncate one outbox slot, from the check that it is empty to the commit, its lock wait included: about how long the relays' reads waited for it at most.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
		}),
	}
	// Every reason's series exists from the start, at 0, so the first park
	// is an increase that rules and dashboards see.
	for _, reason := range ParkReasons {
		m.parked.WithLabelValues(reason)
	}
	for _, outcome := range []string{truncated, occupied, busy, failed} {
		m.truncations.WithLabelValues(outcome)
	}
	for _, c := range []prometheus.Collector{m.published, m.failures, m.parked, m.panics, m.notifyQueue, m.publishDuration, m.batchSize, m.endToEnd,
		m.pending, m.oldestAge, m.shardsOwned, m.leaseChanges, m.fenced, m.stepDowns, m.outboxBytes, m.truncations, m.truncateDuration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// readiness holds the last error of a retrying loop, for /readyz.
type readiness struct {
	mu   sync.Mutex
	last error
	seen bool
}

func (r *readiness) set(err error) {
	r.mu.Lock()
	r.last, r.seen = err, true
	r.mu.Unlock()
}

func (r *readiness) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.seen {
		return errors.New("no publish attempt yet")
	}
	return r.last
}
