package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// TestReadmePaymentFlows posts the README's payment flows, exactly as
// written there (the open_account loop's accounts, then every post '…'),
// and checks the balances its comments promise: so the examples a payments
// team copies on its first day run.
func TestReadmePaymentFlows(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "<!-- payment-flows:begin -->")
	section, _, ok2 := strings.Cut(section, "<!-- payment-flows:end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no payment-flows section")
	}
	p := startPipeline(t)
	send := func(body string) {
		t.Helper()
		var c struct {
			CommandID string `json:"command_id"`
		}
		if err := json.Unmarshal([]byte(body), &c); err != nil {
			t.Fatalf("README command %s: %v", body, err)
		}
		if code, resp := p.post(t, "/v1/commands", body); code != http.StatusAccepted {
			t.Fatalf("POST %s = %d %v", body, code, resp)
		}
		if status, reason := p.awaitOutcome(t, c.CommandID); status != "applied" {
			t.Fatalf("README command %s: %s %s, want applied", body, status, reason)
		}
	}
	accounts := regexp.MustCompile(`for acct in ([^;]+); do`).FindStringSubmatch(section)
	if accounts == nil {
		t.Fatal("README.md: no account loop in the payment flows")
	}
	for _, a := range strings.Fields(accounts[1]) {
		id, cur, _ := strings.Cut(a, ":")
		send(fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":%q,"currency":%q}`, uuid.Must(uuid.NewV7()).String(), id, cur))
	}
	// The posts in order, each "# balances:" line checked where it stands.
	post := regexp.MustCompile(`^post '(.+)'$`)
	balance := regexp.MustCompile(`([a-z][a-z-]*) (\d+)`)
	posts, checked := 0, 0
	for _, line := range strings.Split(section, "\n") {
		if m := post.FindStringSubmatch(line); m != nil {
			send(m[1])
			posts++
			continue
		}
		text, ok := strings.CutPrefix(line, "# balances:")
		if !ok {
			continue
		}
		text, _, _ = strings.Cut(text, "(")
		for _, m := range balance.FindAllStringSubmatch(text, -1) {
			want, _ := strconv.ParseInt(m[2], 10, 64)
			var a struct{ Balance int64 }
			if code := p.get(t, "/v1/accounts/"+m[1], &a); code != http.StatusOK || a.Balance != want {
				t.Errorf("%s: %d balance %d, README says %d", m[1], code, a.Balance, want)
			}
			checked++
		}
	}
	if posts < 8 || checked < 11 {
		t.Errorf("README: %d posts and %d balances, want the setup, three flows and every balance they change", posts, checked)
	}
	p.verify(t)
}
