package producers

import "github.com/prometheus/client_golang/prometheus"

// MetricCommandsAccepted counts the commands ingest accepted (Kafka
// acknowledged them); the status page reads it.
const MetricCommandsAccepted = "txpipe_ingest_commands_accepted_total"

type apiMetrics struct {
	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	produceDuration prometheus.Histogram
	payloadBytes    prometheus.Histogram
	rejects         *prometheus.CounterVec
	inFlight        prometheus.Gauge
	commands        prometheus.Counter
	panics          prometheus.Counter
	// primaryFallbacks counts reads sent to the primary because the
	// replica was behind the min_version asked for.
	primaryFallbacks prometheus.Counter
}

func newAPIMetrics(reg prometheus.Registerer) (*apiMetrics, error) {
	m := &apiMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "txpipe_ingest_requests_total",
			Help: "HTTP requests by route and status class.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "txpipe_ingest_request_duration_seconds",
			Help:    "HTTP request duration by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		produceDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_ingest_produce_duration_seconds",
			Help:    "Time for Kafka to acknowledge the commands of one request.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		payloadBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "txpipe_ingest_payload_bytes",
			Help:    "Request body sizes.",
			Buckets: prometheus.ExponentialBuckets(64, 4, 10),
		}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "txpipe_ingest_rejects_total",
			Help: "Requests refused before reaching Kafka, by reason.",
		}, []string{"reason"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "txpipe_ingest_requests_in_flight",
			Help: "HTTP requests being served.",
		}),
		commands: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricCommandsAccepted,
			Help: "Commands acknowledged by Kafka and answered 202.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_ingest_recovered_panics_total",
			Help: "Requests whose handler panicked, answered 500 and logged with the stack. Any is a txpipe bug.",
		}),
		primaryFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "txpipe_api_primary_fallbacks_total",
			Help: "Account reads sent to the primary because the replica had not reached the min_version asked for.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.produceDuration, m.payloadBytes, m.rejects, m.inFlight, m.commands, m.panics, m.primaryFallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
