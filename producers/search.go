package producers

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// The list queries (docs/api.md, Queries). A key scoped to accounts that
// names an account it does not cover gets 404, as for the account itself;
// without an account named, it sees only rows that touch its accounts.

var (
	transferStatuses = []string{string(domain.TransferPosted), string(domain.TransferReversed), string(domain.TransferPending),
		string(domain.TransferCaptured), string(domain.TransferReleased), string(domain.TransferExpired), ledger.StatusRejected}
	transferKinds = []string{string(domain.KindTransfer), string(domain.KindDeposit), string(domain.KindWithdrawal),
		string(domain.KindHold), string(domain.KindTransaction)}
)

func oneOf(values []string) func(string) bool {
	return func(s string) bool { return slices.Contains(values, s) }
}

func validReference(s string) bool { return domain.ValidReference(s) }

// cursor reads the after parameter: a token from a previous page's next.
func (p *params) cursor() *ledger.Cursor {
	var c ledger.Cursor
	if p.str("after", func(s string) bool { var ok bool; c, ok = ledger.ParseCursor(s); return ok },
		"must be the next token of a previous page") == "" {
		return nil
	}
	return &c
}

// account reads account_id: "" when absent, which a key scoped to
// accounts may leave out only when optional says so (a list of every
// account's rows would be read and filtered, whatever the key covers). It
// answers 404 and returns false when the caller's key does not cover it.
func (p *params) account(w http.ResponseWriter, r *http.Request, optional bool) (string, bool) {
	id := p.str("account_id", anyAccountID, "must be an account id: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
	if id == "" && !optional && caller(r).Accounts != nil && !p.has("account_id") {
		p.fail("account_id", "is required with a key scoped to accounts")
	}
	if !p.ok(w) {
		return "", false
	}
	if id != "" && !caller(r).Covers(id) {
		accountNotFound(w)
		return "", false
	}
	return id, true
}

type rejectionResponse struct {
	TransferID string `json:"transfer_id"`
	Kind       string `json:"kind"`
	// AccountID is the command's debit account (for a deposit, the
	// account it would have credited).
	AccountID string    `json:"account_id"`
	Status    string    `json:"status"`
	Reason    string    `json:"reason"`
	Leg       *int      `json:"leg,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

type transferPage struct {
	Transfers []any   `json:"transfers"`
	Next      *string `json:"next,omitempty"`
}

// listTransfers finds transfers by reference, account, status, kind and
// creation time, newest first; status=rejected finds the money commands
// that were rejected instead (they made no transfer).
func (a *API) listTransfers(w http.ResponseWriter, r *http.Request) {
	p := newParams(r)
	f := ledger.TransferFilter{
		Reference: p.str("reference", validReference, "must be 1 to 128 printable ASCII characters"),
		Status:    p.str("status", oneOf(transferStatuses), "must be one of "+quoted(transferStatuses)),
		Kind:      domain.TransferKind(p.str("type", oneOf(transferKinds), "must be one of "+quoted(transferKinds))),
		Since:     p.time("since"), Until: p.time("until"), After: p.cursor(), Limit: p.limit(),
		Scope: caller(r).Accounts,
	}
	if f.Status == ledger.StatusRejected && f.Reference != "" {
		p.fail("reference", "cannot be combined with status=rejected: a rejected command made no transfer to carry it")
	}
	var ok bool
	// A reference names one transfer: a scoped key may look it up.
	if f.AccountID, ok = p.account(w, r, f.Reference != ""); !ok {
		return
	}
	page := transferPage{Transfers: []any{}}
	var last *ledger.Cursor
	if f.Status == ledger.StatusRejected {
		rs, err := a.opts.Ledger.Rejections(r.Context(), f)
		if err != nil {
			a.internal(w, r, err)
			return
		}
		for _, x := range rs {
			page.Transfers = append(page.Transfers, rejectionResponse{TransferID: x.CommandID, Kind: string(x.Kind),
				AccountID: x.AccountID, Status: ledger.StatusRejected, Reason: x.Reason, Leg: x.Leg, CreatedAt: x.At})
			last = &ledger.Cursor{At: x.At, ID: x.CommandID}
		}
	} else {
		ts, err := a.opts.Ledger.Transfers(r.Context(), f)
		if err != nil {
			a.internal(w, r, err)
			return
		}
		for _, t := range ts {
			v, ok := visible(caller(r), t)
			if !ok {
				continue
			}
			page.Transfers = append(page.Transfers, newTransferResponse(v))
			last = &ledger.Cursor{At: t.CreatedAt, ID: t.TransferID}
		}
	}
	if len(page.Transfers) == f.Limit && last != nil {
		next := last.String()
		page.Next = &next
	}
	writeJSON(w, http.StatusOK, page)
}

type holdPage struct {
	Holds []transferResponse `json:"holds"`
	Next  *string            `json:"next,omitempty"`
}

// listHolds finds pending holds by account and expiry, soonest expiry
// first.
func (a *API) listHolds(w http.ResponseWriter, r *http.Request) {
	p := newParams(r)
	f := ledger.HoldFilter{ExpiringBefore: p.time("expiring_before"), After: p.cursor(), Limit: p.limit()}
	var ok bool
	if f.AccountID, ok = p.account(w, r, false); !ok {
		return
	}
	hs, err := a.opts.Ledger.Holds(r.Context(), f)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	page := holdPage{Holds: make([]transferResponse, len(hs))}
	for i, h := range hs {
		page.Holds[i] = newTransferResponse(h)
	}
	if len(hs) == f.Limit {
		last := hs[len(hs)-1]
		c := ledger.Cursor{ID: last.TransferID}
		if last.ExpiresAt != nil {
			c.At = *last.ExpiresAt
		}
		next := c.String()
		page.Next = &next
	}
	writeJSON(w, http.StatusOK, page)
}

type accountPage struct {
	Accounts []accountResponse `json:"accounts"`
	Next     *string           `json:"next,omitempty"`
}

// accountFilter reads prefix and currency (and, for a list, after).
func (p *params) accountFilter(r *http.Request) ledger.AccountFilter {
	return ledger.AccountFilter{
		Prefix:   p.str("prefix", validAccountPrefix, "must be the start of an account id: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'"),
		Currency: p.str("currency", domain.ValidCurrency, "must be an ISO 4217 code, such as EUR"),
		Scope:    caller(r).Accounts,
	}
}

// listAccounts finds accounts by prefix and currency, in byte order of
// their ids.
func (a *API) listAccounts(w http.ResponseWriter, r *http.Request) {
	p := newParams(r)
	f := p.accountFilter(r)
	f.After = p.str("after", anyAccountID, "must be the next token of a previous page")
	f.Limit = p.limit()
	if !p.ok(w) {
		return
	}
	as, err := a.opts.Ledger.Accounts(r.Context(), f)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	page := accountPage{Accounts: make([]accountResponse, len(as))}
	for i, acc := range as {
		page.Accounts[i] = newAccountResponse(acc)
	}
	if len(as) == f.Limit {
		page.Next = &as[len(as)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
}

type balanceResponse struct {
	Currency string `json:"currency"`
	Accounts int64  `json:"accounts"`
	// Balance and Available are exact sums, which may exceed an int64.
	Balance   json.Number `json:"balance"`
	Available json.Number `json:"available"`
}

// getBalances sums the balances of the accounts matching a prefix, in one
// currency (required: sums across currencies mean nothing).
func (a *API) getBalances(w http.ResponseWriter, r *http.Request) {
	p := newParams(r)
	f := p.accountFilter(r)
	if f.Currency == "" && !p.has("currency") {
		p.fail("currency", "is required: balances are summed in one currency")
	}
	if !p.ok(w) {
		return
	}
	s, err := a.opts.Ledger.Balances(r.Context(), f)
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, balanceResponse{Currency: s.Currency, Accounts: s.Accounts,
		Balance: json.Number(s.Balance), Available: json.Number(s.Available)})
}

type asOfResponse struct {
	AccountID    string    `json:"account_id"`
	Currency     string    `json:"currency"`
	Balance      int64     `json:"balance"`
	Available    int64     `json:"available"`
	PendingHolds int64     `json:"pending_holds"`
	Version      int64     `json:"version"`
	AsOf         time.Time `json:"as_of"`
}

// getAccountAsOf answers GET /v1/accounts/{id}?as_of=…|as_of_version=…:
// the account as it stood then, from its entries and holds.
func (a *API) getAccountAsOf(w http.ResponseWriter, r *http.Request, id string, p *params) {
	at, version := p.time("as_of"), int64(-1)
	if p.has("as_of_version") {
		version = p.int("as_of_version", 0, maxVersion, 0)
	}
	if p.has("as_of") == p.has("as_of_version") {
		p.fail("as_of", "give as_of or as_of_version, not both")
	}
	if p.has("min_version") {
		p.fail("min_version", "cannot be combined with as_of or as_of_version: a past state needs no fresher replica")
	}
	if !p.ok(w) {
		return
	}
	if !caller(r).Covers(id) {
		accountNotFound(w)
		return
	}
	s, err := a.opts.Ledger.AccountAsOf(r.Context(), id, at, version)
	if errors.Is(err, ledger.ErrNotFound) && version > 0 && a.opts.Primary != nil && a.behind(r, id, version) {
		// A version just seen may not have reached the replica yet.
		a.metrics.primaryFallbacks.Inc()
		s, err = a.opts.Primary.AccountAsOf(r.Context(), id, at, version)
	}
	if errors.Is(err, ledger.ErrNotFound) {
		writeProblem(w, problem{Status: http.StatusNotFound, Type: "not-found", Title: "Account not found then",
			Detail: "no account has this id, or it did not exist at that time, or it has no such version"})
		return
	}
	if err != nil {
		a.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, asOfResponse{AccountID: s.AccountID, Currency: s.Currency, Balance: s.Balance,
		Available: s.Available, PendingHolds: s.PendingHolds, Version: s.Version, AsOf: s.At})
}

// freshAccount reads account id no older than version minVersion: from
// the replica, then from the primary when the replica is behind. It
// answers 409 with Retry-After and returns false when neither has it yet.
func (a *API) freshAccount(w http.ResponseWriter, r *http.Request, id string, minVersion int64) (ledger.Account, bool) {
	acc, err := a.opts.Ledger.Account(r.Context(), id)
	// A replica behind may not have the account at all yet.
	behind := (err == nil && acc.Version < minVersion) || (errors.Is(err, ledger.ErrNotFound) && minVersion > 0)
	if behind && a.opts.Primary != nil {
		a.metrics.primaryFallbacks.Inc()
		acc, err = a.opts.Primary.Account(r.Context(), id)
	}
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		accountNotFound(w)
		return acc, false
	case err != nil:
		a.internal(w, r, err)
		return acc, false
	case acc.Version < minVersion:
		w.Header().Set("Retry-After", "1")
		writeProblem(w, problem{Status: http.StatusConflict, Type: "version-not-yet-visible", Title: "Version not visible yet",
			Detail: "the account is at version " + strconv.FormatInt(acc.Version, 10) + " here, below min_version; retry shortly"})
		return acc, false
	}
	return acc, true
}

// behind reports whether the replica has not reached version of account
// id (or lacks the account): only then is the primary asked, so that a
// version that does not exist costs the primary nothing.
func (a *API) behind(r *http.Request, id string, version int64) bool {
	acc, err := a.opts.Ledger.Account(r.Context(), id)
	return errors.Is(err, ledger.ErrNotFound) || err == nil && acc.Version < version
}

func quoted(values []string) string {
	b, _ := json.Marshal(values)
	return string(b)
}
