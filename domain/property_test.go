package domain

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// RandomCommands generates n commands over a few accounts in two
// currencies, from seed: opens, movements, holds and their lifecycle,
// reversals and status changes, with amounts that often exceed what is
// available so every rejection path is taken. The same seed gives the same
// commands.
func randomCommands(seed uint64, n int) []Command {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	accounts := []string{"a", "b", "c", "d", "e", "f"}
	currency := func(acct string) string {
		if acct < "d" {
			return "EUR"
		}
		return "USD"
	}
	var cmds []Command
	var ids []string // transfer and hold ids issued so far
	id := func(i int) string { return fmt.Sprintf("00000000-0000-7000-8000-%012d", i) }
	pick := func() string { return accounts[r.IntN(len(accounts))] }
	amount := func() int64 { return 1 + r.Int64N(300) }
	for i := range n {
		cmd := Command{CommandID: id(i)}
		a, b := pick(), pick()
		switch k := r.IntN(100); {
		case k < 8:
			cmd.Type, cmd.AccountID, cmd.Currency = TypeOpenAccount, a, currency(a)
			cmd.OverdraftLimit = int64(r.IntN(3)) * 50
			if r.IntN(4) == 0 {
				cmd.DailyDebitLimit = 400
			}
		case k < 25:
			cmd.Type, cmd.AccountID, cmd.Amount, cmd.Currency = TypeDeposit, a, amount(), currency(a)
		case k < 33:
			cmd.Type, cmd.AccountID, cmd.Amount, cmd.Currency = TypeWithdraw, a, amount(), currency(a)
		case k < 55:
			cmd.Type, cmd.FromAccountID, cmd.ToAccountID, cmd.Amount, cmd.Currency = TypeTransfer, a, b, amount(), currency(a)
		case k < 67:
			cmd.Type, cmd.FromAccountID, cmd.ToAccountID, cmd.Amount, cmd.Currency = TypeHold, a, b, amount(), currency(a)
			if r.IntN(3) == 0 {
				exp := now.Add(time.Duration(r.IntN(120)-20) * time.Second)
				cmd.ExpiresAt = &exp
			}
		case k < 87 && len(ids) > 0:
			ref := ids[r.IntN(len(ids))]
			types := []Type{TypeCapture, TypeRelease, TypeReverse}
			cmd.Type, cmd.AccountID = types[r.IntN(3)], a
			if cmd.Type == TypeReverse {
				cmd.TransferID = ref
			} else {
				cmd.HoldID = ref
			}
			if cmd.Type != TypeRelease && r.IntN(2) == 0 {
				cmd.Amount = amount() / 2
			}
		default:
			types := []Type{TypeFreezeAccount, TypeUnfreezeAccount, TypeUnfreezeAccount, TypeCloseAccount}
			cmd.Type, cmd.AccountID = types[r.IntN(4)], a
		}
		if cmd.Type == "" {
			cmd.Type, cmd.AccountID, cmd.Amount, cmd.Currency = TypeDeposit, a, amount(), currency(a)
		}
		if cmd.Type == TypeTransfer || cmd.Type == TypeHold {
			ids = append(ids, cmd.CommandID)
		}
		cmds = append(cmds, cmd)
	}
	return cmds
}

// run applies cmds in order, one second apart starting at now, expiring
// due holds before each command, and returns the outcome of each.
func run(t *testing.T, cmds []Command, check func(*Book, []Posting)) []Result {
	t.Helper()
	b := NewBook()
	b.Accounts[ExternalAccountID("EUR")] = NewExternalAccount("EUR")
	b.Accounts[ExternalAccountID("USD")] = NewExternalAccount("USD")
	var postings []Posting
	var out []Result
	for i, c := range cmds {
		at := now.Add(time.Duration(i) * time.Second)
		for id := range b.Transfers {
			b.Expire(id, at)
		}
		res := b.Apply(c, at)
		postings = append(postings, res.Postings...)
		out = append(out, res)
		check(b, postings)
		if t.Failed() {
			t.Fatalf("invariant broken after command %d (%s %+v → %s %s)", i, c.Type, c, res.Status, res.Reason)
		}
	}
	return out
}

func TestPropertyInvariantsHoldForRandomSequences(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			cmds := randomCommands(seed, 400)
			reasons := make(map[Reason]int)
			first := run(t, cmds, func(b *Book, postings []Posting) { checkInvariants(t, b, postings) })
			for _, r := range first {
				reasons[r.Reason]++
			}
			again := run(t, cmds, func(*Book, []Posting) {})
			for i := range first {
				if first[i].Status != again[i].Status || first[i].Reason != again[i].Reason || len(first[i].Postings) != len(again[i].Postings) {
					t.Fatalf("command %d: %s %s, then %s %s on the same sequence: Apply is not deterministic",
						i, first[i].Status, first[i].Reason, again[i].Status, again[i].Reason)
				}
			}
			if reasons[""] == 0 || len(reasons) < 6 {
				t.Errorf("outcomes %v: the generator no longer exercises the rules", reasons)
			}
		})
	}
}

// checkInvariants asserts the ledger's invariants on b after postings.
func checkInvariants(t *testing.T, b *Book, postings []Posting) {
	sums := make(map[string]int64) // currency → sum of balances
	fromPostings := make(map[string]int64)
	versions := make(map[string]int64)
	for _, p := range postings {
		fromPostings[p.AccountID] += p.Amount
		versions[p.AccountID]++
		if p.AccountVersion != versions[p.AccountID] {
			t.Errorf("account %s: posting version %d, want %d (contiguous)", p.AccountID, p.AccountVersion, versions[p.AccountID])
		}
		if p.BalanceAfter != fromPostings[p.AccountID] {
			t.Errorf("account %s: balance_after %d, want the running sum %d", p.AccountID, p.BalanceAfter, fromPostings[p.AccountID])
		}
	}
	held := make(map[string]int64)
	for _, tr := range b.Transfers {
		if tr.Kind == KindHold && tr.Status == TransferPending {
			held[tr.FromAccountID] += tr.Amount
		}
		if tr.ReversedAmount < 0 || tr.ReversedAmount > tr.Amount || tr.CapturedAmount > tr.Amount {
			t.Errorf("transfer %s: captured %d reversed %d of %d", tr.ID, tr.CapturedAmount, tr.ReversedAmount, tr.Amount)
		}
	}
	for id, a := range b.Accounts {
		sums[a.Currency] += a.Balance
		if a.Balance != fromPostings[id] {
			t.Errorf("account %s: balance %d, want the sum of its postings %d", id, a.Balance, fromPostings[id])
		}
		if a.Version != versions[id] {
			t.Errorf("account %s: version %d, want its %d postings", id, a.Version, versions[id])
		}
		if a.Held != held[id] {
			t.Errorf("account %s: held %d, want the sum of its pending holds %d", id, a.Held, held[id])
		}
		if !a.External && a.Available() < -a.OverdraftLimit {
			t.Errorf("account %s: available %d below its overdraft limit %d", id, a.Available(), a.OverdraftLimit)
		}
		if a.Status == AccountClosed && (a.Balance != 0 || a.Held != 0) {
			t.Errorf("account %s: closed with balance %d held %d", id, a.Balance, a.Held)
		}
	}
	for cur, sum := range sums {
		if sum != 0 {
			t.Errorf("currency %s: balances sum to %d, want 0 (money conserved)", cur, sum)
		}
	}
}
