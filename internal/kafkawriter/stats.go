package kafkawriter

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// StatsCollector exposes a Writer's statistics as Prometheus counters,
// labelled writer="<name>". kafka-go's Writer.Stats returns the change since
// the previous call, so the collector adds each change to running totals
// under a lock: any number of scrapers see consistent, monotonic counters.
type StatsCollector struct {
	w    *kafka.Writer
	name string

	mu                                       sync.Mutex
	writes, messages, bytes, errors, retries float64

	descs map[string]*prometheus.Desc
}

// NewStatsCollector returns a collector for w; register it once.
func NewStatsCollector(w *kafka.Writer, name string) *StatsCollector {
	d := func(metric, help string) *prometheus.Desc {
		return prometheus.NewDesc("txpipe_kafka_writer_"+metric, help, nil, prometheus.Labels{"writer": name})
	}
	return &StatsCollector{w: w, name: name, descs: map[string]*prometheus.Desc{
		"writes":   d("writes_total", "Produce requests the writer sent."),
		"messages": d("messages_total", "Records the writer produced."),
		"bytes":    d("bytes_total", "Bytes of records the writer produced."),
		"errors":   d("errors_total", "Produce requests that failed."),
		"retries":  d("retries_total", "Produce requests retried."),
	}}
}

// Describe implements prometheus.Collector.
func (c *StatsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *StatsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.w.Stats()
	c.mu.Lock()
	c.writes += float64(st.Writes)
	c.messages += float64(st.Messages)
	c.bytes += float64(st.Bytes)
	c.errors += float64(st.Errors)
	c.retries += float64(st.Retries)
	values := map[string]float64{"writes": c.writes, "messages": c.messages, "bytes": c.bytes, "errors": c.errors, "retries": c.retries}
	c.mu.Unlock()
	for k, v := range values {
		ch <- prometheus.MustNewConstMetric(c.descs[k], prometheus.CounterValue, v)
	}
}
