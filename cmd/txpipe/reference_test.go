package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/domain"
)

// TestReferencesAreUniqueAndFindTheirTransfer runs references through the
// whole pipeline: the first money command with a reference applies, a
// second command with it under another id is rejected reference_exists,
// a rejected command does not use its reference up, the transfer is found
// by its reference, and its postings carry it.
func TestReferencesAreUniqueAndFindTheirTransfer(t *testing.T) {
	p := startPipeline(t)
	id := func() string { return uuid.Must(uuid.NewV7()).String() }
	for _, c := range []string{
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"shop","currency":"EUR"}`, id()),
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"payer","currency":"EUR"}`, id()),
		fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"payer","amount":100,"currency":"EUR"}`, id()),
	} {
		if status, reason := p.submit(t, c); status != "applied" {
			t.Fatalf("setup %s: %s %s", c, status, reason)
		}
	}
	const ref = "order 4711/A"
	first := id()
	steps := []struct {
		body, status, reason string
	}{
		{fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"payer","to_account_id":"shop","amount":30,"currency":"EUR","reference":%q}`, first, ref), "applied", ""},
		{fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"payer","to_account_id":"shop","amount":1,"currency":"EUR","reference":%q}`, id(), ref), "rejected", "reference_exists"},
		{fmt.Sprintf(`{"command_id":%q,"type":"hold","from_account_id":"payer","to_account_id":"shop","amount":1,"currency":"EUR","reference":%q}`, id(), ref), "rejected", "reference_exists"},
		{fmt.Sprintf(`{"command_id":%q,"type":"withdraw","account_id":"payer","amount":1000,"currency":"EUR","reference":"order 4712"}`, id()), "rejected", "insufficient_funds"},
		{fmt.Sprintf(`{"command_id":%q,"type":"withdraw","account_id":"payer","amount":10,"currency":"EUR","reference":"order 4712"}`, id()), "applied", ""},
	}
	for _, s := range steps {
		if status, reason := p.submit(t, s.body); status != s.status || reason != s.reason {
			t.Errorf("%s = %s %s, want %s %s", s.body, status, reason, s.status, s.reason)
		}
	}

	var found struct {
		Transfers []domain.TransferData `json:"transfers"`
	}
	if code := p.get(t, "/v1/transfers?reference="+url.QueryEscape(ref), &found); code != http.StatusOK ||
		len(found.Transfers) != 1 || found.Transfers[0].TransferID != first || found.Transfers[0].Amount != 30 || found.Transfers[0].Reference != ref {
		t.Errorf("GET /v1/transfers?reference=%s = %d %+v, want the first transfer alone", ref, code, found)
	}

	// Postings: the deposit's two carry none; the transfer's two and the
	// withdrawal's two carry their references.
	want := map[string]int{"": 2, ref: 2, "order 4712": 2}
	got := map[string]int{}
	for _, ev := range p.events(t, p.topics.Postings, 6) {
		var d domain.PostingData
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		got[d.Reference]++
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("postings by reference = %v, want %v", got, want)
	}
	p.validateSchemas(t)
	if out := p.verify(t); out == "" {
		t.Error("verify printed nothing")
	}
}
