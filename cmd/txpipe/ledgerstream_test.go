package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/ledgerstream"
)

// TestLedgerstreamFollowsThePostings: a downstream service built on
// ledgerstream, in a consumer group on the real broker, after the README's
// payment flows: its callback sees every posting once, its balances equal
// the API's, no problem is reported; stopped and started again with the
// tracker's state, it sees only the postings made since.
func TestLedgerstreamFollowsThePostings(t *testing.T) {
	p := startPipeline(t)
	runPaymentFlows(t, p, readmeSection(t, "payment-flows"))
	p.verify(t)

	var mu sync.Mutex
	calls, problems := 0, []string{}
	balances := map[string]int64{}
	follow := func(tr *ledgerstream.Tracker, until func() bool) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- ledgerstream.Run(ctx, ledgerstream.Options{Brokers: p.kc.Brokers, Topic: p.topics.Postings, GroupID: "ls-" + p.topics.Postings,
				Tracker: tr,
				OnPosting: func(_ context.Context, ps ledgerstream.Posting, a ledgerstream.Account) error {
					mu.Lock()
					defer mu.Unlock()
					calls++
					balances[ps.AccountID] = a.Balance
					return nil
				},
				OnProblem: func(pr ledgerstream.Problem) { mu.Lock(); problems = append(problems, pr.String()); mu.Unlock() },
			})
		}()
		eventually(t, "ledgerstream catches up", func() bool { mu.Lock(); defer mu.Unlock(); return until() })
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v", err)
		}
	}
	total := int(p.kc.Count(context.Background(), t, p.topics.Postings))
	tr := ledgerstream.NewTracker(nil)
	follow(tr, func() bool { return calls == total })
	for acct, b := range balances {
		var a struct{ Balance int64 }
		if code := p.get(t, "/v1/accounts/"+url.PathEscape(acct), &a); code != http.StatusOK || a.Balance != b {
			t.Errorf("account %s: ledgerstream says %d, the API %d (%d)", acct, b, a.Balance, code)
		}
	}
	if len(problems) != 0 || len(balances) < 10 {
		t.Fatalf("problems %q over %d accounts", problems, len(balances))
	}

	// Later: one more payment; a restart resumes from the stored state.
	if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"shop","to_account_id":"payer","amount":100,"currency":"EUR"}`,
		uuid.Must(uuid.NewV7()))); status != "applied" {
		t.Fatalf("transfer = %s %s", status, reason)
	}
	calls = 0
	follow(ledgerstream.NewTracker(tr.State()), func() bool { return calls >= 2 })
	if calls != 2 || len(problems) != 0 || balances["shop"] != 900 {
		t.Errorf("after the restart: %d callbacks (want the transfer's 2), problems %q, shop %d (want 900)", calls, problems, balances["shop"])
	}
}
