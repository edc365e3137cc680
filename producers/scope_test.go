package producers_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/producers"
	"github.com/txpipe/txpipe/producers/apikey"
)

// scopedAuth gives testKey every scope, limited to merchant-42's accounts
// ("merchant-42" and "merchant-42:*") and the account "shared".
type scopedAuth struct{}

func (scopedAuth) Authenticate(_ context.Context, header string) (apikey.Identity, error) {
	if header != testKey {
		return apikey.Identity{}, apikey.ErrUnauthenticated
	}
	return apikey.Identity{KeyID: "0123456789abcdef", Name: "merchant-42", Scopes: apikey.Scopes,
		Accounts: []string{"merchant-42", "merchant-42:*", "shared"}}, nil
}

// TestScopedKeysCannotReachOtherTenants is the hostile corpus: every
// attempt of a key scoped to merchant-42 on another tenant's money or
// data is refused — writes with 403 and nothing produced, reads with the
// 404 (or the empty list) of something that does not exist.
func TestScopedKeysCannotReachOtherTenants(t *testing.T) {
	w := &recordingWriter{}
	f := ledgerOf()
	for _, id := range []string{"merchant-4", "merchant-42", "merchant-420", "Merchant-42", "merchant-42:eur"} {
		f.accounts[id] = ledger.Account{ID: id, Currency: "EUR", Status: "active"}
	}
	// A transfer between two other tenants, found by id and by reference.
	f.transfers[transferID] = ledger.Transfer{TransferData: domain.TransferData{TransferID: transferID, Kind: "transfer",
		FromAccountID: "merchant-4", ToAccountID: "merchant-420", Currency: "EUR", Amount: 5, Status: "posted", Reference: "their-order"}}
	f.transfers[holdID] = ledger.Transfer{TransferData: domain.TransferData{TransferID: holdID, Kind: "transfer",
		FromAccountID: "merchant-4", ToAccountID: "merchant-42:eur", Currency: "EUR", Amount: 5, Status: "posted", Reference: "paid-to-us"}}
	f.outcomes[cmdApplied] = ledger.Outcome{CommandID: cmdApplied, Type: "transfer", Status: "applied", DebitAccountID: "merchant-4"}
	h := newTestAPI(t, producers.APIOptions{Producer: producers.NewProducer(w, "ledger.commands.v1"), Auth: scopedAuth{}, Ledger: f})

	cmd := func(n int, body string) string {
		return `{"command_id":"01900000-0000-7000-8000-0000000009` + string(rune('0'+n/10)) + string(rune('0'+n%10)) + `",` + body + `}`
	}
	transfer := func(n int, from string) string {
		return cmd(n, `"type":"transfer","from_account_id":"`+from+`","to_account_id":"merchant-42","amount":1,"currency":"EUR"`)
	}
	for _, tt := range []struct{ name, path, body string }{
		{"another tenant's account", "/v1/commands", transfer(1, "merchant-4")},
		{"an id that extends an exact pattern", "/v1/commands", transfer(2, "merchant-420")},
		{"another case", "/v1/commands", transfer(3, "Merchant-42")},
		{"opening an account outside the scope", "/v1/commands", cmd(4, `"type":"open_account","account_id":"merchant-43","currency":"EUR"`)},
		{"funding one", "/v1/commands", cmd(5, `"type":"deposit","account_id":"merchant-43","amount":1,"currency":"EUR"`)},
		{"a transaction with one foreign leg", "/v1/commands", cmd(6, `"type":"transaction","legs":[`+
			`{"from_account_id":"merchant-42","to_account_id":"shared","amount":1,"currency":"EUR"},`+
			`{"from_account_id":"merchant-4","to_account_id":"merchant-42","amount":1,"currency":"EUR"}]`)},
		{"a batch mixing tenants", "/v1/commands/batch", `{"commands":[` + transfer(7, "merchant-42") + `,` + transfer(8, "merchant-4") + `]}`},
		{"a sweep out of another tenant's account", "/v1/commands", cmd(9, `"type":"close_account","account_id":"merchant-4","sweep_to_account_id":"merchant-42"`)},
		{"another tenant's fee plan", "/v1/commands", cmd(10, `"type":"set_fee_plan","account_id":"merchant-4","fee_plan":null`)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := serve(h, http.MethodPost, tt.path, tt.body)
			if p := problemOf(t, rec); rec.Code != http.StatusForbidden || p.Type != producers.ProblemTypeBase+"forbidden" {
				t.Errorf("POST %s = %d %s, want 403 forbidden", tt.body, rec.Code, p.Type)
			}
		})
	}
	if n := w.written(); n != 0 {
		t.Fatalf("%d commands reached Kafka from refused requests", n)
	}

	missing := serve(h, http.MethodGet, "/v1/accounts/nobody", "").Body.String()
	calls := f.calls
	for _, path := range []string{"/v1/accounts/merchant-4", "/v1/accounts/merchant-420", "/v1/accounts/Merchant-42", "/v1/accounts/merchant-4/entries?limit=1000",
		// The queries: a foreign account named is the same 404, before any read.
		"/v1/accounts/merchant-4?as_of_version=1", "/v1/accounts/merchant-420?as_of=2026-01-01T00:00:00Z", "/v1/accounts/Merchant-42?min_version=1",
		"/v1/transfers?account_id=merchant-4", "/v1/transfers?account_id=merchant-420&status=rejected", "/v1/transfers?account_id=%6Derchant-4",
		"/v1/holds?account_id=merchant-4", "/v1/transfers?account_id=@external:EUR&reference=their-order"} {
		if rec := serve(h, http.MethodGet, path, ""); rec.Code != http.StatusNotFound || rec.Body.String() != missing {
			t.Errorf("GET %s = %d %s, want the 404 of an account that does not exist", path, rec.Code, rec.Body)
		}
	}
	if f.calls != calls {
		t.Errorf("the ledger was read %d times for accounts outside the scope, want 0: the scope depends on the id alone", f.calls-calls)
	}
	for _, path := range []string{"/v1/transfers/" + transferID, "/v1/commands/" + cmdApplied} {
		if rec := serve(h, http.MethodGet, path, ""); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, rec.Code)
		}
	}
	if rec := serve(h, http.MethodGet, "/v1/transfers?reference=their-order", ""); rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != `{"transfers":[]}` {
		t.Errorf("another tenant's transfer by reference = %d %s, want an empty list", rec.Code, rec.Body)
	}
	// Lists of every tenant's rows are refused, not read and filtered.
	for _, path := range []string{"/v1/transfers", "/v1/transfers?type=deposit", "/v1/transfers?status=rejected", "/v1/holds?expiring_before=2027-01-01T00:00:00Z"} {
		if rec := serve(h, http.MethodGet, path, ""); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"/account_id"`) {
			t.Errorf("GET %s = %d %s, want 400 naming /account_id", path, rec.Code, rec.Body)
		}
	}
	for _, path := range []string{"/v1/accounts/merchant-42%2F..%2Fmerchant-4", "/v1/accounts/merchant-42%00", "/v1/accounts/..%2Fmerchant-4"} {
		if rec := serve(h, http.MethodGet, path, ""); rec.Code != http.StatusBadRequest && rec.Code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 400 or 404", path, rec.Code)
		}
	}

	// What the key does own stays reachable: its accounts, a transfer paid
	// to one of them, and money moved from them.
	for _, path := range []string{"/v1/accounts/merchant-42", "/v1/accounts/merchant-42:eur", "/v1/transfers/" + holdID} {
		if rec := serve(h, http.MethodGet, path, ""); rec.Code != http.StatusOK {
			t.Errorf("GET %s = %d, want 200: the key covers it", path, rec.Code)
		}
	}
	if rec := serve(h, http.MethodPost, "/v1/commands", transfer(11, "merchant-42:eur")); rec.Code != http.StatusAccepted || w.written() != 1 {
		t.Errorf("a transfer from a covered account = %d (%d produced), want 202 and one record", rec.Code, w.written())
	}
}
