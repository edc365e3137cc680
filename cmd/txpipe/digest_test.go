package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
)

// TestVerifyNamesATamperedEntryOrRecord: "txpipe verify" passes on the
// pipeline's own output, then fails, naming the account and the version
// where its digest chain breaks, on an entry altered in PostgreSQL and on
// a posting record altered on the topic.
func TestVerifyNamesATamperedEntryOrRecord(t *testing.T) {
	p := startPipeline(t)
	id := func() string { return uuid.Must(uuid.NewV7()).String() }
	for _, c := range []string{`"type":"open_account","account_id":"alice","currency":"EUR"`, `"type":"open_account","account_id":"bob","currency":"EUR"`,
		`"type":"deposit","account_id":"alice","amount":1000,"currency":"EUR"`,
		`"type":"transfer","from_account_id":"alice","to_account_id":"bob","amount":250,"currency":"EUR"`} {
		if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,%s}`, id(), c)); status != "applied" {
			t.Fatalf("%s = %s %s", c, status, reason)
		}
	}
	out := p.verify(t)
	if !strings.Contains(out, "ok   invariant 7") {
		t.Fatalf("verify on the pipeline's own output:\n%s\nwant invariant 7 checked and holding", out)
	}

	// An entry's digest rewritten, as someone covering an edit would.
	ctx := context.Background()
	if _, err := p.db.Pool.Exec(ctx, `UPDATE entries SET digest = sha256('forged') WHERE account_id = 'alice' AND account_version = 2`); err != nil {
		t.Fatal(err)
	}
	out, err := p.runVerify()
	if err == nil || !strings.Contains(out, "PostgreSQL: account alice breaks at version 2") {
		t.Errorf("verify with alice's entry 2 forged = %v:\n%s\nwant a failure naming alice, version 2", err, out)
	}
	if _, err := p.db.Pool.Exec(ctx, `UPDATE entries e SET digest = a.digest FROM accounts a
		WHERE e.account_id = 'alice' AND e.account_version = 2 AND a.account_id = 'alice'`); err != nil {
		t.Fatal(err)
	}
	if out, err := p.runVerify(); err != nil {
		t.Fatalf("verify once the entry is restored = %v:\n%s", err, out)
	}

	// A posting of bob's published again with a new event id and an
	// altered amount: the chain on the topic breaks there.
	forged := domain.Event{EventID: id(), Type: "posting.created", CommandID: id(),
		Data: []byte(`{"account_id":"bob","account_version":2,"currency":"EUR","amount":1,"balance_after":251,"command_type":"deposit","digest":"` + strings.Repeat("0", 64) + `"}`)}
	w := p.kc.Writer(t)
	if err := w.WriteMessages(ctx, kafka.Message{Topic: p.topics.Postings, Key: []byte("bob"), Value: forged.Encode()}); err != nil {
		t.Fatal(err)
	}
	out, err = p.runVerify()
	if err == nil || !strings.Contains(out, "the postings topic: account bob breaks at version 2") {
		t.Errorf("verify with a forged posting of bob = %v:\n%s\nwant a failure naming bob, version 2", err, out)
	}
}
