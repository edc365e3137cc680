package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/producers/apikey"
)

// Ledger is what the read endpoints ask of the ledger; *ledger.Queries
// answers it from PostgreSQL. Each method returns ledger.ErrNotFound when
// nothing has the id, which the API answers 404; any other error (ctx
// ended, the database unreachable, metadata that cannot be opened) is
// logged and answered 503, and its text never reaches the client. The API
// calls it from many requests at once.
type Ledger interface {
	// Outcome is the decision on a command, or its dead-lettering.
	Outcome(ctx context.Context, commandID string) (ledger.Outcome, error)
	// Account is an account with its metadata opened.
	Account(ctx context.Context, accountID string) (ledger.Account, error)
	// Statement is up to limit entries of an account, newest first, with
	// account versions below before (0: from the newest).
	Statement(ctx context.Context, accountID string, before, limit int64) ([]ledger.StatementEntry, error)
	// Transfer is a transfer, deposit, withdrawal or hold.
	Transfer(ctx context.Context, transferID string) (ledger.Transfer, error)
	// TransferByReference is the transfer the applied money command with
	// that reference made.
	TransferByReference(ctx context.Context, reference string) (ledger.Transfer, error)
}

type commandResponse struct {
	CommandID string  `json:"command_id"`
	Type      *string `json:"type,omitempty"` // unknown for a dead-lettered record without a valid type
	Status    string  `json:"status"`
	Reason    *string `json:"reason,omitempty"`
	// Leg is the transaction leg a rejection is about.
	Leg *int `json:"leg,omitempty"`
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
	o, err := a.opts.Ledger.Outcome(r.Context(), id)
	if err == nil && !caller(r).Covers(o.DebitAccountID) {
		err = ledger.ErrNotFound // another tenant's: as if it did not exist
	}
	if errors.Is(err, ledger.ErrNotFound) {
		writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Command not processed",
			Detail: "no outcome for this command_id yet: it is still in flight, or was never accepted"})
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	resp := commandResponse{CommandID: o.CommandID, Status: o.Status, Reason: o.Reason, Leg: o.Leg, Detail: o.Detail, ProcessedAt: o.At}
	if o.Type != "" {
		resp.Type = &o.Type
	}
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
	FeePlan         *domain.FeePlan `json:"fee_plan,omitempty"`
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
	if !caller(r).Covers(id) {
		// The scope depends on the id alone: refused before any read, the
		// answer is the same whether the account exists or not.
		accountNotFound(w)
		return
	}
	acc, err := a.opts.Ledger.Account(r.Context(), id)
	if errors.Is(err, ledger.ErrNotFound) {
		accountNotFound(w)
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	resp := accountResponse{
		AccountID: acc.ID, Currency: acc.Currency, Status: acc.Status, External: acc.External,
		Balance: acc.Balance, Available: acc.Balance - acc.Held, PendingHolds: acc.Held,
		OverdraftLimit: acc.OverdraftLimit, Version: acc.Version, Metadata: acc.Metadata, FeePlan: acc.FeePlan,
		CreatedAt: acc.CreatedAt, UpdatedAt: acc.UpdatedAt,
	}
	if acc.DailyDebitLimit > 0 {
		resp.DailyDebitLimit = &acc.DailyDebitLimit
	}
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
	// One entry more than the page says whether an older page exists.
	if !caller(r).Covers(id) {
		accountNotFound(w) // before any read, as for the account
		return
	}
	rows, err := a.opts.Ledger.Statement(r.Context(), id, after, limit+1)
	if errors.Is(err, ledger.ErrNotFound) {
		accountNotFound(w)
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	page, more := rows, int64(len(rows)) > limit
	if more {
		page = rows[:limit]
	}
	resp := entriesResponse{AccountID: id, Entries: make([]entry, len(page))} // [] when empty, never null
	for i, e := range page {
		resp.Entries[i] = entry{AccountVersion: e.AccountVersion, CommandID: e.CommandID, CommandType: e.CommandType,
			Currency: e.Currency, Amount: e.Amount, BalanceAfter: e.BalanceAfter, CreatedAt: e.CreatedAt}
	}
	if more {
		next := page[limit-1].AccountVersion
		resp.NextAfter = &next
	}
	writeJSON(w, http.StatusOK, resp)
}

type transferResponse struct {
	domain.TransferData
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

func newTransferResponse(t ledger.Transfer) transferResponse {
	return transferResponse{TransferData: t.TransferData, Metadata: t.Metadata, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt}
}

type transfersResponse struct {
	Transfers []transferResponse `json:"transfers"`
}

// listTransfers finds transfers. Today it answers the reference filter,
// which names at most one transfer; the other filters of the contract
// (account, status, type, time range, paging) are refused with 400 until
// they are served, rather than ignored.
func (a *API) listTransfers(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var errs []domain.FieldError
	for name := range q {
		if name != "reference" {
			errs = append(errs, domain.FieldError{Pointer: "/" + name, Detail: "is not a filter this API serves yet (only reference)"})
		}
	}
	ref := q.Get("reference")
	if len(q["reference"]) != 1 || !domain.ValidReference(ref) {
		errs = append(errs, domain.FieldError{Pointer: "/reference", Detail: fmt.Sprintf("is required, once: 1 to %d printable ASCII characters", domain.MaxReferenceLen)})
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(x, y domain.FieldError) int { return strings.Compare(x.Pointer, y.Pointer) })
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid query", Errors: errs})
		return
	}
	resp := transfersResponse{Transfers: []transferResponse{}}
	t, err := a.opts.Ledger.TransferByReference(r.Context(), ref)
	if err == nil && !touches(caller(r), t) {
		err = ledger.ErrNotFound
	}
	switch {
	case errors.Is(err, ledger.ErrNotFound):
	case err != nil:
		a.internal(w, r, err)
		return
	default:
		resp.Transfers = append(resp.Transfers, newTransferResponse(t))
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *API) getTransfer(w http.ResponseWriter, r *http.Request) {
	id, ok := domain.CanonicalUUID(r.PathValue("transfer_id"))
	if !ok {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid transfer id",
			Detail: "a transfer_id is the UUID of the command that made it", Errors: []domain.FieldError{{Pointer: "/transfer_id", Detail: "must be a UUID"}}})
		return
	}
	t, err := a.opts.Ledger.Transfer(r.Context(), id)
	if err == nil && !touches(caller(r), t) {
		err = ledger.ErrNotFound
	}
	if errors.Is(err, ledger.ErrNotFound) {
		writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Transfer not found",
			Detail: "no transfer, deposit, withdrawal or hold has this id (its command may still be in flight, or was rejected)"})
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newTransferResponse(t))
}

// caller is the key the request was authenticated with.
func caller(r *http.Request) apikey.Identity {
	id, _ := r.Context().Value(identityKey{}).(apikey.Identity)
	return id
}

// touches reports whether t moves money from or to an account id covers
// (any leg's, for a transaction): a scoped key reads only those.
func touches(id apikey.Identity, t ledger.Transfer) bool {
	if id.Covers(t.FromAccountID) || id.Covers(t.ToAccountID) {
		return true
	}
	for _, l := range t.Legs {
		if id.Covers(l.FromAccountID) || id.Covers(l.ToAccountID) {
			return true
		}
	}
	return false
}

// internal answers a failed read of the ledger with 503 and Retry-After:
// the cause (a replica down, a timeout) is usually passing. The error is
// logged here, once, and kept from the client.
func (a *API) internal(w http.ResponseWriter, r *http.Request, err error) {
	a.opts.Log.Error("request failed", "route", r.Pattern, "err", err)
	w.Header().Set("Retry-After", "1")
	writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Ledger unavailable",
		Detail: "the ledger could not be read; retry shortly"})
}
