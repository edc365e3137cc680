package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/ledgertest"
)

// TestModelCheckAgainstPureDomain pushes a few thousand random commands
// through the real pipeline and replays them through the pure domain rules
// in the order the workers decided them (processed_commands.seq, taken under
// the account locks): every outcome and every final account must agree, and
// txpipe verify must pass.
func TestModelCheckAgainstPureDomain(t *testing.T) {
	if testing.Short() {
		t.Skip("soak-sized; runs without -short")
	}
	p := startPipelineWith(t, 4, "--lanes", "2") // two transactions at once, as the hot-account test below
	accounts := []ledgertest.Account{{ID: "m1", Currency: "EUR"}, {ID: "m2", Currency: "EUR"}, {ID: "m3", Currency: "EUR"},
		{ID: "m4", Currency: "EUR"}, {ID: "m5", Currency: "USD"}, {ID: "m6", Currency: "USD"}, {ID: "m7", Currency: "USD"}, {ID: "m8", Currency: "GBP"}}
	modelCheck(t, p, accounts, 3000)
}

// TestConcurrentTransfersOnHotAccounts: many small batches on six
// partitions, in three lanes (three transactions at once), fight over five
// accounts. Deadlocks and serialization failures must be retried, no update
// lost, and money conserved.
func TestConcurrentTransfersOnHotAccounts(t *testing.T) {
	p := startPipelineWith(t, 6, "--batch-size", "8", "--batch-linger", "0s", "--lanes", "3")
	accounts := []ledgertest.Account{{ID: "h1", Currency: "EUR"}, {ID: "h2", Currency: "EUR"}, {ID: "h3", Currency: "EUR"},
		{ID: "h4", Currency: "EUR"}, {ID: "h5", Currency: "EUR"}}
	modelCheck(t, p, accounts, 1500)
}

func modelCheck(t *testing.T, p *pipeline, accounts []ledgertest.Account, n int) {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := hex.EncodeToString(b[:])
	byID := make(map[string]domain.Command)
	var opens []domain.Command
	for i, a := range accounts {
		cmd := domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-9000-%012d", prefix, i), Type: domain.TypeOpenAccount,
			AccountID: a.ID, Currency: a.Currency, OverdraftLimit: int64(i%3) * 100}
		if i%4 == 1 {
			cmd.DailyDebitLimit = 2000
		}
		// A starting balance, so accounts are rarely empty enough to close.
		dep := domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-a000-%012d", prefix, i), Type: domain.TypeDeposit,
			AccountID: a.ID, Currency: a.Currency, Amount: 5000}
		opens = append(opens, cmd, dep)
		byID[cmd.CommandID], byID[dep.CommandID] = cmd, dep
	}
	p.produceCommands(t, opens)
	for _, c := range opens {
		p.awaitOutcome(t, c.CommandID)
	}
	gen := ledgertest.Generator{Accounts: accounts, Base: time.Now().Add(24 * time.Hour), IDPrefix: prefix}
	cmds := gen.Commands(uint64(b[0])<<8|uint64(b[1]), n)
	for _, c := range cmds {
		byID[c.CommandID] = c
	}
	p.produceCommands(t, cmds)
	p.verify(t) // waits for the pipeline to drain first
	replayModel(t, p, byID)
}

// replayModel replays every processed command, in the order the workers
// decided them (processed_commands.seq), through the pure domain rules, and
// fails on any outcome or final account that differs.
func replayModel(t *testing.T, p *pipeline, byID map[string]domain.Command) {
	t.Helper()
	ctx := context.Background()
	rows, err := p.db.Pool.Query(ctx, `SELECT command_id::text, status, coalesce(reason, ''), processed_at
		FROM processed_commands ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	book := domain.NewBook()
	for _, cur := range []string{"EUR", "USD", "GBP"} {
		book.Accounts[domain.ExternalAccountID(cur)] = domain.NewExternalAccount(cur)
	}
	replayed, mismatches := 0, 0
	reasons := make(map[string]int)
	for rows.Next() {
		var id, status, reason string
		var at time.Time
		if err := rows.Scan(&id, &status, &reason, &at); err != nil {
			t.Fatal(err)
		}
		cmd, ok := byID[id]
		if !ok {
			t.Fatalf("processed command %s was never sent", id)
		}
		res := book.Apply(cmd, at)
		replayed++
		reasons[status+" "+reason]++
		if string(res.Status) != status || string(res.Reason) != reason {
			mismatches++
			if mismatches <= 10 {
				t.Errorf("command %s (%s): pipeline %s %q, model %s %q", id, cmd.Type, status, reason, res.Status, res.Reason)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if replayed != len(byID) {
		t.Errorf("%d commands processed, %d sent", replayed, len(byID))
	}
	dbRows, err := p.db.Pool.Query(ctx, `SELECT account_id, balance, held, status, version FROM accounts`)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]bool)
	for dbRows.Next() {
		var id, status string
		var balance, held, version int64
		if err := dbRows.Scan(&id, &balance, &held, &status, &version); err != nil {
			t.Fatal(err)
		}
		seen[id] = true
		m := book.Accounts[id]
		if m == nil || m.Balance != balance || m.Held != held || string(m.Status) != status || m.Version != version {
			t.Errorf("account %s: pipeline balance %d held %d %s v%d, model %+v", id, balance, held, status, version, m)
		}
	}
	for id, m := range book.Accounts {
		if !seen[id] && !(m.External && m.Version == 0) { // the model pre-creates every external account
			t.Errorf("account %s exists in the model only: %+v", id, m)
		}
	}
	t.Logf("replayed %d commands, %d mismatches; outcomes %v", replayed, mismatches, reasons)
	if len(reasons) < 6 {
		t.Errorf("outcomes %v: the sequence no longer exercises the rules", reasons)
	}
}

// produceCommands writes cmds to the commands topic keyed by debit account,
// as the API would.
func (p *pipeline) produceCommands(t *testing.T, cmds []domain.Command) {
	t.Helper()
	w := p.kc.Writer(t)
	for start := 0; start < len(cmds); start += 500 {
		end := min(start+500, len(cmds))
		msgs := make([]kafka.Message, 0, end-start)
		for _, c := range cmds[start:end] {
			msgs = append(msgs, kafka.Message{Topic: p.topics.Commands, Key: []byte(c.DebitAccount()), Value: c.Encode()})
		}
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}
