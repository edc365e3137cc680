package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
)

// TestScopedKeyThroughThePipeline: a key made with `apikey create
// --accounts` moves money only from its accounts through ingest (403
// otherwise) and reads only them; a record produced straight to Kafka
// claiming its id but moving another tenant's money is rejected forbidden
// by the worker.
func TestScopedKeyThroughThePipeline(t *testing.T) {
	p := startPipeline(t)
	key, keyID := createScopedKey(t, p.db.URL, "merchant-42", "commands:write,ledger:read", "merchant-42:*")
	// An empty pattern list (an unset variable in a script) must not make a
	// key of every account.
	for _, empty := range []string{"", " , "} {
		if err := run(context.Background(), []string{"apikey", "create", "--database-url", p.db.URL, "--name", "oops",
			"--scopes", "commands:write", "--accounts", empty}, &env{stdout: io.Discard, stderr: io.Discard, lookup: testLookup}); err == nil {
			t.Errorf("apikey create --accounts %q succeeded, want it refused", empty)
		}
	}
	id := func() string { return uuid.Must(uuid.NewV7()).String() }
	// The operator's key (every account) sets up two tenants.
	for _, c := range []string{`"type":"open_account","account_id":"merchant-42:eur","currency":"EUR"`, `"type":"open_account","account_id":"merchant-7:eur","currency":"EUR"`,
		`"type":"deposit","account_id":"merchant-42:eur","amount":100,"currency":"EUR"`, `"type":"deposit","account_id":"merchant-7:eur","amount":100,"currency":"EUR"`} {
		body := fmt.Sprintf(`{"command_id":%q,%s}`, id(), c)
		if code, resp := p.post(t, "/v1/commands", body); code != http.StatusAccepted {
			t.Fatalf("POST %s = %d %v", body, code, resp)
		}
	}
	own := id()
	if code, _, _ := p.request(t, http.MethodPost, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"merchant-42:eur","to_account_id":"merchant-7:eur","amount":10,"currency":"EUR"}`, own), key); code != http.StatusAccepted {
		t.Fatalf("a transfer from the key's account = %d, want 202", code)
	}
	if code, _, _ := p.request(t, http.MethodPost, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"merchant-7:eur","to_account_id":"merchant-42:eur","amount":10,"currency":"EUR"}`, id()), key); code != http.StatusForbidden {
		t.Errorf("a transfer from another tenant's account = %d, want 403", code)
	}
	if status, reason := p.awaitOutcome(t, own); status != "applied" {
		t.Fatalf("own transfer = %s %s", status, reason)
	}
	if code, _, _ := p.request(t, http.MethodGet, "/v1/accounts/merchant-7:eur", "", key); code != http.StatusNotFound {
		t.Errorf("GET another tenant's account = %d, want 404", code)
	}
	if code, _, _ := p.request(t, http.MethodGet, "/v1/accounts/merchant-42:eur", "", key); code != http.StatusOK {
		t.Errorf("GET the key's account = %d, want 200", code)
	}

	// Straight to Kafka, claiming the scoped key: the worker refuses it.
	forged := id()
	w := p.kc.Writer(t)
	if err := w.WriteMessages(context.Background(), kafka.Message{Topic: p.topics.Commands, Key: []byte("merchant-7:eur"),
		Value:   []byte(fmt.Sprintf(`{"command_id":%q,"type":"withdraw","account_id":"merchant-7:eur","amount":50,"currency":"EUR"}`, forged)),
		Headers: []kafka.Header{{Key: domain.SubmittedByHeader, Value: []byte(keyID)}}}); err != nil {
		t.Fatal(err)
	}
	if status, reason := p.awaitOutcome(t, forged); status != "rejected" || reason != "forbidden" {
		t.Errorf("a record claiming the scoped key that withdraws another tenant's money = %s %s, want rejected forbidden", status, reason)
	}
	var a struct{ Balance int64 }
	if p.get(t, "/v1/accounts/merchant-7:eur", &a); a.Balance != 110 {
		t.Errorf("merchant-7:eur holds %d, want 110: nothing withdrawn", a.Balance)
	}
	p.verify(t)
}
