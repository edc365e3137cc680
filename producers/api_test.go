package producers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/kafkawriter"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/uuidv7"
	"github.com/txpipe/txpipe/producers"
)

type fixture struct {
	srv   *httptest.Server
	kc    *kafkatest.Cluster
	topic string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Commands
	w := kc.Writer(t)
	api, err := producers.NewAPI(producers.APIOptions{
		Producer: producers.NewProducer(w, topic), Pool: db.Pool, MaxBodyBytes: 256 << 10,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, kc: kc, topic: topic}
}

type problem struct {
	Type, Title, Detail string
	Status              int
	Errors              []domain.FieldError
}

func do(t *testing.T, method, url, body string) (*http.Response, problem) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var p problem
	if resp.Header.Get("Content-Type") == "application/problem+json" {
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatalf("undecodable problem body: %v", err)
		}
	}
	return resp, p
}

func deposit(amount string) string {
	return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"a","amount":%s,"currency":"EUR"}`, uuidv7.New(), amount)
}

func TestAPIRefusesBadInputWithProblems(t *testing.T) {
	f := setup(t)
	var many []string
	for range producers.MaxBatchCommands + 1 {
		many = append(many, deposit("1"))
	}
	tests := []struct {
		name, path, body string
		status           int
		pointer          string
	}{
		{"unknown field", "/v1/commands", `{"command_id":"` + uuidv7.New() + `","type":"deposit","account_id":"a","amount":1,"currency":"EUR","memo":"x"}`, 400, "/memo"},
		{"float amount", "/v1/commands", deposit("10.5"), 400, "/amount"},
		{"bad currency", "/v1/commands", strings.Replace(deposit("1"), "EUR", "EURO", 1), 400, "/currency"},
		{"trailing data", "/v1/commands", deposit("1") + `{}`, 400, ""},
		{"empty body", "/v1/commands", ``, 400, ""},
		{"command too large", "/v1/commands", `{"pad":"` + strings.Repeat("x", domain.MaxCommandBytes) + `"}`, 413, ""},
		{"batch too large", "/v1/commands/batch", `{"commands":["` + strings.Repeat("x", 256<<10) + `"]}`, 413, ""},
		{"batch item invalid", "/v1/commands/batch", `{"commands":[` + deposit("1") + `,` + deposit("0") + `]}`, 400, "/commands/1/amount"},
		{"batch too many", "/v1/commands/batch", `{"commands":[` + strings.Join(many, ",") + `]}`, 400, "/commands"},
		{"batch empty", "/v1/commands/batch", `{"commands":[]}`, 400, "/commands"},
		{"batch unknown field", "/v1/commands/batch", `{"commands":[],"extra":1}`, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, p := do(t, http.MethodPost, f.srv.URL+tt.path, tt.body)
			if resp.StatusCode != tt.status || p.Status != tt.status {
				t.Fatalf("POST %s = %d (problem status %d), want %d", tt.path, resp.StatusCode, p.Status, tt.status)
			}
			if !strings.HasPrefix(p.Type, producers.ProblemTypeBase) || p.Title == "" {
				t.Errorf("problem = %+v, want a txpipe type and a title", p)
			}
			if tt.pointer != "" {
				found := false
				for _, fe := range p.Errors {
					found = found || fe.Pointer == tt.pointer
				}
				if !found {
					t.Errorf("problem errors = %+v, want one at %s", p.Errors, tt.pointer)
				}
			}
		})
	}
	if n := f.kc.Count(context.Background(), t, f.topic); n != 0 {
		t.Errorf("commands topic holds %d records after only bad requests, want 0", n)
	}
}

func TestAPIAcceptsAndProducesKeyedByDebitAccount(t *testing.T) {
	f := setup(t)
	id := uuidv7.New()
	body := fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"payer","to_account_id":"payee","amount":7,"currency":"EUR"}`, strings.ToUpper(id))
	resp, _ := do(t, http.MethodPost, f.srv.URL+"/v1/commands", body)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Location") != "/v1/commands/"+id {
		t.Fatalf("POST = %d Location %q, want 202 and /v1/commands/%s", resp.StatusCode, resp.Header.Get("Location"), id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs := f.kc.ReadAll(ctx, t, f.topic, 1)
	if len(msgs) != 1 {
		t.Fatalf("commands topic holds %d records, want 1", len(msgs))
	}
	cmd, err := domain.DecodeCommand(msgs[0].Value)
	if err != nil {
		t.Fatalf("produced record does not decode: %v", err)
	}
	if string(msgs[0].Key) != "payer" || cmd.CommandID != id || cmd.Amount != 7 {
		t.Errorf("produced key %q command %+v, want key payer and the canonical command", msgs[0].Key, cmd)
	}
}

func TestAPIReadsAnswerProblems(t *testing.T) {
	f := setup(t)
	for path, want := range map[string]int{
		"/v1/commands/not-a-uuid":      400,
		"/v1/commands/" + uuidv7.New(): 404,
		"/v1/accounts/has%20space":     400,
		"/v1/accounts/nobody":          404,
		"/v2/anything":                 404,
		"/v1/commands":                 405,
	} {
		resp, p := do(t, http.MethodGet, f.srv.URL+path, "")
		if resp.StatusCode != want || p.Status != want {
			t.Errorf("GET %s = %d (problem %+v), want %d problem+json", path, resp.StatusCode, p, want)
		}
	}
}

// TestAPIAnswers503WhenKafkaIsDown points the producer at a port where no
// broker listens: the API must refuse to accept what it cannot store.
func TestAPIAnswers503WhenKafkaIsDown(t *testing.T) {
	db := pgtest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := kafkawriter.New(kafkawriter.Options{Brokers: []string{dead}, Transport: tr})
	defer w.Close()
	api, err := producers.NewAPI(producers.APIOptions{
		Producer: producers.NewProducer(w, "ledger.commands.v1"), Pool: db.Pool, ProduceTimeout: 500 * time.Millisecond,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	for _, c := range []struct{ path, body string }{
		{"/v1/commands", deposit("1")},
		{"/v1/commands/batch", `{"commands":[` + deposit("1") + `]}`},
	} {
		resp, p := do(t, http.MethodPost, srv.URL+c.path, c.body)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("POST %s with Kafka down = %d Retry-After %q, want 503 with Retry-After", c.path, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		if strings.Contains(p.Detail, dead) || strings.Contains(p.Detail, "dial") {
			t.Errorf("problem detail leaks a driver error: %q", p.Detail)
		}
	}
}
