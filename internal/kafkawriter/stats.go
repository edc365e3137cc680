package kafkawriter

import (
	"github.com/prometheus/client_golang/prometheus"
)

// StatsCollector exposes a Writer's counters to Prometheus, labelled
// writer="<name>".
type StatsCollector struct {
	w     *Writer
	descs map[string]*prometheus.Desc
}

// NewStatsCollector returns a collector of w's counters.
func NewStatsCollector(w *Writer, name string) *StatsCollector {
	d := func(metric, help string) *prometheus.Desc {
		return prometheus.NewDesc("txpipe_kafka_writer_"+metric, help, nil, prometheus.Labels{"writer": name})
	}
	return &StatsCollector{w: w, descs: map[string]*prometheus.Desc{
		"writes":   d("writes_total", "Produce requests the writer sent (one per broker per round)."),
		"messages": d("messages_total", "Records the writer sent, retries included."),
		"bytes":    d("bytes_total", "Bytes of records the writer sent."),
		"errors":   d("errors_total", "Partitions whose records a produce request failed to write."),
		"retries":  d("retries_total", "Rounds the writer retried after a partition failed."),
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
	for k, v := range map[string]int64{"writes": st.Writes, "messages": st.Messages, "bytes": st.Bytes, "errors": st.Errors, "retries": st.Retries} {
		ch <- prometheus.MustNewConstMetric(c.descs[k], prometheus.CounterValue, float64(v))
	}
}
