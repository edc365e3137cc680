package producers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
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
	// Transfers are the transfers matching a filter, newest first.
	Transfers(ctx context.Context, f ledger.TransferFilter) ([]ledger.Transfer, error)
	// Rejections are the rejected money commands matching a filter.
	Rejections(ctx context.Context, f ledger.TransferFilter) ([]ledger.Rejection, error)
	// Holds are the pending holds matching a filter, soonest expiry first.
	Holds(ctx context.Context, f ledger.HoldFilter) ([]ledger.Transfer, error)
	// Accounts are the accounts matching a filter, by id.
	Accounts(ctx context.Context, f ledger.AccountFilter) ([]ledger.Account, error)
	// Balances sums the balances of the accounts matching a filter.
	Balances(ctx context.Context, f ledger.AccountFilter) (ledger.Sum, error)
	// AccountAsOf is an account as it stood at a time (version < 0) or
	// right after one of its versions.
	AccountAsOf(ctx context.Context, id string, at time.Time, version int64) (ledger.AsOf, error)
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
	if !anyAccountID(id) {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid account id",
			Errors: []domain.FieldError{{Pointer: "/account_id", Detail: "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'"}}})
		return "", false
	}
	return id, true
}

// anyAccountID reports whether id can name an account, a currency's
// external account included.
func anyAccountID(id string) bool {
	return domain.ValidAccountID(id) || strings.HasPrefix(id, domain.ExternalPrefix) && domain.ValidCurrency(strings.TrimPrefix(id, domain.ExternalPrefix))
}

func accountNotFound(w http.ResponseWriter) {
	writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Account not found",
		Detail: "no account has this id (an open_account may still be in flight)"})
}

// getAccount answers an account as it is now (no older than min_version
// when given), or as it stood then (as_of, as_of_version).
func (a *API) getAccount(w http.ResponseWriter, r *http.Request) {
	id, ok := accountID(w, r)
	if !ok {
		return
	}
	p := newParams(r)
	p.known["min_version"], p.known["as_of"], p.known["as_of_version"] = true, true, true
	if p.has("as_of") || p.has("as_of_version") {
		a.getAccountAsOf(w, r, id, p)
		return
	}
	minVersion := p.int("min_version", 0, maxVersion, 0)
	if !p.ok(w) {
		return
	}
	if !caller(r).Covers(id) {
		// The scope depends on the id alone: refused before any read, the
		// answer is the same whether the account exists or not.
		accountNotFound(w)
		return
	}
	acc, ok := a.freshAccount(w, r, id, minVersion)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, newAccountResponse(acc))
}

func newAccountResponse(acc ledger.Account) accountResponse {
	resp := accountResponse{
		AccountID: acc.ID, Currency: acc.Currency, Status: acc.Status, External: acc.External,
		Balance: acc.Balance, Available: acc.Balance - acc.Held, PendingHolds: acc.Held,
		OverdraftLimit: acc.OverdraftLimit, Version: acc.Version, Metadata: acc.Metadata, FeePlan: acc.FeePlan,
		CreatedAt: acc.CreatedAt, UpdatedAt: acc.UpdatedAt,
	}
	if acc.DailyDebitLimit > 0 {
		resp.DailyDebitLimit = &acc.DailyDebitLimit
	}
	return resp
}

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
	p := newParams(r)
	limit, after := int64(p.limit()), p.int("after", 1, maxVersion, 0)
	if !p.ok(w) {
		return
	}
	if !caller(r).Covers(id) {
		accountNotFound(w) // before any read, as for the account
		return
	}
	// One entry more than the page says whether an older page exists.
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

func (a *API) getTransfer(w http.ResponseWriter, r *http.Request) {
	id, ok := domain.CanonicalUUID(r.PathValue("transfer_id"))
	if !ok {
		writeProblem(w, problem{Status: http.StatusBadRequest, Type: "invalid-request", Title: "Invalid transfer id",
			Detail: "a transfer_id is the UUID of the command that made it", Errors: []domain.FieldError{{Pointer: "/transfer_id", Detail: "must be a UUID"}}})
		return
	}
	t, err := a.opts.Ledger.Transfer(r.Context(), id)
	if err == nil {
		var ok bool
		if t, ok = visible(caller(r), t); !ok {
			err = ledger.ErrNotFound
		}
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

// visible is t as id may see it, and whether it may: for a key scoped to
// accounts, only a transfer that moves money from or to an account it
// covers, and of a transaction only the legs that do, the first of them as
// its movement (the transaction's first leg may be between two other
// tenants). Unrestricted keys see t whole.
func visible(id apikey.Identity, t ledger.Transfer) (ledger.Transfer, bool) {
	if id.Accounts == nil {
		return t, true
	}
	if t.Legs == nil {
		return t, id.Covers(t.FromAccountID) || id.Covers(t.ToAccountID)
	}
	var legs []domain.LegData
	for _, l := range t.Legs {
		if id.Covers(l.FromAccountID) || id.Covers(l.ToAccountID) {
			legs = append(legs, l)
		}
	}
	switch len(legs) {
	case 0:
		return ledger.Transfer{}, false
	case len(t.Legs):
		return t, true
	}
	first := legs[0]
	t.Legs = legs
	t.FromAccountID, t.ToAccountID, t.Amount, t.Currency = first.FromAccountID, first.ToAccountID, first.Amount, first.Currency
	t.Fee, t.ReversedAmount = first.Fee, first.ReversedAmount
	return t, true
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
