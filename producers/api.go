package producers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
	"github.com/txpipe/txpipe/internal/apikey"
)

// MaxBatchCommands is the most commands one batch request may carry.
const MaxBatchCommands = 1000

// APIOptions configure the ingest API.
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
	// Pool serves the read endpoints.
	Pool *pgxpool.Pool
	// Keyring opens the sealed metadata of accounts for keys allowed to
	// read the ledger.
	Keyring *sealing.Keyring
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

// API is the ingest HTTP API (DESIGN.md, "HTTP API").
type API struct {
	opts    APIOptions
	metrics *apiMetrics
	limiter *limiter
}

// NewAPI checks o and registers the API's metrics.
func NewAPI(o APIOptions) (*API, error) {
	if o.Producer == nil || o.Auth == nil || o.Pool == nil || o.Keyring == nil || o.Registerer == nil || o.Log == nil {
		return nil, errors.New("api: Producer, Auth, Pool, Keyring, Registerer and Log are required")
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
	return &API{opts: o, metrics: m, limiter: newLimiter(o.RateLimit, o.RateBurst)}, nil
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

// allow spends n commands of the caller's rate limit, or answers 429 with
// Retry-After.
func (a *API) allow(w http.ResponseWriter, r *http.Request, n int) bool {
	id, _ := r.Context().Value(identityKey{}).(apikey.Identity)
	ok, wait := a.limiter.take(id.KeyID, n, time.Now())
	if ok {
		return true
	}
	a.metrics.rejects.WithLabelValues("rate_limited").Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	writeProblem(w, problem{Status: http.StatusTooManyRequests, Type: "rate-limited", Title: "Too many commands",
		Detail: fmt.Sprintf("this API key may send %g commands a second (bursts of %d); retry after the time in Retry-After", a.opts.RateLimit, a.opts.RateBurst)})
	return false
}

type acceptedResponse struct {
	CommandID string `json:"command_id"`
	Status    string `json:"status"`
}

func (a *API) postCommand(w http.ResponseWriter, r *http.Request) {
	body, ok := a.readBody(w, r, domain.MaxCommandBytes)
	if !ok {
		return
	}
	cmd, err := domain.DecodeCommand(body)
	if err != nil {
		a.invalid(w, err, "")
		return
	}
	if !a.allow(w, r, 1) {
		return
	}
	if _, err := a.send(r, []domain.Command{cmd}); err != nil {
		a.unavailable(w, err)
		return
	}
	w.Header().Set("Location", "/v1/commands/"+cmd.CommandID)
	writeJSON(w, http.StatusAccepted, acceptedResponse{CommandID: cmd.CommandID, Status: "accepted"})
}

type batchRequest struct {
	Commands []json.RawMessage `json:"commands"`
}

// atEOF reports whether dec has nothing left but white space.
func atEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return err == io.EOF
}

type batchItem struct {
	CommandID string `json:"command_id"`
	Status    string `json:"status"` // accepted | failed
	Detail    string `json:"detail,omitempty"`
}

// postBatch validates every command before producing any: one invalid
// command refuses the whole batch with 400 and the errors of every item, so
// a batch is never half accepted for a client mistake. A partial Kafka
// failure answers 503 with the per-item results; retrying the whole batch is
// safe because command_ids make it idempotent.
func (a *API) postBatch(w http.ResponseWriter, r *http.Request) {
	body, ok := a.readBody(w, r, a.opts.MaxBodyBytes)
	if !ok {
		return
	}
	var req batchRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.Commands == nil || !atEOF(dec) {
		a.metrics.rejects.WithLabelValues("invalid_batch").Inc()
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid batch",
			Detail: `the body must be one JSON object {"commands": [ ... ]} and nothing else`})
		return
	}
	if len(req.Commands) == 0 || len(req.Commands) > MaxBatchCommands {
		a.metrics.rejects.WithLabelValues("batch_size").Inc()
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid batch",
			Detail: fmt.Sprintf("a batch holds 1 to %d commands, this one %d", MaxBatchCommands, len(req.Commands)),
			Errors: []domain.FieldError{{Pointer: "/commands", Detail: "must hold 1 to 1000 commands"}}})
		return
	}
	cmds := make([]domain.Command, len(req.Commands))
	verr := &domain.ValidationError{}
	for i, raw := range req.Commands {
		cmd, err := domain.DecodeCommand(raw)
		var ve *domain.ValidationError
		if errors.As(err, &ve) {
			for _, fe := range ve.Errors {
				verr.Errors = append(verr.Errors, domain.FieldError{Pointer: "/commands/" + strconv.Itoa(i) + fe.Pointer, Detail: fe.Detail})
			}
			continue
		}
		cmds[i] = cmd
	}
	if len(verr.Errors) > 0 {
		a.invalid(w, verr, "no command of this batch was accepted")
		return
	}
	if !a.allow(w, r, len(cmds)) {
		return
	}
	errs, err := a.send(r, cmds)
	items := make([]batchItem, len(cmds))
	for i, c := range cmds {
		items[i] = batchItem{CommandID: c.CommandID, Status: "accepted"}
		if errs[i] != nil {
			items[i] = batchItem{CommandID: c.CommandID, Status: "failed", Detail: "not stored in Kafka; retry with the same command_id"}
		}
	}
	if err != nil {
		a.opts.Log.Warn("batch produce failed", "err", err, "commands", len(cmds))
		w.Header().Set("Retry-After", "1")
		writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Commands not stored",
			Detail:  "some or all commands could not be stored; retry the failed ones (or the batch) with the same command_ids",
			Results: items})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"results": items})
}

func (a *API) send(r *http.Request, cmds []domain.Command) ([]error, error) {
	ctx, cancel := contextWithTimeout(r, a.opts.ProduceTimeout)
	defer cancel()
	start := time.Now()
	id, _ := r.Context().Value(identityKey{}).(apikey.Identity)
	errs, err := a.opts.Producer.Send(ctx, cmds, id.KeyID)
	a.metrics.produceDuration.Observe(time.Since(start).Seconds())
	if err == nil {
		a.metrics.commands.Add(float64(len(cmds)))
	}
	return errs, err
}

type commandResponse struct {
	CommandID string  `json:"command_id"`
	Type      *string `json:"type,omitempty"` // unknown for a dead-lettered record without a valid type
	Status    string  `json:"status"`
	Reason    *string `json:"reason,omitempty"`
	// Detail says why a dead-lettered record was refused.
	Detail      *string   `json:"detail,omitempty"`
	ProcessedAt time.Time `json:"processed_at"`
}

func (a *API) getCommand(w http.ResponseWriter, r *http.Request) {
	id, ok := domain.CanonicalUUID(r.PathValue("command_id"))
	if !ok {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid command id",
			Detail: "a command_id is a UUID", Errors: []domain.FieldError{{Pointer: "/command_id", Detail: "must be a UUID"}}})
		return
	}
	var resp commandResponse
	// A decision wins over a dead-lettering, whichever came first: a
	// replay that decided the command replaces dead_lettered.
	err := a.opts.Pool.QueryRow(r.Context(), `SELECT command_id::text, type, status, reason, NULL, processed_at
		FROM processed_commands WHERE command_id = $1
		UNION ALL
		SELECT command_id::text, type, 'dead_lettered', reason, detail, dead_lettered_at
		FROM dead_lettered_commands WHERE command_id = $1
			AND NOT EXISTS (SELECT 1 FROM processed_commands WHERE command_id = $1)`,
		id).Scan(&resp.CommandID, &resp.Type, &resp.Status, &resp.Reason, &resp.Detail, &resp.ProcessedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Command not processed",
			Detail: "no outcome for this command_id yet: it is still in flight, or was never accepted"})
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	resp.ProcessedAt = resp.ProcessedAt.UTC()
	writeJSON(w, http.StatusOK, resp)
}

type accountResponse struct {
	AccountID       string          `json:"account_id"`
	Currency        string          `json:"currency"`
	Status          string          `json:"status"`
	External        bool            `json:"external,omitempty"`
	Balance         int64           `json:"balance"`
	Available       int64           `json:"available"`
	PendingHolds    int64           `json:"pending_holds"`
	OverdraftLimit  int64           `json:"overdraft_limit"`
	DailyDebitLimit *int64          `json:"daily_debit_limit"`
	Version         int64           `json:"version"`
	Metadata        json.RawMessage `json:"metadata,omitempty"`
	CreatedAt       time.Time       `json:"created_at"`
	UpdatedAt       time.Time       `json:"updated_at"`
}

// accountID reads the account id of the path; it answers 400 and returns
// false when the id cannot name an account (external ones included).
func accountID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("account_id")
	if !domain.ValidAccountID(id) && !(strings.HasPrefix(id, domain.ExternalPrefix) && domain.ValidCurrency(strings.TrimPrefix(id, domain.ExternalPrefix))) {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid account id",
			Errors: []domain.FieldError{{Pointer: "/account_id", Detail: "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'"}}})
		return "", false
	}
	return id, true
}

func accountNotFound(w http.ResponseWriter) {
	writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Account not found",
		Detail: "no account has this id (an open_account may still be in flight)"})
}

func (a *API) getAccount(w http.ResponseWriter, r *http.Request) {
	id, ok := accountID(w, r)
	if !ok {
		return
	}
	var resp accountResponse
	var daily int64
	var plain, keyID pgtype.Text
	var sealed []byte
	err := a.opts.Pool.QueryRow(r.Context(), `SELECT account_id, currency, status, external, balance, held,
			overdraft_limit, daily_debit_limit, version, metadata::text, metadata_key_id, metadata_sealed, created_at, updated_at
		FROM accounts WHERE account_id = $1`, id).Scan(&resp.AccountID, &resp.Currency, &resp.Status, &resp.External,
		&resp.Balance, &resp.PendingHolds, &resp.OverdraftLimit, &daily, &resp.Version, &plain, &keyID, &sealed, &resp.CreatedAt, &resp.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		accountNotFound(w)
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	resp.Available = resp.Balance - resp.PendingHolds
	if daily > 0 {
		resp.DailyDebitLimit = &daily
	}
	switch {
	case keyID.Valid:
		md, err := a.opts.Keyring.Open(keyID.String, sealed, sealing.MetadataAAD(id))
		if err != nil {
			a.internal(w, r, fmt.Errorf("open the metadata of account %s: %w", id, err))
			return
		}
		resp.Metadata = md
	case plain.Valid: // written before metadata was sealed; `metadata-key rotate` seals it
		resp.Metadata = json.RawMessage(plain.String)
	}
	resp.CreatedAt, resp.UpdatedAt = resp.CreatedAt.UTC(), resp.UpdatedAt.UTC()
	writeJSON(w, http.StatusOK, resp)
}

// Statement paging limits.
const (
	defaultEntries = 50
	maxEntries     = 1000
)

type entry struct {
	AccountVersion int64     `json:"account_version"`
	CommandID      string    `json:"command_id"`
	CommandType    string    `json:"command_type"`
	Currency       string    `json:"currency"`
	Amount         int64     `json:"amount"`
	BalanceAfter   int64     `json:"balance_after"`
	CreatedAt      time.Time `json:"created_at"`
}

type entriesResponse struct {
	AccountID string  `json:"account_id"`
	Entries   []entry `json:"entries"`
	// NextAfter is the cursor of the next (older) page, absent on the last.
	NextAfter *int64 `json:"next_after,omitempty"`
}

// getEntries pages through an account's statement, newest first. The cursor
// is an account_version: versions never change once written and new entries
// only get higher ones, so a page never shifts under concurrent writes.
func (a *API) getEntries(w http.ResponseWriter, r *http.Request) {
	id, ok := accountID(w, r)
	if !ok {
		return
	}
	limit, after := int64(defaultEntries), int64(0)
	var errs []domain.FieldError
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > maxEntries {
			errs = append(errs, domain.FieldError{Pointer: "/limit", Detail: fmt.Sprintf("must be an integer from 1 to %d", maxEntries)})
		}
		limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			errs = append(errs, domain.FieldError{Pointer: "/after", Detail: "must be a cursor from next_after (a positive integer)"})
		}
		after = n
	}
	if len(errs) > 0 {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid query", Errors: errs})
		return
	}
	var exists bool
	if err := a.opts.Pool.QueryRow(r.Context(), `SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)`, id).Scan(&exists); err != nil {
		a.internal(w, r, err)
		return
	}
	if !exists {
		accountNotFound(w)
		return
	}
	rows, err := a.opts.Pool.Query(r.Context(), `SELECT account_version, command_id::text, command_type, currency, amount, balance_after, created_at
		FROM entries WHERE account_id = $1 AND ($2 = 0 OR account_version < $2)
		ORDER BY account_version DESC LIMIT $3`, id, after, limit+1)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	entries, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (entry, error) {
		var e entry
		err := row.Scan(&e.AccountVersion, &e.CommandID, &e.CommandType, &e.Currency, &e.Amount, &e.BalanceAfter, &e.CreatedAt)
		e.CreatedAt = e.CreatedAt.UTC()
		return e, err
	})
	if err != nil {
		a.internal(w, r, err)
		return
	}
	resp := entriesResponse{AccountID: id, Entries: entries}
	if int64(len(entries)) > limit {
		resp.Entries = entries[:limit]
		next := entries[limit-1].AccountVersion
		resp.NextAfter = &next
	}
	if resp.Entries == nil {
		resp.Entries = []entry{}
	}
	writeJSON(w, http.StatusOK, resp)
}

type transferResponse struct {
	domain.TransferData
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

func (a *API) getTransfer(w http.ResponseWriter, r *http.Request) {
	id, ok := domain.CanonicalUUID(r.PathValue("transfer_id"))
	if !ok {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid transfer id",
			Detail: "a transfer_id is the UUID of the command that made it", Errors: []domain.FieldError{{Pointer: "/transfer_id", Detail: "must be a UUID"}}})
		return
	}
	var t transferResponse
	var kind, status string
	var expires pgtype.Timestamptz
	err := a.opts.Pool.QueryRow(r.Context(), `SELECT transfer_id::text, kind, from_account_id, to_account_id, currency, amount,
			captured_amount, reversed_amount, status, expires_at, created_at, updated_at
		FROM transfers WHERE transfer_id = $1`, id).Scan(&t.TransferID, &kind, &t.FromAccountID, &t.ToAccountID, &t.Currency,
		&t.Amount, &t.CapturedAmount, &t.ReversedAmount, &status, &expires, &t.CreatedAt, &t.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Transfer not found",
			Detail: "no transfer, deposit, withdrawal or hold has this id (its command may still be in flight, or was rejected)"})
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	t.Kind, t.Status = domain.TransferKind(kind), domain.TransferStatus(status)
	if expires.Valid {
		e := expires.Time.UTC()
		t.ExpiresAt = &e
	}
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	writeJSON(w, http.StatusOK, t)
}

// readBody reads at most limit bytes; a larger body is refused with 413.
// The Content-Type is not checked: the body must parse as JSON whatever a
// client labels it (curl -d sends a form type), and a strict parser is the
// real gate.
func (a *API) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	a.metrics.payloadBytes.Observe(float64(len(body)))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		a.metrics.rejects.WithLabelValues("too_large").Inc()
		writeProblem(w, problem{Status: http.StatusRequestEntityTooLarge, Type: "too-large", Title: "Request body too large",
			Detail: fmt.Sprintf("the body may be at most %d bytes", limit)})
		return nil, false
	}
	if err != nil {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Unreadable body",
			Detail: "the request body could not be read"})
		return nil, false
	}
	return body, true
}

func (a *API) invalid(w http.ResponseWriter, err error, detail string) {
	var verr *domain.ValidationError
	if !errors.As(err, &verr) {
		verr = &domain.ValidationError{Errors: []domain.FieldError{{Detail: "invalid command"}}}
	}
	a.metrics.rejects.WithLabelValues("invalid_command").Inc()
	if detail == "" {
		detail = "the command was not accepted; fix the fields listed in errors"
	}
	writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-command", Title: "Invalid command",
		Detail: detail, Errors: verr.Errors})
}

func (a *API) unavailable(w http.ResponseWriter, err error) {
	a.opts.Log.Warn("produce failed", "err", err)
	w.Header().Set("Retry-After", "1")
	writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Command not stored",
		Detail: "the command could not be stored durably; retry with the same command_id"})
}

func (a *API) internal(w http.ResponseWriter, r *http.Request, err error) {
	a.opts.Log.Error("request failed", "route", r.Pattern, "err", err)
	w.Header().Set("Retry-After", "1")
	writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Ledger unavailable",
		Detail: "the ledger could not be read; retry shortly"})
}
