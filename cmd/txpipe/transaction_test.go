package main

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/domain"
)

// TestTransactionsThroughThePipeline: a payment with its fee and an
// exchange applies as one transaction; one whose second leg cannot be paid
// leaves nothing; a reversal of one leg gives back only that; the transfer
// shows its legs; verify passes.
func TestTransactionsThroughThePipeline(t *testing.T) {
	p := startPipeline(t)
	id := func() string { return uuid.Must(uuid.NewV7()).String() }
	for _, c := range []string{`"type":"open_account","account_id":"payer","currency":"EUR"`, `"type":"open_account","account_id":"shop","currency":"EUR"`,
		`"type":"open_account","account_id":"fees","currency":"EUR"`, `"type":"open_account","account_id":"lp-eur","currency":"EUR"`,
		`"type":"open_account","account_id":"lp-usd","currency":"USD"`, `"type":"open_account","account_id":"payer-usd","currency":"USD"`,
		`"type":"deposit","account_id":"payer","amount":100,"currency":"EUR"`, `"type":"deposit","account_id":"lp-usd","amount":1000,"currency":"USD"`} {
		if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,%s}`, id(), c)); status != "applied" {
			t.Fatalf("setup %s: %s %s", c, status, reason)
		}
	}
	leg := func(from, to string, amount int, cur string) string {
		return fmt.Sprintf(`{"from_account_id":%q,"to_account_id":%q,"amount":%d,"currency":%q}`, from, to, amount, cur)
	}
	txID := id()
	if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,"type":"transaction","reference":"cart-9","legs":[%s,%s,%s,%s]}`, txID,
		leg("payer", "shop", 60, "EUR"), leg("payer", "fees", 2, "EUR"), leg("payer", "lp-eur", 30, "EUR"), leg("lp-usd", "payer-usd", 33, "USD"))); status != "applied" {
		t.Fatalf("transaction = %s %s, want applied", status, reason)
	}
	failing := id()
	if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,"type":"transaction","legs":[%s,%s]}`, failing,
		leg("payer", "shop", 1, "EUR"), leg("payer", "fees", 1000, "EUR"))); status != "rejected" || reason != "insufficient_funds" {
		t.Fatalf("transaction beyond the funds = %s %s, want rejected insufficient_funds", status, reason)
	}
	var outcome struct{ Leg *int }
	if code := p.get(t, "/v1/commands/"+failing, &outcome); code != http.StatusOK || outcome.Leg == nil || *outcome.Leg != 1 {
		t.Errorf("GET /v1/commands of the failed transaction = %d leg %v, want leg 1", code, outcome.Leg)
	}
	if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,"type":"reverse","account_id":"payer","transfer_id":%q,"leg_amounts":[0,2,0,0]}`, id(), txID)); status != "applied" {
		t.Fatalf("reversal of the fee = %s %s, want applied", status, reason)
	}

	var tr domain.TransferData
	if code := p.get(t, "/v1/transfers/"+txID, &tr); code != http.StatusOK || tr.Kind != domain.KindTransaction || len(tr.Legs) != 4 ||
		tr.Legs[1].ReversedAmount != 2 || tr.Legs[3].Currency != "USD" || tr.Reference != "cart-9" {
		t.Errorf("GET /v1/transfers/%s = %d %+v, want the transaction's four legs, the fee's reversed", txID, code, tr)
	}
	for acct, want := range map[string]int64{"payer": 100 - 60 - 2 - 30 + 2, "shop": 60, "fees": 0, "lp-eur": 30, "lp-usd": 967, "payer-usd": 33} {
		var a struct{ Balance int64 }
		if code := p.get(t, "/v1/accounts/"+acct, &a); code != http.StatusOK || a.Balance != want {
			t.Errorf("%s: %d balance %d, want %d", acct, code, a.Balance, want)
		}
	}
	p.verify(t)
}
