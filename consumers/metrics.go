package consumers

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/txpipe/txpipe/internal/kafkafetch"
)

type metrics struct {
	records       *prometheus.CounterVec
	batchSize     prometheus.Histogram
	batchDuration prometheus.Histogram
	retries       *prometheus.CounterVec
	lag           *prometheus.GaugeVec
	halted        *prometheus.GaugeVec
	openTxn       *prometheus.GaugeVec
	misrouted     prometheus.Counter
	lastProcessed prometheus.Gauge
	offsetGaps    prometheus.Counter
	expired       prometheus.Counter
	statements    prometheus.Counter
	clockRaised   prometheus.Counter
	replayed      *prometheus.CounterVec
	panics        prometheus.Counter
	fetch         kafkafetch.Stats
}

// Names of the worker's metrics that others read (the status page).
const (
	// MetricCommands counts command records by label outcome (applied,
	// rejected, duplicate, OutcomeDLQ) and reason.
	MetricCommands = "txpipe_consumer_commands_total"
	// MetricLag is each partition's records not applied yet.
	MetricLag = "txpipe_consumer_lag_records"
	// OutcomeDLQ is MetricCommands' outcome for a record sent to the DLQ.
	OutcomeDLQ = "dlq"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricCommands,
			Help: "Command records processed, by outcome (applied, rejected, duplicate, dlq) and rejection or DLQ reason.",
		}, []string{"outcome", "reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_consumer_batch_size_records",
			Help:    "Records applied per transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_consumer_batch_duration_seconds",
			Help:    "Time to decode, apply and commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "txpipe_consumer_retries_total",
			Help: "Batch retries by cause: transient (PostgreSQL), fenced (stale position), split (isolating a bad record).",
		}, []string{"cause"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricLag,
			Help: "Records of the partition not applied yet: the end of its log minus the offset stored in PostgreSQL (after each fetch, and every 5 s even while stalled).",
		}, []string{"partition"}),
		openTxn: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "txpipe_consumer_open_transaction_records",
			Help: "Records of the partition held behind a producer transaction still open: its high watermark minus its last stable offset. Nothing after them can be read until the transaction ends (up to the producer's transaction timeout), though the lag (which counts to the last stable offset) may be 0.",
		}, []string{"partition"}),
		misrouted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_consumer_misrouted_records_total",
			Help: "Valid commands whose record key was not their debit account: a producer other than ingest keyed them wrong, so one account's commands may spread over partitions and apply out of the order sent.",
		}),
		halted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "txpipe_consumer_partition_halted",
			Help: "1 while the partition is halted: its stored offset does not fit the log (the commands topic was recreated or truncated) and it waits for txpipe offsets reset; 0 while it is consumed. Reported by the worker holding the partition.",
		}, []string{"partition"}),
		lastProcessed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "txpipe_consumer_last_processed_timestamp_seconds",
			Help: "Unix time of the last committed batch.",
		}),
		offsetGaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_consumer_skipped_offsets_total",
			Help: "Offsets missing from the log when a partition resumed (retention or a recreated topic): records neither applied nor dead-lettered.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_consumer_holds_expired_total",
			Help: "Holds expired by the workers' expirer.",
		}),
		clockRaised: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_consumer_clock_raised_total",
			Help: "Batches whose clock was moved forward to the day one of their accounts had already begun (a batch that read its clock before midnight and got its lock after; or PostgreSQL's clock stepping back).",
		}),
		statements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_consumer_statements_closed_total",
			Help: "Daily statements closed by the workers' closer (of accounts that did not move after their day; those that did close in the batch that moved them).",
		}),
	}
	m.replayed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "txpipe_consumer_replayed_records_total",
		Help: "Records sent back from the DLQ by txpipe dlq replay (header replayed_from) and processed, by outcome.",
	}, []string{"outcome"})
	m.panics = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "txpipe_consumer_recovered_panics_total",
		Help: "Panics the worker recovered, logged with their stack: deciding a record (dead-lettered with reason internal_error) or fetching (retried). Any is a txpipe bug.",
	})
	fetchCounter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
	}
	collectors := []prometheus.Collector{m.records, m.batchSize, m.batchDuration, m.retries, m.lag, m.openTxn, m.misrouted, m.halted, m.lastProcessed, m.offsetGaps, m.expired, m.statements, m.clockRaised, m.replayed, m.panics,
		fetchCounter("txpipe_kafka_fetch_requests_total", "Fetch requests the worker sent (one per broker per lane round).", &m.fetch.Requests),
		fetchCounter("txpipe_kafka_fetch_records_total", "Command records the worker fetched.", &m.fetch.Records),
		fetchCounter("txpipe_kafka_fetch_bytes_total", "Bytes of keys and values the worker fetched.", &m.fetch.Bytes),
		fetchCounter("txpipe_kafka_fetch_errors_total", "Fetch requests or partitions a broker answered with an error.", &m.fetch.Errors),
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// observeBatch counts a committed batch of n records and its verdict.
func (m *metrics) observeBatch(v *verdict, n int, took time.Duration) {
	m.batchSize.Observe(float64(n))
	m.batchDuration.Observe(took.Seconds())
	for k, c := range v.counts {
		m.records.WithLabelValues(k.outcome, k.reason).Add(float64(c))
	}
	for outcome, c := range v.replayed {
		m.replayed.WithLabelValues(outcome).Add(float64(c))
	}
	m.misrouted.Add(float64(v.misrouted))
	m.lastProcessed.SetToCurrentTime()
}
