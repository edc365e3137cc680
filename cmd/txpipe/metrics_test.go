package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestMetricsPassTheLinter scrapes a running "txpipe all" after some
// traffic and runs client_golang's metrics linter over everything it
// exposes; it also checks that txpipe's own series carry no account or
// command id in a label (cardinality must stay bounded).
func TestMetricsPassTheLinter(t *testing.T) {
	p := startPipeline(t)
	id := uuid.Must(uuid.NewV7()).String()
	p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"lint-1","currency":"EUR"}`, id))
	p.post(t, "/v1/commands", `{"bad": true}`)
	p.awaitOutcome(t, id)
	p.events(t, p.topics.Events, 1) // the relay has published
	eventually(t, "the relay counted its publish", func() bool {
		resp, err := http.Get(p.admin + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "txpipe_relay_published_total")
	})
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.New(strings.NewReader(string(body))).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, pr := range problems {
		t.Errorf("metric %s: %s", pr.Metric, pr.Text)
	}
	idLike := regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-|lint-1`)
	ours := 0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "txpipe_") {
			continue
		}
		ours++
		if idLike.MatchString(line) {
			t.Errorf("series carries an id in a label: %s", line)
		}
	}
	for _, want := range []string{"txpipe_ingest_requests_total", "txpipe_consumer_commands_total", "txpipe_relay_published_total", "txpipe_e2e_latency_seconds_bucket", "txpipe_postgres_pool_connections_acquired", `txpipe_kafka_writer_messages_total{writer="relay"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if ours == 0 {
		t.Fatal("no txpipe_ series exposed")
	}
}
