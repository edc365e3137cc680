package domain_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/ledgertest"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

var generator = ledgertest.Generator{
	Accounts: []ledgertest.Account{{ID: "a", Currency: "EUR"}, {ID: "b", Currency: "EUR"}, {ID: "c", Currency: "EUR"}, {ID: "d", Currency: "USD"}, {ID: "e", Currency: "USD"}, {ID: "f", Currency: "USD"}},
	Opens:    true,
	Base:     now,
}

// run applies cmds in order, one second apart starting at now, expiring
// due holds before each command, and returns the outcome of each.
func run(t *testing.T, cmds []domain.Command, check func(*domain.Book, []domain.Posting)) []domain.Result {
	t.Helper()
	b := domain.NewBook()
	b.Accounts[domain.ExternalAccountID("EUR")] = domain.NewExternalAccount("EUR")
	b.Accounts[domain.ExternalAccountID("USD")] = domain.NewExternalAccount("USD")
	var postings []domain.Posting
	var out []domain.Result
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
			cmds := generator.Commands(seed, 400)
			reasons := make(map[domain.Reason]int)
			first := run(t, cmds, func(b *domain.Book, postings []domain.Posting) { checkInvariants(t, b, postings) })
			for _, r := range first {
				reasons[r.Reason]++
			}
			again := run(t, cmds, func(*domain.Book, []domain.Posting) {})
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

// TestGeneratorExercisesPaymentFlows: over the seeds of the property test,
// the generator's sequences apply transactions and their reversals, pay
// fees, move up_to amounts, and meet reference_exists and
// version_mismatch, so the invariants above are checked on them.
func TestGeneratorExercisesPaymentFlows(t *testing.T) {
	seen := map[string]int{}
	for seed := range uint64(40) {
		cmds := generator.Commands(seed, 400)
		for i, res := range run(t, cmds, func(*domain.Book, []domain.Posting) {}) {
			c := cmds[i]
			switch {
			case res.Status == domain.StatusRejected:
				seen[string(res.Reason)]++
			case c.Type == domain.TypeTransaction:
				seen["transaction applied"]++
			case c.Type == domain.TypeReverse && len(c.LegAmounts) > 0:
				seen["reversal by legs applied"]++
			case c.AmountMode == domain.AmountUpTo:
				seen["up_to applied"]++
			}
			if res.Transfer != nil && res.Status == domain.StatusApplied {
				fee := res.Transfer.Fee
				for _, l := range res.Transfer.Legs {
					fee += l.Fee
				}
				if fee > 0 {
					seen["fee paid"]++
				}
			}
		}
	}
	for _, k := range []string{"transaction applied", "up_to applied", "fee paid", "reference_exists", "version_mismatch", "fee_account_invalid"} {
		if seen[k] == 0 {
			t.Errorf("no %q in 40 × 400 commands (%v): the property test does not reach it", k, seen)
		}
	}
	t.Logf("%v", seen)
}

// checkInvariants asserts the ledger's invariants on b after postings.
func checkInvariants(t *testing.T, b *domain.Book, postings []domain.Posting) {
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
		if tr.Kind == domain.KindHold && tr.Status == domain.TransferPending {
			held[tr.FromAccountID] += tr.Amount
		}
		if tr.ReversedAmount < 0 || tr.ReversedAmount > tr.Amount || tr.CapturedAmount > tr.Amount || tr.Fee < 0 {
			t.Errorf("transfer %s: captured %d reversed %d of %d, fee %d", tr.ID, tr.CapturedAmount, tr.ReversedAmount, tr.Amount, tr.Fee)
		}
		for i, l := range tr.Legs {
			if l.ReversedAmount < 0 || l.ReversedAmount > l.Amount || l.Fee < 0 {
				t.Errorf("transaction %s leg %d: reversed %d of %d, fee %d", tr.ID, i, l.ReversedAmount, l.Amount, l.Fee)
			}
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
		if a.Status == domain.AccountClosed && (a.Balance != 0 || a.Held != 0) {
			t.Errorf("account %s: closed with balance %d held %d", id, a.Balance, a.Held)
		}
	}
	for cur, sum := range sums {
		if sum != 0 {
			t.Errorf("currency %s: balances sum to %d, want 0 (money conserved)", cur, sum)
		}
	}
}
