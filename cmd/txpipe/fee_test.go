package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/domain"
)

// TestFeePlansThroughThePipeline: an account's fee plan is shown on it,
// charged on its transfer in the same step (on the transfer and its
// outcome), refused when its revenue account cannot take it, and verify
// passes.
func TestFeePlansThroughThePipeline(t *testing.T) {
	p := startPipeline(t)
	cmd := func(body string) string {
		return fmt.Sprintf(`{"command_id":%q,%s}`, uuid.Must(uuid.NewV7()).String(), body)
	}
	for _, c := range []string{`"type":"open_account","account_id":"payer","currency":"EUR"`, `"type":"open_account","account_id":"shop","currency":"EUR"`,
		`"type":"open_account","account_id":"revenue","currency":"EUR"`, `"type":"open_account","account_id":"revenue-usd","currency":"USD"`,
		`"type":"deposit","account_id":"payer","amount":100000,"currency":"EUR"`,
		`"type":"set_fee_plan","account_id":"payer","fee_plan":{"bps":150,"fixed":30,"min":50,"max":500,"revenue_account_id":"revenue"}`} {
		if status, reason := p.submit(t, cmd(c)); status != "applied" {
			t.Fatalf("%s: %s %s", c, status, reason)
		}
	}
	if status, reason := p.submit(t, cmd(`"type":"set_fee_plan","account_id":"shop","fee_plan":{"bps":1,"fixed":0,"revenue_account_id":"revenue-usd"}`)); reason != "fee_account_invalid" {
		t.Errorf("a plan paying into another currency = %s %s, want rejected fee_account_invalid", status, reason)
	}
	transfer := cmd(`"type":"transfer","from_account_id":"payer","to_account_id":"shop","amount":10000,"currency":"EUR"`)
	if status, reason := p.submit(t, transfer); status != "applied" {
		t.Fatalf("transfer = %s %s", status, reason)
	}
	var c struct {
		CommandID string `json:"command_id"`
	}
	_ = json.Unmarshal([]byte(transfer), &c)
	var tr domain.TransferData
	if code := p.get(t, "/v1/transfers/"+c.CommandID, &tr); code != http.StatusOK || tr.Amount != 10000 || tr.Fee != 180 {
		t.Errorf("GET transfer = %d %+v, want 10000 moved and a fee of 30 + 1.5 %% = 180", code, tr)
	}
	var acct struct {
		Balance int64
		FeePlan *domain.FeePlan `json:"fee_plan"`
	}
	if code := p.get(t, "/v1/accounts/payer", &acct); code != http.StatusOK || acct.Balance != 100000-10000-180 ||
		acct.FeePlan == nil || acct.FeePlan.Bps != 150 || acct.FeePlan.RevenueAccountID != "revenue" {
		t.Errorf("GET payer = %d %+v, want 89820 and its plan", code, acct)
	}
	var rev struct{ Balance int64 }
	if p.get(t, "/v1/accounts/revenue", &rev); rev.Balance != 180 {
		t.Errorf("revenue holds %d, want 180", rev.Balance)
	}
	// The outcome event shows the fee on its transfer.
	var found bool
	for _, ev := range p.events(t, p.topics.Events, 8) {
		if ev.CommandID != c.CommandID {
			continue
		}
		var d domain.OutcomeData
		if err := json.Unmarshal(ev.Data, &d); err != nil || d.Transfer == nil || d.Transfer.Fee != 180 || len(d.Postings) != 4 {
			t.Errorf("outcome %s = %s, want the transfer's fee of 180 and four postings", ev.Type, ev.Data)
		}
		found = true
	}
	if !found {
		t.Error("no outcome event for the transfer")
	}
	p.verify(t)
}
