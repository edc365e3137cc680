package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// TestRealPrometheusScrapesEveryStage starts Debian's Prometheus scraping a
// running pipeline every second with deploy/prometheus/rules.yml, puts a
// little load through it, and asks Prometheus's HTTP API whether each
// stage's series exist and move, and whether the recording rules evaluate.
func TestRealPrometheusScrapesEveryStage(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("prometheus not found; .ci/run installs Debian's prometheus package")
		}
		t.Skip("prometheus not found: apt-get install prometheus")
	}
	p := startPipeline(t)
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [rules.yml]
scrape_configs:
  - job_name: txpipe-all
    static_configs: [{targets: [%q]}]
`, strings.TrimPrefix(p.admin, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	web := freeAddr(t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web, "--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("prometheus log:\n%s", tail(string(b), 3000))
		}
	}()
	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Status string
			Data   struct {
				Result []struct {
					Value [2]any
				}
			}
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" || len(r.Data.Result) == 0 {
			return 0, false
		}
		var v float64
		_, err = fmt.Sscan(fmt.Sprint(r.Data.Result[0].Value[1]), &v)
		return v, err == nil
	}
	send := func(n int) {
		for range n {
			id := uuid.Must(uuid.NewV7()).String()
			p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"prom-%s","currency":"EUR"}`, id, id[24:]))
		}
	}
	stages := []string{
		`sum(txpipe_ingest_requests_total)`,
		`sum(txpipe_consumer_commands_total)`,
		`sum(txpipe_relay_published_total)`,
		`sum(txpipe_e2e_latency_seconds_count)`,
	}
	send(5)
	p.post(t, "/v1/commands", `{"type":"deposit"}`) // a refusal, for the rejects series
	first := map[string]float64{}
	eventually(t, "Prometheus sees every stage", func() bool {
		for _, q := range stages {
			v, ok := query(q)
			if !ok || v < 5 {
				return false
			}
			first[q] = v
		}
		return true
	})
	send(5)
	eventually(t, "every stage's series move", func() bool {
		for _, q := range stages {
			if v, ok := query(q); !ok || v <= first[q] {
				return false
			}
		}
		return true
	})
	// Recording rules evaluate to a value (the latency one caught a
	// bucket label that reads le="1.0" when scraped as OpenMetrics).
	for _, q := range []string{`txpipe:commands_accepted:rate5m`, `txpipe:commands_processed:rate5m`, `txpipe:e2e_latency_slow:ratio_rate5m`} {
		eventually(t, q+" has a value", func() bool { _, ok := query(q); return ok })
	}
	if v, ok := query(`up{job="txpipe-all"}`); !ok || v != 1 {
		t.Errorf("up = %v (%v), want 1", v, ok)
	}

	// Every panel query of the Grafana dashboard parses and returns data.
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "dashboards", "txpipe.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	n := 0
	for _, panel := range dash.Panels {
		for _, target := range panel.Targets {
			n++
			eventually(t, fmt.Sprintf("panel %q query %s returns data", panel.Title, target.Expr), func() bool {
				_, ok := query(target.Expr)
				return ok
			})
		}
	}
	if n < 20 {
		t.Errorf("the dashboard has %d queries; it lost its panels", n)
	}
}
