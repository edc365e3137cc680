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
	section := readmeSection(t, "payment-flows")
	p := startPipeline(t)
	runPaymentFlows(t, p, section)
	p.verify(t)
}

// readmeSection is the README's text between <!-- name:begin --> and
// <!-- name:end -->.
func readmeSection(t *testing.T, name string) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "<!-- "+name+":begin -->")
	section, _, ok2 := strings.Cut(section, "<!-- "+name+":end -->")
	if !ok || !ok2 {
		t.Fatalf("README.md has no %s section", name)
	}
	return section
}

func runPaymentFlows(t *testing.T, p *pipeline, section string) {
	t.Helper()
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
}

// TestReadmeQueries runs the README's scoped key and queries after its
// payment flows: the key as its apikey line makes it, each curl with the
// key it names, the answer checked against the line's comment (a status,
// the fields of a JSON object, or 200).
func TestReadmeQueries(t *testing.T) {
	flows, section := readmeSection(t, "payment-flows"), readmeSection(t, "queries")
	p := startPipeline(t)
	runPaymentFlows(t, p, flows)
	create := regexp.MustCompile(`bin/txpipe apikey create --name (\S+) --scopes (\S+) --accounts '([^']+)'`).FindStringSubmatch(section)
	if create == nil {
		t.Fatal("README queries: no apikey create --accounts line")
	}
	scoped, _ := createScopedKey(t, p.db.URL, create[1], create[2], create[3])
	keys := map[string]string{"KEY": p.key, "SKEY": scoped}
	curl := regexp.MustCompile(`^curl -s -H "Authorization: Bearer \$(\w+)" 'localhost:8080(/[^']+)'\s+# (.*)$`)
	ran := 0
	for _, line := range strings.Split(section, "\n") {
		m := curl.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ran++
		code, body, _ := p.request(t, http.MethodGet, m[2], "", keys[m[1]])
		want := http.StatusOK
		if n, err := strconv.Atoi(strings.SplitN(m[3], ":", 2)[0]); err == nil {
			want = n
		}
		if code != want {
			t.Errorf("README %s = %d %v, want %d", m[2], code, body, want)
		}
		var fields map[string]any
		if json.Unmarshal([]byte(m[3]), &fields) == nil {
			for k, v := range fields {
				if body[k] != v {
					t.Errorf("README %s: %s = %v, the comment says %v", m[2], k, body[k], v)
				}
			}
		}
	}
	if ran < 4 {
		t.Errorf("README queries: ran %d curl lines, want 4", ran)
	}
}
