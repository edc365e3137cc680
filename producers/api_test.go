package producers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/txpipe/txpipe/internal/freeport"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.yaml.in/yaml/v3"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/docs"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/kafkawriter"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/sealingtest"
	"github.com/txpipe/txpipe/producers"
	"github.com/txpipe/txpipe/producers/apikey"
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

// TestAPIAnswers503WhenKafkaIsDown points the producer at a port where no
// broker listens: the API must refuse to accept what it cannot store.
func TestAPIAnswers503WhenKafkaIsDown(t *testing.T) {
	db := pgtest.New(t)
	dead, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
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

// The tests below need no services: the API runs over stubAuth, a
// recordingWriter and a fakeLedger, and is called in process.

// testKey is the Authorization header serve sends; stubAuth gives it every
// scope.
const testKey = "Bearer test"

// stubAuth stands in for the api_keys table: testKey has every scope, any
// other header is unknown.
type stubAuth struct{}

func (stubAuth) Authenticate(_ context.Context, header string) (apikey.Identity, error) {
	if header != testKey {
		return apikey.Identity{}, apikey.ErrUnauthenticated
	}
	return apikey.Identity{KeyID: "0123456789abcdef", Name: "test", Scopes: apikey.Scopes}, nil
}

// newTestAPI returns the handler of an API over o, its zero fields filled
// with stubs: a producer to a recordingWriter, stubAuth, an empty
// fakeLedger, a fresh registry and a discarding log.
func newTestAPI(t *testing.T, o producers.APIOptions) http.Handler {
	t.Helper()
	if o.Producer == nil {
		o.Producer = producers.NewProducer(&recordingWriter{}, "ledger.commands.v1")
	}
	if o.Auth == nil {
		o.Auth = stubAuth{}
	}
	if o.Ledger == nil {
		o.Ledger = &fakeLedger{}
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	api, err := producers.NewAPI(o)
	if err != nil {
		t.Fatal(err)
	}
	return api.Handler()
}

// serve sends one request with testKey to h and returns the answer.
func serve(h http.Handler, method, target, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("Authorization", testKey)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// problemOf decodes the problem rec answered, failing unless it is
// problem+json whose status matches the response's.
func problemOf(t *testing.T, rec *httptest.ResponseRecorder) problem {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json; body %s", ct, rec.Body)
	}
	var p problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("undecodable problem body %q: %v", rec.Body, err)
	}
	if p.Status != rec.Code {
		t.Errorf("problem status = %d, response status %d", p.Status, rec.Code)
	}
	return p
}

func TestUnknownRoutesAnswerProblems(t *testing.T) {
	h := newTestAPI(t, producers.APIOptions{})
	for _, c := range []struct {
		method, path string
		status       int
		typ, allow   string
	}{
		{"GET", "/v2/anything", 404, "not-found", ""},
		{"GET", "/v1/commands", 405, "method-not-allowed", "POST"},
		{"POST", "/v1/accounts/a", 405, "method-not-allowed", "GET"},
		{"DELETE", "/v1/accounts/a/entries", 405, "method-not-allowed", "GET"},
	} {
		rec := serve(h, c.method, c.path, "")
		p := problemOf(t, rec)
		if rec.Code != c.status || p.Type != producers.ProblemTypeBase+c.typ || rec.Header().Get("Allow") != c.allow {
			t.Errorf("%s %s = %d %q Allow %q, want %d %q Allow %q", c.method, c.path, rec.Code, p.Type, rec.Header().Get("Allow"), c.status, c.typ, c.allow)
		}
	}
}

// GET /v1/openapi.json serves docs/openapi.yaml as JSON, without a key.
func TestOpenAPIDocumentIsServed(t *testing.T) {
	h := newTestAPI(t, producers.APIOptions{})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/openapi.json", nil))
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); rec.Code != http.StatusOK || err != nil {
		t.Fatalf("GET /v1/openapi.json = %d (%v) %.200s", rec.Code, err, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var want struct {
		OpenAPI string         `yaml:"openapi"`
		Paths   map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(docs.OpenAPI, &want); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" || doc.OpenAPI != want.OpenAPI || !cmp.Equal(slices.Sorted(maps.Keys(doc.Paths)), slices.Sorted(maps.Keys(want.Paths))) {
		t.Errorf("served openapi %q with paths %v, want docs/openapi.yaml's %q with %v",
			doc.OpenAPI, slices.Sorted(maps.Keys(doc.Paths)), want.OpenAPI, slices.Sorted(maps.Keys(want.Paths)))
	}
}
