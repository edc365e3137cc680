package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/containertest"
)

// analystPython is the analyst example's interpreter, in the virtualenv
// scripts/install-tools.sh makes in the cache; the test skips without it
// (CI's install step fails instead).
func analystPython(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("TXPIPE_CACHE_DIR")
	if cache == "" {
		cache = filepath.Join("..", "..", ".cache")
	}
	py := filepath.Join(cache, "analyst-venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		t.Skipf("no analyst virtualenv at %s (scripts/install-tools.sh makes it)", py)
	}
	return py
}

// TestPythonAnalystRebuildsEveryBalance runs examples/analyst/analyst.py
// (confluent-kafka, DuckDB) against the real broker after the README's
// payment flows: every balance it rebuilds from the postings topic equals
// the API's, every chain holds, and a forged posting makes it fail naming
// the account.
func TestPythonAnalystRebuildsEveryBalance(t *testing.T) {
	containertest.Env(t, "TXPIPE_KAFKA_BROKERS")
	py := analystPython(t)
	p := startPipeline(t)
	runPaymentFlows(t, p, readmeSection(t, "payment-flows"))
	p.verify(t) // drained: every posting is on the topic

	run := func() (map[string]any, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, py, filepath.Join("..", "..", "examples", "analyst", "analyst.py"),
			"--brokers", strings.Join(p.kc.Brokers, ","), "--topic", p.topics.Postings, "--json")
		var out, errs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errs
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("analyst.py: %v\n%s", err, errs.String())
		}
		var res map[string]any
		if code != 2 {
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("analyst.py printed %q (%v); stderr:\n%s", out.String(), err, errs.String())
			}
		}
		return res, errs.String(), code
	}

	res, stderr, code := run()
	if code != 0 {
		t.Fatalf("analyst.py exit %d on the pipeline's own output:\n%s", code, stderr)
	}
	balances, _ := res["balances"].(map[string]any)
	if len(balances) < 10 {
		t.Fatalf("analyst.py rebuilt %d balances, want every account the flows moved: %v", len(balances), res)
	}
	for acct, b := range balances {
		var a struct{ Balance int64 }
		if code := p.get(t, "/v1/accounts/"+url.PathEscape(acct), &a); code != http.StatusOK || float64(a.Balance) != b {
			t.Errorf("account %s: analyst.py rebuilt %v, the API says %d (%d)", acct, b, a.Balance, code)
		}
	}

	// A posting of shop's forged at its next version: the chain breaks.
	var shop struct{ Version, Balance int64 }
	p.get(t, "/v1/accounts/shop", &shop)
	forged := domain.Event{EventID: uuid.Must(uuid.NewV7()).String(), Type: "posting.created", CommandID: uuid.Must(uuid.NewV7()).String(),
		OccurredAt: time.Now().UTC(), Data: json.RawMessage(`{"account_id":"shop","account_version":` + itoa(shop.Version+1) +
			`,"currency":"EUR","amount":1,"balance_after":` + itoa(shop.Balance+1) + `,"command_type":"deposit","digest":"` + strings.Repeat("ab", 32) + `"}`)}
	if err := p.kc.Writer(t).WriteMessages(context.Background(), kafka.Message{Topic: p.topics.Postings, Key: []byte("shop"), Value: forged.Encode()}); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := run(); code != 1 || !strings.Contains(stderr, "account shop: version "+itoa(shop.Version+1)+" does not chain") {
		t.Errorf("analyst.py with a forged posting: exit %d\n%s\nwant 1 naming shop's version %d", code, stderr, shop.Version+1)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
