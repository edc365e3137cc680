package producers

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/sealing"
)

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

func (a *API) internal(w http.ResponseWriter, r *http.Request, err error) {
	a.opts.Log.Error("request failed", "route", r.Pattern, "err", err)
	w.Header().Set("Retry-After", "1")
	writeProblem(w, problem{Status: http.StatusServiceUnavailable, Type: "unavailable", Title: "Ledger unavailable",
		Detail: "the ledger could not be read; retry shortly"})
}
