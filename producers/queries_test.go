package producers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/producers"
)

var (
	_ producers.Ledger = (*ledger.Queries)(nil)
	_ producers.Ledger = (*fakeLedger)(nil)
)

// fakeLedger is an in-memory Ledger that answers as *ledger.Queries does:
// ErrNotFound for an unknown id, a statement newest first below before and
// at most limit long, times in UTC.
type fakeLedger struct {
	outcomes  map[string]ledger.Outcome
	accounts  map[string]ledger.Account
	entries   map[string][]ledger.StatementEntry // per account, oldest first
	transfers map[string]ledger.Transfer
	// err, when set, is what every method fails with.
	err error

	calls int
	// before and limit are the arguments of the last Statement.
	before, limit int64
	// filter is the argument of the last Transfers or Rejections.
	filter ledger.TransferFilter
}

func (f *fakeLedger) Outcome(_ context.Context, id string) (ledger.Outcome, error) {
	f.calls++
	o, ok := f.outcomes[id]
	return o, f.answer(ok)
}

func (f *fakeLedger) Account(_ context.Context, id string) (ledger.Account, error) {
	f.calls++
	a, ok := f.accounts[id]
	return a, f.answer(ok)
}

func (f *fakeLedger) Statement(_ context.Context, id string, before, limit int64) ([]ledger.StatementEntry, error) {
	f.calls++
	f.before, f.limit = before, limit
	if _, ok := f.accounts[id]; !ok || f.err != nil {
		return nil, f.answer(ok)
	}
	var page []ledger.StatementEntry
	all := f.entries[id]
	for i := len(all) - 1; i >= 0 && int64(len(page)) < limit; i-- {
		if before == 0 || all[i].AccountVersion < before {
			page = append(page, all[i])
		}
	}
	return page, nil
}

func (f *fakeLedger) Transfer(_ context.Context, id string) (ledger.Transfer, error) {
	f.calls++
	t, ok := f.transfers[id]
	return t, f.answer(ok)
}

// Transfers answers the reference, account and scope filters, newest
// first; the other filters are the SQL's, tested against PostgreSQL.
func (f *fakeLedger) Transfers(_ context.Context, tf ledger.TransferFilter) ([]ledger.Transfer, error) {
	f.calls++
	f.filter = tf
	if f.err != nil {
		return nil, f.err
	}
	var out []ledger.Transfer
	for _, t := range f.transfers {
		if (tf.Reference == "" || t.Reference == tf.Reference) && (tf.AccountID == "" || t.FromAccountID == tf.AccountID || t.ToAccountID == tf.AccountID) &&
			(domain.PatternsCover(tf.Scope, t.FromAccountID) || domain.PatternsCover(tf.Scope, t.ToAccountID)) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b ledger.Transfer) int { return b.CreatedAt.Compare(a.CreatedAt) })
	return out[:min(len(out), tf.Limit)], nil
}

func (f *fakeLedger) Rejections(_ context.Context, tf ledger.TransferFilter) ([]ledger.Rejection, error) {
	f.calls++
	f.filter = tf
	return nil, f.err
}

func (f *fakeLedger) Holds(context.Context, ledger.HoldFilter) ([]ledger.Transfer, error) {
	f.calls++
	return nil, f.err
}

func (f *fakeLedger) Accounts(context.Context, ledger.AccountFilter) ([]ledger.Account, error) {
	f.calls++
	return nil, f.err
}

func (f *fakeLedger) Balances(_ context.Context, af ledger.AccountFilter) (ledger.Sum, error) {
	f.calls++
	return ledger.Sum{Currency: af.Currency, Balance: "0", Available: "0"}, f.err
}

func (f *fakeLedger) AccountAsOf(_ context.Context, id string, _ time.Time, _ int64) (ledger.AsOf, error) {
	f.calls++
	_, ok := f.accounts[id]
	return ledger.AsOf{AccountID: id}, f.answer(ok)
}

func (f *fakeLedger) answer(found bool) error {
	switch {
	case f.err != nil:
		return f.err
	case !found:
		return ledger.ErrNotFound
	}
	return nil
}

const (
	cmdApplied   = "01900000-0000-7000-8000-000000000001"
	cmdRejected  = "01900000-0000-7000-8000-000000000002"
	cmdDead      = "01900000-0000-7000-8000-000000000003"
	cmdUntyped   = "01900000-0000-7000-8000-000000000004"
	transferID   = "01900000-0000-7000-8000-000000000011"
	holdID       = "01900000-0000-7000-8000-000000000012"
	referencedID = "01900000-0000-7000-8000-000000000013"
	unknownID    = "01900000-0000-7000-8000-0000000000ff"
)

func ptr[T any](v T) *T { return &v }

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// ledgerOf holds a few of each thing the API reads; alice has five
// entries, empty none.
func ledgerOf() *fakeLedger {
	f := &fakeLedger{
		outcomes: map[string]ledger.Outcome{
			cmdApplied:  {CommandID: cmdApplied, Type: "deposit", Status: "applied", At: at("2026-01-02T01:04:05.5Z")},
			cmdRejected: {CommandID: cmdRejected, Type: "withdraw", Status: "rejected", Reason: ptr("insufficient_funds"), At: at("2026-01-02T01:04:06Z")},
			cmdDead:     {CommandID: cmdDead, Type: "deposit", Status: "dead_lettered", Reason: ptr("apply_failed"), Detail: ptr("poisoned entry"), At: at("2026-01-02T01:04:08Z")},
			cmdUntyped:  {CommandID: cmdUntyped, Status: "dead_lettered", Reason: ptr("invalid_command"), Detail: ptr("/type: unknown"), At: at("2026-01-02T01:04:09Z")},
		},
		accounts: map[string]ledger.Account{
			"alice": {ID: "alice", Currency: "EUR", Status: "active", Balance: 1000, Held: 300, OverdraftLimit: 50, DailyDebitLimit: 500, Version: 5,
				Metadata: json.RawMessage(`{"tier":"gold","n":1}`), CreatedAt: at("2026-01-02T01:04:05.123456Z"), UpdatedAt: at("2026-01-02T22:04:05Z")},
			"@external:EUR": {ID: "@external:EUR", Currency: "EUR", Status: "active", External: true, Balance: -980,
				CreatedAt: at("2026-01-02T03:04:05Z"), UpdatedAt: at("2026-01-02T03:04:06Z")},
			"empty": {ID: "empty", Currency: "USD", Status: "closed", CreatedAt: at("2026-01-02T03:04:05Z"), UpdatedAt: at("2026-01-02T03:04:06Z")},
		},
		entries: map[string][]ledger.StatementEntry{},
		transfers: map[string]ledger.Transfer{
			transferID: {TransferData: domain.TransferData{TransferID: transferID, Kind: domain.TransferKind("transfer"), FromAccountID: "alice", ToAccountID: "bob",
				Currency: "EUR", Amount: 70, ReversedAmount: 10, Status: domain.TransferStatus("reversed")},
				CreatedAt: at("2026-01-02T00:04:05Z"), UpdatedAt: at("2026-01-02T01:04:05Z")},
			referencedID: {TransferData: domain.TransferData{TransferID: referencedID, Kind: domain.TransferKind("transfer"), FromAccountID: "alice", ToAccountID: "bob",
				Currency: "EUR", Amount: 5, Status: domain.TransferStatus("posted"), Reference: "order 42/7"},
				Metadata: json.RawMessage(`{"cart":[1,2]}`), CreatedAt: at("2026-01-03T00:04:05Z"), UpdatedAt: at("2026-01-03T00:04:05Z")},
			holdID: {TransferData: domain.TransferData{TransferID: holdID, Kind: domain.TransferKind("hold"), FromAccountID: "alice", ToAccountID: "bob",
				Currency: "EUR", Amount: 300, Status: domain.TransferStatus("pending"), ExpiresAt: ptr(at("2026-02-02T00:04:05Z"))},
				CreatedAt: at("2026-01-02T00:04:05Z"), UpdatedAt: at("2026-01-02T00:04:05Z")},
		},
	}
	for v := int64(1); v <= 5; v++ {
		f.entries["alice"] = append(f.entries["alice"], ledger.StatementEntry{AccountVersion: v, CommandID: fmt.Sprintf("01900000-0000-7000-8000-0000000001%02d", v),
			CommandType: "deposit", Currency: "EUR", Amount: 200, BalanceAfter: 200 * v, CreatedAt: at("2026-01-02T02:04:05Z").Add(time.Duration(v) * time.Second)})
	}
	return f
}

// TestReadsAnswerWhatTheLedgerHolds pins every read's body byte for byte
// (the bodies are what the API answered before its reads moved behind
// Ledger).
func TestReadsAnswerWhatTheLedgerHolds(t *testing.T) {
	h := newTestAPI(t, producers.APIOptions{Ledger: ledgerOf()})
	for _, c := range []struct {
		name, path string
		status     int
		body       string
	}{
		{"applied command", "/v1/commands/" + cmdApplied, 200,
			`{"command_id":"01900000-0000-7000-8000-000000000001","type":"deposit","status":"applied","processed_at":"2026-01-02T01:04:05.5Z"}`},
		{"rejected command, its id in upper case", "/v1/commands/" + strings.ToUpper(cmdRejected), 200,
			`{"command_id":"01900000-0000-7000-8000-000000000002","type":"withdraw","status":"rejected","reason":"insufficient_funds","processed_at":"2026-01-02T01:04:06Z"}`},
		{"dead-lettered command", "/v1/commands/" + cmdDead, 200,
			`{"command_id":"01900000-0000-7000-8000-000000000003","type":"deposit","status":"dead_lettered","reason":"apply_failed","detail":"poisoned entry","processed_at":"2026-01-02T01:04:08Z"}`},
		{"dead-lettered record without a type", "/v1/commands/" + cmdUntyped, 200,
			`{"command_id":"01900000-0000-7000-8000-000000000004","status":"dead_lettered","reason":"invalid_command","detail":"/type: unknown","processed_at":"2026-01-02T01:04:09Z"}`},
		{"command not processed", "/v1/commands/" + unknownID, 404,
			`{"type":"urn:txpipe:problem:not-found","title":"Command not processed","status":404,"detail":"no outcome for this command_id yet: it is still in flight, or was never accepted"}`},
		{"account with metadata", "/v1/accounts/alice", 200,
			`{"account_id":"alice","currency":"EUR","status":"active","balance":1000,"available":700,"pending_holds":300,"overdraft_limit":50,"daily_debit_limit":500,"version":5,"metadata":{"tier":"gold","n":1},"created_at":"2026-01-02T01:04:05.123456Z","updated_at":"2026-01-02T22:04:05Z"}`},
		{"external account", "/v1/accounts/@external:EUR", 200,
			`{"account_id":"@external:EUR","currency":"EUR","status":"active","external":true,"balance":-980,"available":-980,"pending_holds":0,"overdraft_limit":0,"daily_debit_limit":null,"version":0,"created_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:06Z"}`},
		{"account not found", "/v1/accounts/nobody", 404,
			`{"type":"urn:txpipe:problem:not-found","title":"Account not found","status":404,"detail":"no account has this id (an open_account may still be in flight)"}`},
		{"statement of an account not found", "/v1/accounts/nobody/entries", 404,
			`{"type":"urn:txpipe:problem:not-found","title":"Account not found","status":404,"detail":"no account has this id (an open_account may still be in flight)"}`},
		{"transfer", "/v1/transfers/" + transferID, 200,
			`{"transfer_id":"01900000-0000-7000-8000-000000000011","kind":"transfer","from_account_id":"alice","to_account_id":"bob","currency":"EUR","amount":70,"captured_amount":0,"reversed_amount":10,"status":"reversed","created_at":"2026-01-02T00:04:05Z","updated_at":"2026-01-02T01:04:05Z"}`},
		{"hold", "/v1/transfers/" + holdID, 200,
			`{"transfer_id":"01900000-0000-7000-8000-000000000012","kind":"hold","from_account_id":"alice","to_account_id":"bob","currency":"EUR","amount":300,"captured_amount":0,"reversed_amount":0,"status":"pending","expires_at":"2026-02-02T00:04:05Z","created_at":"2026-01-02T00:04:05Z","updated_at":"2026-01-02T00:04:05Z"}`},
		{"transfer with a reference and metadata", "/v1/transfers/" + referencedID, 200,
			`{"transfer_id":"01900000-0000-7000-8000-000000000013","kind":"transfer","from_account_id":"alice","to_account_id":"bob","currency":"EUR","amount":5,"captured_amount":0,"reversed_amount":0,"status":"posted","reference":"order 42/7","metadata":{"cart":[1,2]},"created_at":"2026-01-03T00:04:05Z","updated_at":"2026-01-03T00:04:05Z"}`},
		{"transfers by reference", "/v1/transfers?reference=order%2042%2F7", 200,
			`{"transfers":[{"transfer_id":"01900000-0000-7000-8000-000000000013","kind":"transfer","from_account_id":"alice","to_account_id":"bob","currency":"EUR","amount":5,"captured_amount":0,"reversed_amount":0,"status":"posted","reference":"order 42/7","metadata":{"cart":[1,2]},"created_at":"2026-01-03T00:04:05Z","updated_at":"2026-01-03T00:04:05Z"}]}`},
		{"transfers by a reference no transfer has", "/v1/transfers?reference=order%2043", 200, `{"transfers":[]}`},
		{"transfer not found", "/v1/transfers/" + unknownID, 404,
			`{"type":"urn:txpipe:problem:not-found","title":"Transfer not found","status":404,"detail":"no transfer, deposit, withdrawal or hold has this id (its command may still be in flight, or was rejected)"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := serve(h, http.MethodGet, c.path, "")
			if rec.Code != c.status {
				t.Errorf("GET %s = %d, want %d", c.path, rec.Code, c.status)
			}
			if diff := cmp.Diff(c.body+"\n", rec.Body.String()); diff != "" {
				t.Errorf("GET %s body (-want +got):\n%s", c.path, diff)
			}
			wantType := "application/json"
			if c.status != 200 {
				wantType = "application/problem+json"
			}
			if ct, cc := rec.Header().Get("Content-Type"), rec.Header().Get("Cache-Control"); ct != wantType || cc != "no-store" {
				t.Errorf("GET %s: Content-Type %q Cache-Control %q, want %q and no-store", c.path, ct, cc, wantType)
			}
		})
	}
}

type statement struct {
	AccountID string            `json:"account_id"`
	Entries   []json.RawMessage `json:"entries"`
	NextAfter *int64            `json:"next_after"`
}

// TestStatementPages: a page asks the ledger for one entry more than it
// shows, and next_after is there only when that entry exists.
func TestStatementPages(t *testing.T) {
	f := ledgerOf()
	h := newTestAPI(t, producers.APIOptions{Ledger: f})
	for _, c := range []struct {
		query        string
		wantAsked    [2]int64 // before, limit asked of the ledger
		wantVersions []int64
		wantNext     *int64
	}{
		{"", [2]int64{0, 51}, []int64{5, 4, 3, 2, 1}, nil},
		{"?limit=2", [2]int64{0, 3}, []int64{5, 4}, ptr[int64](4)},
		{"?limit=2&after=4", [2]int64{4, 3}, []int64{3, 2}, ptr[int64](2)},
		{"?limit=2&after=2", [2]int64{2, 3}, []int64{1}, nil},
		{"?limit=4", [2]int64{0, 5}, []int64{5, 4, 3, 2}, ptr[int64](2)},
		{"?limit=5", [2]int64{0, 6}, []int64{5, 4, 3, 2, 1}, nil},
		{"?limit=1000", [2]int64{0, 1001}, []int64{5, 4, 3, 2, 1}, nil},
		{"?after=1", [2]int64{1, 51}, nil, nil},
	} {
		rec := serve(h, http.MethodGet, "/v1/accounts/alice/entries"+c.query, "")
		var got statement
		if err := json.Unmarshal(rec.Body.Bytes(), &got); rec.Code != 200 || err != nil {
			t.Fatalf("GET entries%s = %d %s (%v), want 200 and a statement", c.query, rec.Code, rec.Body, err)
		}
		if asked := [2]int64{f.before, f.limit}; asked != c.wantAsked {
			t.Errorf("GET entries%s asked the ledger for (before, limit) %v, want %v", c.query, asked, c.wantAsked)
		}
		var versions []int64
		for _, raw := range got.Entries {
			var e struct {
				AccountVersion int64 `json:"account_version"`
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatal(err)
			}
			versions = append(versions, e.AccountVersion)
		}
		if got.AccountID != "alice" || !cmp.Equal(versions, c.wantVersions) || !cmp.Equal(got.NextAfter, c.wantNext) {
			t.Errorf("GET entries%s = account %q versions %v next_after %v, want alice %v %v", c.query, got.AccountID, versions, fmtPtr(got.NextAfter), c.wantVersions, fmtPtr(c.wantNext))
		}
		if (got.NextAfter == nil) == strings.Contains(rec.Body.String(), `"next_after"`) {
			t.Errorf("GET entries%s body %s: next_after present and set disagree", c.query, rec.Body)
		}
	}

	// An empty page is a list, not null.
	for _, path := range []string{"/v1/accounts/empty/entries", "/v1/accounts/alice/entries?after=1"} {
		rec := serve(h, http.MethodGet, path, "")
		if want := `"entries":[]}`; rec.Code != 200 || !strings.HasSuffix(strings.TrimSpace(rec.Body.String()), want) {
			t.Errorf("GET %s = %d %s, want 200 ending %s", path, rec.Code, rec.Body, want)
		}
	}

	// One entry of a full page is shown as the API shows entries.
	rec := serve(h, http.MethodGet, "/v1/accounts/alice/entries?limit=1", "")
	want := `{"account_id":"alice","entries":[{"account_version":5,"command_id":"01900000-0000-7000-8000-000000000105","command_type":"deposit","currency":"EUR","amount":200,"balance_after":1000,"created_at":"2026-01-02T02:04:10Z"}],"next_after":5}` + "\n"
	if diff := cmp.Diff(want, rec.Body.String()); diff != "" {
		t.Errorf("GET entries?limit=1 body (-want +got):\n%s", diff)
	}
}

func fmtPtr(p *int64) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprint(*p)
}

// TestReadsRefuseInvalidIDsAndQueries: what cannot name a thing is 400 with
// the field at fault, and the ledger is not asked.
func TestReadsRefuseInvalidIDsAndQueries(t *testing.T) {
	f := ledgerOf()
	h := newTestAPI(t, producers.APIOptions{Ledger: f})
	for _, c := range []struct {
		path     string
		title    string
		pointers []string
	}{
		{"/v1/commands/not-a-uuid", "Invalid command id", []string{"/command_id"}},
		{"/v1/accounts/has%20space", "Invalid account id", []string{"/account_id"}},
		{"/v1/accounts/" + strings.Repeat("a", 65), "Invalid account id", []string{"/account_id"}},
		{"/v1/accounts/@external:EURO", "Invalid account id", []string{"/account_id"}},
		{"/v1/accounts/bad%20id/entries", "Invalid account id", []string{"/account_id"}},
		{"/v1/accounts/alice/entries?limit=0", "Invalid query", []string{"/limit"}},
		{"/v1/accounts/alice/entries?limit=1001", "Invalid query", []string{"/limit"}},
		{"/v1/accounts/alice/entries?limit=abc&after=-1", "Invalid query", []string{"/after", "/limit"}},
		{"/v1/accounts/alice/entries?after=0", "Invalid query", []string{"/after"}},
		{"/v1/transfers/nope", "Invalid transfer id", []string{"/transfer_id"}},
		{"/v1/transfers?reference=", "Invalid query", []string{"/reference"}},
		{"/v1/transfers?reference=a&reference=b", "Invalid query", []string{"/reference"}},
		{"/v1/transfers?reference=caf%C3%A9", "Invalid query", []string{"/reference"}},
		{"/v1/transfers?reference=" + strings.Repeat("r", 129), "Invalid query", []string{"/reference"}},
		{"/v1/transfers?reference=x&status=rejected", "Invalid query", []string{"/reference"}},
		{"/v1/transfers?status=done&type=payout&since=yesterday&until=2026-13-01T00:00:00Z", "Invalid query", []string{"/since", "/status", "/type", "/until"}},
		{"/v1/transfers?account_id=al%20ice&limit=0&after=not-a-cursor&sort=asc", "Invalid query", []string{"/account_id", "/after", "/limit", "/sort"}},
		{"/v1/holds?expiring_before=soon&limit=1001", "Invalid query", []string{"/expiring_before", "/limit"}},
		{"/v1/accounts?prefix=a%25&currency=EURO&after=a%20b", "Invalid query", []string{"/after", "/currency", "/prefix"}},
		{"/v1/balances?prefix=merchant-", "Invalid query", []string{"/currency"}},
		{"/v1/accounts/alice?as_of=2026-01-01T00:00:00Z&as_of_version=3", "Invalid query", []string{"/as_of"}},
		{"/v1/accounts/alice?as_of_version=-1", "Invalid query", []string{"/as_of_version"}},
		{"/v1/accounts/alice?as_of=2026-01-01T00:00:00Z&min_version=3", "Invalid query", []string{"/min_version"}},
		{"/v1/accounts/alice?min_version=x&verbose=1", "Invalid query", []string{"/min_version", "/verbose"}},
	} {
		rec := serve(h, http.MethodGet, c.path, "")
		p := problemOf(t, rec)
		var pointers []string
		for _, fe := range p.Errors {
			pointers = append(pointers, fe.Pointer)
		}
		if rec.Code != 400 || p.Type != producers.ProblemTypeBase+"invalid-request" || p.Title != c.title || !cmp.Equal(pointers, c.pointers) {
			t.Errorf("GET %s = %d %q %q errors at %v, want 400 invalid-request %q at %v", c.path, rec.Code, p.Type, p.Title, pointers, c.title, c.pointers)
		}
	}
	if f.calls != 0 {
		t.Errorf("the ledger was asked %d times for invalid ids, want 0", f.calls)
	}
}

// TestLedgerFailureIs503WithoutItsCause: a read the ledger cannot answer
// is 503 with Retry-After; the cause is logged, once, and never sent.
func TestLedgerFailureIs503WithoutItsCause(t *testing.T) {
	for _, c := range []struct {
		path string
		err  error
		mark string // a part of err that must be logged and not sent
	}{
		{"/v1/commands/" + cmdApplied, errors.New("dial tcp 10.1.2.3:5432: connect: connection refused"), "10.1.2.3"},
		{"/v1/accounts/alice", errors.New(`open the metadata of account alice: sealed under key "k0", which the keyring lacks`), "open the metadata"},
		{"/v1/accounts/alice/entries", errors.New(`FATAL: password authentication failed for user "txpipe"`), "password authentication failed"},
		{"/v1/transfers/" + transferID, context.DeadlineExceeded, "deadline exceeded"},
	} {
		f := ledgerOf()
		f.err = c.err
		var log bytes.Buffer
		h := newTestAPI(t, producers.APIOptions{Ledger: f, Log: slog.New(slog.NewTextHandler(&log, nil))})
		rec := serve(h, http.MethodGet, c.path, "")
		p := problemOf(t, rec)
		if rec.Code != http.StatusServiceUnavailable || p.Type != producers.ProblemTypeBase+"unavailable" || rec.Header().Get("Retry-After") != "1" {
			t.Errorf("GET %s with the ledger failing = %d %q Retry-After %q, want 503 unavailable with Retry-After 1", c.path, rec.Code, p.Type, rec.Header().Get("Retry-After"))
		}
		if strings.Contains(rec.Body.String(), c.mark) {
			t.Errorf("GET %s: the body leaks the cause: %s", c.path, rec.Body)
		}
		if n := strings.Count(log.String(), "level=ERROR"); n != 1 || !strings.Contains(log.String(), c.mark) {
			t.Errorf("GET %s logged %d errors:\n%s\nwant one naming %q", c.path, n, log.String(), c.mark)
		}
	}
}
