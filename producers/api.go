package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/txpipe/txpipe/docs"
	"github.com/txpipe/txpipe/producers/apikey"
)

// APIOptions configure the API: ingest (ingest.go) and the reads of the
// ledger (queries.go).
type APIOptions struct {
	Producer *Producer
	// Auth checks the Authorization header of every request.
	Auth Authenticator
	// RateLimit is the commands a second each API key may send on average
	// (a token bucket of RateBurst commands); 0 turns the limit off.
	RateLimit float64
	// RateBurst is the most commands a key may send at once; at least
	// MaxBatchCommands, so that any valid batch can pass. Default 2 × the
	// larger of RateLimit and MaxBatchCommands.
	RateBurst int
	// Ledger answers the read endpoints (*ledger.Queries on the read
	// replica when there is one).
	Ledger Ledger
	// Primary answers a read that asks for a version (min_version) the
	// replica has not replayed yet; nil when Ledger is the primary.
	Primary Ledger
	// MaxBodyBytes bounds a batch request body; a single command is bounded
	// by domain.MaxCommandBytes. Default 8 MiB.
	MaxBodyBytes int64
	// ProduceTimeout bounds the wait for Kafka's acknowledgement before the
	// API answers 503. Default 10 s.
	ProduceTimeout time.Duration
	Registerer     prometheus.Registerer
	Log            *slog.Logger
}

// Authenticator checks an Authorization header (*apikey.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, header string) (apikey.Identity, error)
}

// API is txpipe's HTTP API (docs/api.md): ingest and the reads
// of the ledger behind one router and one key check.
type API struct {
	opts    APIOptions
	metrics *apiMetrics
	limiter *limiter
	openAPI []byte // docs/openapi.yaml as JSON
}

// NewAPI checks o and registers the API's metrics.
func NewAPI(o APIOptions) (*API, error) {
	if o.Producer == nil || o.Auth == nil || o.Ledger == nil || o.Registerer == nil || o.Log == nil {
		return nil, errors.New("api: Producer, Auth, Ledger, Registerer and Log are required")
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 8 << 20
	}
	if o.ProduceTimeout <= 0 {
		o.ProduceTimeout = 10 * time.Second
	}
	if o.RateBurst < MaxBatchCommands {
		o.RateBurst = 2 * int(max(o.RateLimit, MaxBatchCommands))
	}
	m, err := newAPIMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	spec, err := openAPIJSON()
	if err != nil {
		return nil, err
	}
	return &API{opts: o, metrics: m, limiter: newLimiter(o.RateLimit, o.RateBurst), openAPI: spec}, nil
}

// openAPIJSON converts docs/openapi.yaml to JSON.
func openAPIJSON() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(docs.OpenAPI, &doc); err != nil {
		return nil, fmt.Errorf("read the OpenAPI document: %w", err)
	}
	return json.Marshal(doc)
}

// Handler routes the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	write, read := apikey.ScopeCommandsWrite, apikey.ScopeLedgerRead
	a.route(mux, "POST /v1/commands", "commands", write, a.postCommand)
	a.route(mux, "POST /v1/commands/batch", "commands_batch", write, a.postBatch)
	a.route(mux, "GET /v1/commands/{command_id}", "command", read, a.getCommand)
	a.route(mux, "GET /v1/accounts/{account_id}", "account", read, a.getAccount)
	a.route(mux, "GET /v1/accounts/{account_id}/entries", "entries", read, a.getEntries)
	a.route(mux, "GET /v1/transfers/{transfer_id}", "transfer", read, a.getTransfer)
	a.route(mux, "GET /v1/transfers", "transfers", read, a.listTransfers)
	a.route(mux, "GET /v1/holds", "holds", read, a.listHolds)
	a.route(mux, "GET /v1/accounts", "accounts", read, a.listAccounts)
	a.route(mux, "GET /v1/balances", "balances", read, a.getBalances)
	// The API's description is public: it holds no data.
	mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(a.openAPI)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := allowed(r.URL.Path); allow != "" {
			w.Header().Set("Allow", allow)
			writeProblem(w, problem{Status: http.StatusMethodNotAllowed, Type: "method-not-allowed", Title: "Method not allowed",
				Detail: "this route answers " + allow})
			return
		}
		writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "No such route",
			Detail: "see docs/api.md for the routes of this API"})
	})
	return mux
}

// allowed returns the methods of the route that path belongs to, or "".
func allowed(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(parts) == 2 && parts[0] == "v1" && parts[1] == "commands",
		len(parts) == 3 && parts[0] == "v1" && parts[1] == "commands" && parts[2] == "batch":
		return "POST"
	case len(parts) == 3 && parts[0] == "v1" && (parts[1] == "commands" || parts[1] == "accounts" || parts[1] == "transfers"),
		len(parts) == 2 && parts[0] == "v1" && slices.Contains([]string{"transfers", "holds", "accounts", "balances", "openapi.json"}, parts[1]),
		len(parts) == 4 && parts[0] == "v1" && parts[1] == "accounts" && parts[3] == "entries":
		return "GET"
	}
	return ""
}

// route registers h under pattern for keys with scope, counting and timing
// it under the bounded label route.
func (a *API) route(mux *http.ServeMux, pattern, route, scope string, h http.HandlerFunc) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		a.metrics.inFlight.Inc()
		defer a.metrics.inFlight.Dec()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		a.serveGuarded(sw, r, func() {
			if id, ok := a.authorize(sw, r, scope); ok {
				h(sw, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
			}
		})
		a.metrics.requests.WithLabelValues(route, fmt.Sprintf("%dxx", sw.status/100)).Inc()
		a.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type identityKey struct{}

// serveGuarded runs serve, and answers a panic in it (a txpipe bug) with a
// 500 problem instead of the dropped connection net/http would leave: the
// client learns the request failed and retries it with the same
// command_id, which is safe whether or not its commands reached Kafka. The stack is logged once and the panic counted.
func (a *API) serveGuarded(sw *statusWriter, r *http.Request, serve func()) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if v == http.ErrAbortHandler {
			panic(v) // net/http's own way to abort a response
		}
		a.metrics.panics.Inc()
		a.opts.Log.Error("request handler panicked", "route", r.Pattern, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		if sw.wrote {
			panic(http.ErrAbortHandler) // half an answer is out: only closing the connection says it failed
		}
		writeProblem(sw, problem{Status: http.StatusInternalServerError, Type: "internal-error", Title: "Internal error",
			Detail: "txpipe failed on this request; its commands may or may not have been accepted. Retry with the same command_id: a command is applied once whatever is retried"})
	}()
	serve()
}

// authorize answers 401 unless the request carries a valid key, and 403
// unless that key has scope. Both problems say nothing about why a key was
// refused.
func (a *API) authorize(w http.ResponseWriter, r *http.Request, scope string) (apikey.Identity, bool) {
	id, err := a.opts.Auth.Authenticate(r.Context(), r.Header.Get("Authorization"))
	switch {
	case errors.Is(err, apikey.ErrUnauthenticated):
		a.metrics.rejects.WithLabelValues("unauthorized").Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="txpipe"`)
		writeProblem(w, problem{Status: http.StatusUnauthorized, Type: "unauthorized", Title: "API key required",
			Detail: "send Authorization: Bearer <API key>; this one is missing, malformed, unknown or revoked"})
		return id, false
	case err != nil:
		a.opts.Log.Error("API keys cannot be read", "err", err)
		w.Header().Set("Retry-After", "1")
		writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Service unavailable",
			Detail: "API keys cannot be checked right now; retry"})
		return id, false
	case !id.Has(scope):
		a.metrics.rejects.WithLabelValues("forbidden").Inc()
		writeProblem(w, problem{Status: http.StatusForbidden, Type: "forbidden", Title: "Scope missing",
			Detail: "this API key lacks the scope " + scope})
		return id, false
	}
	return id, true
}
