package producers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/apikey"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/kafkawriter"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/sealingtest"
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
		Producer: producers.NewProducer(w, topic), Auth: authorize(t, db), Ledger: queries(t, db), MaxBodyBytes: 256 << 10,
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

// bearer is the Authorization header do sends: a key with every scope,
// made by authorize for the test's database.
var bearer string

// authorize creates a key with every scope, makes do send it, and returns
// an authenticator over db.
func authorize(t *testing.T, db *pgtest.DB) producers.Authenticator {
	t.Helper()
	key, _, err := apikey.Create(context.Background(), db.Pool, "test", apikey.Scopes)
	if err != nil {
		t.Fatal(err)
	}
	bearer = "Bearer " + key
	return apikey.NewAuthenticator(db.Pool)
}

// queries reads db's ledger as ingest does, metadata opened with a fresh
// keyring.
func queries(t *testing.T, db *pgtest.DB) *ledger.Queries {
	t.Helper()
	return &ledger.Queries{Pool: db.Pool, Keyring: sealingtest.Keyring(t)}
}

func do(t *testing.T, method, url, body string) (*http.Response, problem) {
	t.Helper()
	return doAs(t, bearer, method, url, body)
}

func doAs(t *testing.T, authorization, method, url, body string) (*http.Response, problem) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
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
	return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"a","amount":%s,"currency":"EUR"}`, uuid.Must(uuid.NewV7()).String(), amount)
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
		{"unknown field", "/v1/commands", `{"command_id":"` + uuid.Must(uuid.NewV7()).String() + `","type":"deposit","account_id":"a","amount":1,"currency":"EUR","memo":"x"}`, 400, "/memo"},
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
		{"batch with a closing brace after it", "/v1/commands/batch", `{"commands":[` + deposit("1") + `]}}`, 400, ""},
		{"batch with a closing bracket after it", "/v1/commands/batch", `{"commands":[` + deposit("1") + `]}]`, 400, ""},
		{"batch with a second envelope after it", "/v1/commands/batch", `{"commands":[` + deposit("1") + `]} {"commands":[]}`, 400, ""},
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
	id := uuid.Must(uuid.NewV7()).String()
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
		"/v1/commands/not-a-uuid":                          400,
		"/v1/commands/" + uuid.Must(uuid.NewV7()).String(): 404,
		"/v1/accounts/has%20space":                         400,
		"/v1/accounts/nobody":                              404,
		"/v2/anything":                                     404,
		"/v1/commands":                                     405,
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
		Producer: producers.NewProducer(w, "ledger.commands.v1"), Auth: authorize(t, db), Ledger: queries(t, db), ProduceTimeout: 500 * time.Millisecond,
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

// TestAPIRequiresAKeyWithTheRightScope: every route answers 401 without a
// valid key (missing, malformed, unknown, wrong secret, revoked) and 403
// with a key lacking the route's scope, as problem+json that says nothing
// about which check failed.
func TestAPIRequiresAKeyWithTheRightScope(t *testing.T) {
	f := setup(t)
	db := pgtest.New(t)
	ctx := context.Background()
	reader, _, err := apikey.Create(ctx, db.Pool, "reader", []string{apikey.ScopeLedgerRead})
	if err != nil {
		t.Fatal(err)
	}
	kc := f.kc
	api, err := producers.NewAPI(producers.APIOptions{
		Producer: producers.NewProducer(kc.Writer(t), f.topic), Auth: apikey.NewAuthenticator(db.Pool), Ledger: queries(t, db),
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	writer, writerID, err := apikey.Create(ctx, db.Pool, "writer", []string{apikey.ScopeCommandsWrite})
	if err != nil {
		t.Fatal(err)
	}
	id, _, _ := apikey.Parse(writer)
	unknown := strings.Replace(writer, id, "0123456789abcdef", 1)
	wrongSecret := writer[:len(writer)-1] + map[bool]string{true: "B", false: "A"}[strings.HasSuffix(writer, "A")]
	for _, c := range []struct {
		name, auth, method, path string
		status                   int
	}{
		{"no header", "", "POST", "/v1/commands", 401},
		{"not bearer", "Basic " + writer, "POST", "/v1/commands", 401},
		{"malformed", "Bearer txp_nothex_x", "POST", "/v1/commands", 401},
		{"unknown key id", "Bearer " + unknown, "POST", "/v1/commands", 401},
		{"wrong secret", "Bearer " + wrongSecret, "POST", "/v1/commands", 401},
		{"read key writes", "Bearer " + reader, "POST", "/v1/commands", 403},
		{"read key writes a batch", "Bearer " + reader, "POST", "/v1/commands/batch", 403},
		{"write key reads", "Bearer " + writer, "GET", "/v1/accounts/a", 403},
		{"read key reads", "Bearer " + reader, "GET", "/v1/accounts/a", 404},
		{"write key writes", "Bearer " + writer, "POST", "/v1/commands", 202},
	} {
		resp, p := doAs(t, c.auth, c.method, srv.URL+c.path, deposit("1"))
		if resp.StatusCode != c.status {
			t.Errorf("%s: %s %s = %d, want %d", c.name, c.method, c.path, resp.StatusCode, c.status)
			continue
		}
		switch c.status {
		case 401:
			if p.Type != producers.ProblemTypeBase+"unauthorized" || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s: problem %q, WWW-Authenticate %q", c.name, p.Type, resp.Header.Get("WWW-Authenticate"))
			}
			if strings.Contains(p.Detail, "unknown key") || strings.Contains(p.Detail, "secret") {
				t.Errorf("%s: the detail says which check failed: %q", c.name, p.Detail)
			}
		case 403:
			if p.Type != producers.ProblemTypeBase+"forbidden" {
				t.Errorf("%s: problem %q, want forbidden", c.name, p.Type)
			}
		}
	}

	// The key that wrote records when it was last used (off the request
	// path, so wait for it).
	used := func() bool {
		keys, err := apikey.List(ctx, db.Pool)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k.KeyID == writerID {
				return k.LastUsedAt != nil
			}
		}
		return false
	}
	for deadline := time.Now().Add(30 * time.Second); !used(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("last_used_at of the writer key was never set")
		}
	}

	// A revoked key is refused once the cache forgets it (a fresh
	// authenticator here; CacheTTL in a running ingest).
	if err := apikey.Revoke(ctx, db.Pool, writerID); err != nil {
		t.Fatal(err)
	}
	fresh, err := apikey.NewAuthenticator(db.Pool).Authenticate(ctx, "Bearer "+writer)
	if !errors.Is(err, apikey.ErrUnauthenticated) {
		t.Errorf("revoked key: identity %+v, err %v; want ErrUnauthenticated", fresh, err)
	}
	keys, err := apikey.List(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.KeyID == writerID && (k.RevokedAt == nil) {
			t.Errorf("apikey list shows %s as not revoked", writerID)
		}
	}
}

// TestAPIRateLimitsEachKey: a key that spent its burst gets 429 with
// Retry-After and a problem; another key is not affected. The refill (one
// command per 1000 s) is far slower than the test, so no timing decides
// the outcome.
func TestAPIRateLimitsEachKey(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Commands
	ctx := context.Background()
	api, err := producers.NewAPI(producers.APIOptions{
		Producer: producers.NewProducer(kc.Writer(t), topic), Auth: apikey.NewAuthenticator(db.Pool), Ledger: queries(t, db),
		RateLimit: 0.001, RateBurst: producers.MaxBatchCommands,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	defer srv.Close()
	busy, _, _ := apikey.Create(ctx, db.Pool, "busy", apikey.Scopes)
	other, _, _ := apikey.Create(ctx, db.Pool, "other", apikey.Scopes)
	var batch []string
	for range producers.MaxBatchCommands - 1 {
		batch = append(batch, deposit("1"))
	}
	if resp, p := doAs(t, "Bearer "+busy, "POST", srv.URL+"/v1/commands/batch", `{"commands":[`+strings.Join(batch, ",")+`]}`); resp.StatusCode != 202 {
		t.Fatalf("first batch = %d %+v, want 202", resp.StatusCode, p)
	}
	// 999 spent of 1000: a batch of 2 is refused whole, one command passes.
	resp, p := doAs(t, "Bearer "+busy, "POST", srv.URL+"/v1/commands/batch", `{"commands":[`+deposit("1")+`,`+deposit("1")+`]}`)
	if resp.StatusCode != http.StatusTooManyRequests || p.Type != producers.ProblemTypeBase+"rate-limited" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("over the limit = %d %q Retry-After %q, want 429 rate-limited with Retry-After", resp.StatusCode, p.Type, resp.Header.Get("Retry-After"))
	}
	if resp, _ := doAs(t, "Bearer "+busy, "POST", srv.URL+"/v1/commands", deposit("1")); resp.StatusCode != 202 {
		t.Errorf("the last token = %d, want 202", resp.StatusCode)
	}
	if resp, _ := doAs(t, "Bearer "+other, "POST", srv.URL+"/v1/commands", deposit("1")); resp.StatusCode != 202 {
		t.Errorf("another key = %d, want 202 (buckets are per key)", resp.StatusCode)
	}
	if n := kc.Count(ctx, t, topic); n != int64(producers.MaxBatchCommands+1) {
		t.Errorf("topic holds %d commands, want %d: a refused batch must produce nothing", n, producers.MaxBatchCommands+1)
	}
}

// panickingWriter stands in for a bug on the request path.
type panickingWriter struct{}

func (panickingWriter) WriteMessages(context.Context, ...kafka.Message) error { panic("a bug") }

// TestHandlerPanicIsAProblemNotADroppedConnection: a panic while serving a
// request is answered 500 problem+json, counted, and the server goes on.
func TestHandlerPanicIsAProblemNotADroppedConnection(t *testing.T) {
	db := pgtest.New(t)
	reg := prometheus.NewRegistry()
	api, err := producers.NewAPI(producers.APIOptions{
		Producer: producers.NewProducer(panickingWriter{}, "commands"), Auth: authorize(t, db), Ledger: queries(t, db),
		Registerer: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	for range 2 { // the second shows the server survived the first
		resp, p := do(t, "POST", srv.URL+"/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"a","currency":"EUR"}`, uuid.Must(uuid.NewV7()).String()))
		if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("Content-Type") != "application/problem+json" || p.Type != producers.ProblemTypeBase+"internal-error" {
			t.Fatalf("POST with a panicking producer = %d %q %+v, want 500 problem+json internal-error", resp.StatusCode, resp.Header.Get("Content-Type"), p)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "txpipe_ingest_recovered_panics_total" {
			if got := mf.GetMetric()[0].GetCounter().GetValue(); got != 2 {
				t.Errorf("txpipe_ingest_recovered_panics_total = %v, want 2", got)
			}
			return
		}
	}
	t.Error("txpipe_ingest_recovered_panics_total is not registered")
}
