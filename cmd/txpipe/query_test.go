package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

// queryRig is a pipeline holding three tenants' accounts and every kind of
// movement, made through the API and applied by the worker.
type queryRig struct {
	*pipeline
	scoped string // a key scoped to merchant-42:*
	ids    map[string]string
	// heldAt is a time between the deposit of merchant-42:eur and its
	// first hold.
	heldAt time.Time
}

func newQueryRig(t *testing.T) *queryRig {
	p := startPipeline(t)
	r := &queryRig{pipeline: p, ids: map[string]string{}}
	r.scoped, _ = createScopedKey(t, p.db.URL, "merchant-42", "ledger:read", "merchant-42:*")
	soon, later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339), time.Now().Add(3*time.Hour).UTC().Format(time.RFC3339)
	for _, c := range []struct{ name, body string }{
		{"", `"type":"open_account","account_id":"merchant-42:eur","currency":"EUR"`},
		{"", `"type":"open_account","account_id":"merchant-42:usd","currency":"USD"`},
		{"", `"type":"open_account","account_id":"merchant-4:eur","currency":"EUR"`},
		{"", `"type":"open_account","account_id":"merchant-7:eur","currency":"EUR"`},
		{"", `"type":"open_account","account_id":"merchant_42:eur","currency":"EUR"`},
		{"deposit42", `"type":"deposit","account_id":"merchant-42:eur","amount":1000,"currency":"EUR"`},
		{"deposit4", `"type":"deposit","account_id":"merchant-4:eur","amount":500,"currency":"EUR"`},
		{"deposit7", `"type":"deposit","account_id":"merchant-7:eur","amount":700,"currency":"EUR","reference":"their-order"`},
		{"pay", `"type":"transfer","from_account_id":"merchant-42:eur","to_account_id":"merchant-7:eur","amount":100,"currency":"EUR","reference":"order-1"`},
		{"refund", `"type":"transfer","from_account_id":"merchant-7:eur","to_account_id":"merchant-42:eur","amount":30,"currency":"EUR"`},
		{"rejected", `"type":"transfer","from_account_id":"merchant-42:eur","to_account_id":"merchant-7:eur","amount":1000000,"currency":"EUR"`},
		{"rejected7", `"type":"withdraw","account_id":"merchant-7:eur","amount":1000000,"currency":"EUR"`},
		{"hold1", `"type":"hold","from_account_id":"merchant-42:eur","to_account_id":"merchant-7:eur","amount":20,"currency":"EUR","expires_at":"` + later + `"`},
		{"hold2", `"type":"hold","from_account_id":"merchant-42:eur","to_account_id":"merchant-7:eur","amount":7,"currency":"EUR","expires_at":"` + soon + `"`},
		{"hold7", `"type":"hold","from_account_id":"merchant-7:eur","to_account_id":"merchant-42:eur","amount":5,"currency":"EUR","expires_at":"` + soon + `"`},
		// merchant-42:eur only in the second leg: found through the legs.
		{"split", `"type":"transaction","legs":[{"from_account_id":"merchant-7:eur","to_account_id":"merchant-4:eur","amount":3,"currency":"EUR"},` +
			`{"from_account_id":"merchant-4:eur","to_account_id":"merchant-42:eur","amount":2,"currency":"EUR"}]`},
		// merchant-42:eur in two later legs: once in its list, and a page
		// of one still reaches everything older.
		{"split2", `"type":"transaction","legs":[{"from_account_id":"merchant-7:eur","to_account_id":"merchant-4:eur","amount":1,"currency":"EUR"},` +
			`{"from_account_id":"merchant-4:eur","to_account_id":"merchant-42:eur","amount":1,"currency":"EUR"},` +
			`{"from_account_id":"merchant-7:eur","to_account_id":"merchant-42:eur","amount":1,"currency":"EUR"}]`},
	} {
		id := uuid.Must(uuid.NewV7()).String()
		if c.name == "hold1" {
			r.heldAt = time.Now().UTC()
		}
		status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,%s}`, id, c.body))
		if want := "applied"; strings.HasPrefix(c.name, "rejected") {
			if status != "rejected" {
				t.Fatalf("%s = %s %s, want rejected", c.name, status, reason)
			}
		} else if status != want {
			t.Fatalf("%s = %s %s, want applied", c.name, status, reason)
		}
		if c.name != "" {
			r.ids[c.name] = id
		}
	}
	return r
}

// list follows every page of path (limit per page) with key and returns
// the ids of field's items, checking that no page exceeds the limit.
func (r *queryRig) list(t *testing.T, path, field, id, key string) []string {
	t.Helper()
	var ids []string
	next := ""
	for range 100 {
		u := path
		if next != "" {
			u += "&after=" + url.QueryEscape(next)
		}
		code, body, _ := r.request(t, http.MethodGet, u, "", key)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d %v", u, code, body)
		}
		items, _ := body[field].([]any)
		for _, it := range items {
			ids = append(ids, it.(map[string]any)[id].(string))
		}
		n, ok := body["next"].(string)
		if !ok {
			return ids
		}
		next = n
	}
	t.Fatalf("GET %s: more than 100 pages", path)
	return nil
}

// names maps ids back to the rig's names.
func (r *queryRig) names(ids []string) []string {
	var out []string
	for _, id := range ids {
		name := id
		for n, v := range r.ids {
			if v == id {
				name = n
			}
		}
		out = append(out, name)
	}
	return out
}

// TestTransferQueries: transfers by account (either side, any leg), status,
// type, time and reference, newest first, paged by cursor; rejections.
func TestTransferQueries(t *testing.T) {
	r := newQueryRig(t)
	all := []string{"split2", "split", "hold7", "hold2", "hold1", "refund", "pay", "deposit42"}
	for _, c := range []struct {
		path string
		want []string
	}{
		{"/v1/transfers?account_id=merchant-42:eur&limit=50", all},
		{"/v1/transfers?account_id=merchant-42:eur&limit=2", all},
		{"/v1/transfers?account_id=merchant-42:eur&limit=1", all},
		{"/v1/transfers?account_id=merchant-42:eur&type=transaction&limit=1", []string{"split2", "split"}},
		{"/v1/transfers?account_id=merchant-42:eur&limit=1&type=hold", []string{"hold7", "hold2", "hold1"}},
		{"/v1/transfers?account_id=merchant-7:eur&status=pending", []string{"hold7", "hold2", "hold1"}},
		{"/v1/transfers?account_id=merchant-7:eur&limit=2&type=transfer", []string{"refund", "pay"}},
		{"/v1/transfers?account_id=merchant-4:eur&type=transaction", []string{"split2", "split"}},
		{"/v1/transfers?reference=order-1", []string{"pay"}},
		{"/v1/transfers?reference=order-1&account_id=merchant-4:eur", nil},
		{"/v1/transfers?account_id=merchant-42:eur&status=rejected", []string{"rejected"}},
		{"/v1/transfers?status=rejected&limit=1", []string{"rejected7", "rejected"}},
		{"/v1/transfers?status=rejected&type=withdrawal", []string{"rejected7"}},
		{"/v1/transfers?type=deposit&limit=2", []string{"deposit7", "deposit4", "deposit42"}},
	} {
		if diff := cmp.Diff(c.want, r.names(r.list(t, c.path, "transfers", "transfer_id", r.key))); diff != "" {
			t.Errorf("GET %s (-want +got):\n%s", c.path, diff)
		}
	}

	// A time window: from the refund's creation to the second hold's.
	var refund, hold2 struct {
		CreatedAt time.Time `json:"created_at"`
	}
	r.get(t, "/v1/transfers/"+r.ids["refund"], &refund)
	r.get(t, "/v1/transfers/"+r.ids["hold2"], &hold2)
	window := fmt.Sprintf("/v1/transfers?account_id=merchant-42:eur&since=%s&until=%s",
		url.QueryEscape(refund.CreatedAt.Format(time.RFC3339Nano)), url.QueryEscape(hold2.CreatedAt.Format(time.RFC3339Nano)))
	if diff := cmp.Diff([]string{"hold1", "refund"}, r.names(r.list(t, window, "transfers", "transfer_id", r.key))); diff != "" {
		t.Errorf("GET %s (-want +got):\n%s", window, diff)
	}
	var rej struct {
		Transfers []struct {
			Status, Reason, Kind string
			AccountID            string `json:"account_id"`
		} `json:"transfers"`
	}
	r.get(t, "/v1/transfers?account_id=merchant-42:eur&status=rejected", &rej)
	if len(rej.Transfers) != 1 || rej.Transfers[0].Reason != "insufficient_funds" || rej.Transfers[0].Kind != "transfer" ||
		rej.Transfers[0].AccountID != "merchant-42:eur" {
		t.Errorf("the rejection = %+v, want one transfer rejected insufficient_funds", rej.Transfers)
	}
}

// TestHoldAccountAndBalanceQueries: pending holds by account and expiry;
// accounts by prefix (LIKE's wildcards taken literally) and currency;
// balances summed; an account as of a time and a version.
func TestHoldAccountAndBalanceQueries(t *testing.T) {
	r := newQueryRig(t)
	inTwoHours := url.QueryEscape(time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339))
	for _, c := range []struct {
		path, field, id string
		want            []string
	}{
		{"/v1/holds?account_id=merchant-42:eur", "holds", "transfer_id", []string{"hold2", "hold1"}},
		{"/v1/holds?account_id=merchant-42:eur&limit=1", "holds", "transfer_id", []string{"hold2", "hold1"}},
		{"/v1/holds?account_id=merchant-42:eur&expiring_before=" + inTwoHours, "holds", "transfer_id", []string{"hold2"}},
		{"/v1/accounts?prefix=merchant-4", "accounts", "account_id", []string{"merchant-42:eur", "merchant-42:usd", "merchant-4:eur"}},
		{"/v1/accounts?prefix=merchant-4&limit=1", "accounts", "account_id", []string{"merchant-42:eur", "merchant-42:usd", "merchant-4:eur"}},
		{"/v1/accounts?prefix=merchant-4&currency=USD", "accounts", "account_id", []string{"merchant-42:usd"}},
		{"/v1/accounts?prefix=merchant_", "accounts", "account_id", []string{"merchant_42:eur"}},
		// A page can end on an external account: its id is a valid cursor.
		{"/v1/accounts?limit=1", "accounts", "account_id", []string{"@external:EUR", "merchant-42:eur", "merchant-42:usd", "merchant-4:eur", "merchant-7:eur", "merchant_42:eur"}},
	} {
		got := r.list(t, c.path, c.field, c.id, r.key)
		if c.field == "holds" {
			got = r.names(got)
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("GET %s (-want +got):\n%s", c.path, diff)
		}
	}

	// merchant-42:eur: 1000 - 100 + 30 + 2 + 2 = 934, holds 27.
	var sum map[string]any
	if code, body, _ := r.request(t, http.MethodGet, "/v1/balances?prefix=merchant-4&currency=EUR", "", r.key); code != http.StatusOK {
		t.Fatalf("GET /v1/balances = %d %v", code, body)
	} else {
		sum = body
	}
	// merchant-4:eur: 500 + 3 - 2 + 1 - 1 = 501.
	if diff := cmp.Diff(map[string]any{"currency": "EUR", "accounts": 2.0, "balance": 1435.0, "available": 1408.0}, sum); diff != "" {
		t.Errorf("GET /v1/balances?prefix=merchant-4&currency=EUR (-want +got):\n%s", diff)
	}
	// Every EUR account but the external one, whose balance is minus the
	// others' (deposits: 1000 + 500 + 700).
	if code, all, _ := r.request(t, http.MethodGet, "/v1/balances?currency=EUR", "", r.key); code != http.StatusOK || all["accounts"] != 4.0 || all["balance"] != 2200.0 {
		t.Errorf("GET /v1/balances?currency=EUR = %d %v, want 4 accounts holding 2200", code, all)
	}

	type asOf struct {
		Balance, Available, PendingHolds, Version int64
	}
	for _, c := range []struct {
		query string
		want  asOf
	}{
		{"as_of_version=0", asOf{}},
		{"as_of_version=1", asOf{Balance: 1000, Available: 1000, Version: 1}},
		{"as_of=" + url.QueryEscape(r.heldAt.Format(time.RFC3339Nano)), asOf{Balance: 930, Available: 930, Version: 3}},
		{"as_of=" + url.QueryEscape(time.Now().UTC().Format(time.RFC3339Nano)), asOf{Balance: 934, Available: 907, PendingHolds: 27, Version: 6}},
		{"as_of_version=4", asOf{Balance: 932, Available: 905, PendingHolds: 27, Version: 4}},
		{"as_of_version=6", asOf{Balance: 934, Available: 907, PendingHolds: 27, Version: 6}},
	} {
		var got asOf
		var raw struct {
			Balance      int64 `json:"balance"`
			Available    int64 `json:"available"`
			PendingHolds int64 `json:"pending_holds"`
			Version      int64 `json:"version"`
		}
		if code := r.get(t, "/v1/accounts/merchant-42:eur?"+c.query, &raw); code != http.StatusOK {
			t.Errorf("GET the account ?%s = %d, want 200", c.query, code)
			continue
		}
		got = asOf{raw.Balance, raw.Available, raw.PendingHolds, raw.Version}
		if got != c.want {
			t.Errorf("GET the account ?%s = %+v, want %+v", c.query, got, c.want)
		}
	}
	for _, q := range []string{"as_of_version=7", "as_of=2000-01-01T00:00:00Z"} {
		if code := r.get(t, "/v1/accounts/merchant-42:eur?"+q, nil); code != http.StatusNotFound {
			t.Errorf("GET the account ?%s = %d, want 404 (no such version, or before it existed)", q, code)
		}
	}
	// Without a replica, a version the ledger has not reached is 409.
	code, _, h := r.request(t, http.MethodGet, "/v1/accounts/merchant-42:eur?min_version=99", "", r.key)
	if code != http.StatusConflict || h.Get("Retry-After") == "" {
		t.Errorf("GET the account ?min_version=99 = %d Retry-After %q, want 409 with Retry-After", code, h.Get("Retry-After"))
	}
	if code := r.get(t, "/v1/accounts/merchant-42:eur?min_version=6", nil); code != http.StatusOK {
		t.Errorf("GET the account ?min_version=6 = %d, want 200", code)
	}
}

// TestQueriesOfAScopedKey: a key scoped to merchant-42:* sees only what
// touches its accounts, whatever the query; 404 for a foreign account
// named; a list of every account's rows is refused (400) rather than
// read and filtered; a transaction shows it only its own legs.
func TestQueriesOfAScopedKey(t *testing.T) {
	r := newQueryRig(t)
	for _, c := range []struct {
		path, field, id string
		want            []string
	}{
		{"/v1/transfers?account_id=merchant-42:eur", "transfers", "transfer_id", []string{"split2", "split", "hold7", "hold2", "hold1", "refund", "pay", "deposit42"}},
		{"/v1/transfers?account_id=merchant-42:eur&type=deposit", "transfers", "transfer_id", []string{"deposit42"}},
		{"/v1/transfers?reference=their-order", "transfers", "transfer_id", nil},
		{"/v1/transfers?reference=order-1", "transfers", "transfer_id", []string{"pay"}},
		{"/v1/transfers?account_id=merchant-42:eur&status=rejected", "transfers", "transfer_id", []string{"rejected"}},
		{"/v1/holds?account_id=merchant-42:eur", "holds", "transfer_id", []string{"hold2", "hold1"}},
		{"/v1/accounts?prefix=merchant-4", "accounts", "account_id", []string{"merchant-42:eur", "merchant-42:usd"}},
		{"/v1/accounts", "accounts", "account_id", []string{"merchant-42:eur", "merchant-42:usd"}},
	} {
		got := r.list(t, c.path, c.field, c.id, r.scoped)
		if c.field != "accounts" {
			got = r.names(got)
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("GET %s with the scoped key (-want +got):\n%s", c.path, diff)
		}
	}
	for _, path := range []string{"/v1/transfers?account_id=merchant-7:eur", "/v1/transfers?account_id=merchant-4:eur&status=rejected",
		"/v1/holds?account_id=merchant-7:eur", "/v1/accounts/merchant-7:eur?as_of_version=1", "/v1/accounts/merchant-4:eur?min_version=1",
		"/v1/accounts/merchant-424:eur?as_of_version=1", "/v1/transfers?account_id=@external:EUR"} {
		if code, body, _ := r.request(t, http.MethodGet, path, "", r.scoped); code != http.StatusNotFound {
			t.Errorf("GET %s with the scoped key = %d %v, want 404", path, code, body)
		}
	}
	for _, path := range []string{"/v1/transfers", "/v1/transfers?type=deposit", "/v1/transfers?status=rejected", "/v1/holds"} {
		if code, body, _ := r.request(t, http.MethodGet, path, "", r.scoped); code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "/account_id") {
			t.Errorf("GET %s with the scoped key = %d %v, want 400 naming /account_id", path, code, body)
		}
	}
	code, sum, _ := r.request(t, http.MethodGet, "/v1/balances?prefix=merchant-&currency=EUR", "", r.scoped)
	if code != http.StatusOK || sum["accounts"] != 1.0 || sum["balance"] != 934.0 {
		t.Errorf("GET /v1/balances?prefix=merchant-&currency=EUR with the scoped key = %d %v, want merchant-42:eur's alone", code, sum)
	}
	// split's first leg is between two other tenants: the scoped key sees
	// only the leg that pays it, as the transfer's movement.
	var split struct {
		From   string           `json:"from_account_id"`
		To     string           `json:"to_account_id"`
		Amount int64            `json:"amount"`
		Legs   []map[string]any `json:"legs"`
	}
	_, body, _ := r.request(t, http.MethodGet, "/v1/transfers/"+r.ids["split"], "", r.scoped)
	b, _ := json.Marshal(body)
	if err := json.Unmarshal(b, &split); err != nil || split.From != "merchant-4:eur" || split.To != "merchant-42:eur" || split.Amount != 2 || len(split.Legs) != 1 {
		t.Errorf("the split as the scoped key sees it = %s, want its second leg alone (merchant-4:eur → merchant-42:eur, 2)", b)
	}
	// '_' in a pattern is a character, not LIKE's wildcard.
	underscore, _ := createScopedKey(t, r.db.URL, "merchant_", "ledger:read", "merchant_*")
	if got := r.list(t, "/v1/accounts", "accounts", "account_id", underscore); !cmp.Equal(got, []string{"merchant_42:eur"}) {
		t.Errorf("GET /v1/accounts with a key scoped to merchant_* = %v, want merchant_42:eur alone", got)
	}
	exact, _ := createScopedKey(t, r.db.URL, "exact", "ledger:read", "merchant-4:eur,merchant-7:eur")
	if got := r.list(t, "/v1/accounts?limit=1", "accounts", "account_id", exact); !cmp.Equal(got, []string{"merchant-4:eur", "merchant-7:eur"}) {
		t.Errorf("GET /v1/accounts with a key of two exact ids = %v, want those two", got)
	}
}
