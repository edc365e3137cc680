package domain

import (
	"math/big"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFee(t *testing.T) {
	i := func(n int64) *int64 { return &n }
	for _, tt := range []struct {
		name   string
		plan   FeePlan
		amount int64
		want   int64
	}{
		{"fixed plus 2.5 %", FeePlan{Bps: 250, Fixed: 10}, 1000, 35},
		{"half a unit rounds up", FeePlan{Bps: 1}, 5000, 1},
		{"below half rounds down", FeePlan{Bps: 1}, 4999, 0},
		{"exact", FeePlan{Bps: 15}, 10000, 15},
		{"raised to min", FeePlan{Bps: 100, Min: i(50)}, 100, 50},
		{"lowered to max", FeePlan{Bps: 100, Fixed: 5, Max: i(20)}, 100000, 20},
		{"never above 2^53-1", FeePlan{Bps: 10000, Fixed: MaxAmount}, MaxAmount, MaxAmount},
		{"the whole amount at 100 %", FeePlan{Bps: 10000}, 12345, 12345},
		{"no plan", FeePlan{}, 12345, 0},
	} {
		if got := tt.plan.Fee(tt.amount); got != tt.want {
			t.Errorf("%s: Fee(%d) = %d, want %d", tt.name, tt.amount, got, tt.want)
		}
	}
}

// TestFeeProperties: for any plan and amount the fee is exactly fixed +
// amount × bps / 10 000 rounded half up (computed here with big integers),
// then clamped; so never negative, never above max, never below min.
func TestFeeProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for range 200000 {
		p := FeePlan{Bps: r.Int64N(10001), Fixed: r.Int64N(1000)}
		if r.IntN(3) == 0 {
			p.Fixed = r.Int64N(MaxAmount + 1)
		}
		var lo, hi int64 = -1, -1
		if r.IntN(3) == 0 {
			lo = r.Int64N(500)
			p.Min = &lo
		}
		if r.IntN(3) == 0 {
			hi = max(lo, 0) + r.Int64N(5000)
			p.Max = &hi
		}
		amount := 1 + r.Int64N(1_000_000)
		if r.IntN(4) == 0 {
			amount = 1 + r.Int64N(MaxAmount)
		}
		got := p.Fee(amount)
		exact := new(big.Int).Mul(big.NewInt(amount), big.NewInt(p.Bps))
		exact.Add(exact, big.NewInt(5000))
		exact.Quo(exact, big.NewInt(10000))
		exact.Add(exact, big.NewInt(p.Fixed))
		want := exact.Int64()
		if p.Min != nil && want < lo {
			want = lo
		}
		if p.Max != nil && want > hi {
			want = hi
		}
		want = min(want, MaxAmount)
		if got != want || got < 0 || (p.Max != nil && got > hi) || (p.Min != nil && got < lo) {
			t.Fatalf("%+v.Fee(%d) = %d, want %d", p, amount, got, want)
		}
	}
}

func TestFeesInTheRules(t *testing.T) {
	withPlan := func(bps, fixed int64, revenue string) func(map[string]*Account) {
		return func(b map[string]*Account) {
			b["rev"] = &Account{ID: "rev", Currency: "EUR", Status: AccountActive}
			b["a"].FeePlan = &FeePlan{Bps: bps, Fixed: fixed, RevenueAccountID: revenue}
		}
	}
	sum := func(b *Book) (s int64) {
		for _, a := range b.Accounts {
			s += a.Balance
		}
		return s
	}
	t.Run("a transfer pays its fee in the same step", func(t *testing.T) {
		b := book(withPlan(1000, 1, "rev")) // 10 % + 1
		res := b.Apply(transfer(50), now)
		if res.Status != StatusApplied || len(res.Postings) != 4 || res.Transfer.Fee != 6 {
			t.Fatalf("Apply() = %+v, want applied with a fee of 6 in 4 postings", res)
		}
		if a, bb, rev := b.Accounts["a"], b.Accounts["b"], b.Accounts["rev"]; a.Balance != 44 || bb.Balance != 50 || rev.Balance != 6 || sum(b) != 100 {
			t.Errorf("balances a %d b %d rev %d (sum %d), want 44 50 6 (100)", a.Balance, bb.Balance, rev.Balance, sum(b))
		}
	})
	for _, tt := range []struct {
		name   string
		opts   func(map[string]*Account)
		cmd    Command
		reason Reason
	}{
		{"amount and fee must fit the funds", withPlan(1000, 0, "rev"), transfer(95), ReasonInsufficientFunds},
		{"the revenue account is gone", withPlan(100, 0, "nobody"), transfer(1), ReasonFeeAccountInvalid},
		{"the revenue account is frozen", func(b map[string]*Account) { withPlan(100, 0, "rev")(b); b["rev"].Status = AccountFrozen }, transfer(1), ReasonFeeAccountInvalid},
		{"the revenue account is in another currency", func(b map[string]*Account) { withPlan(100, 0, "rev")(b); b["rev"].Currency = "USD" }, transfer(1), ReasonFeeAccountInvalid},
		{"the daily limit counts the fee", func(b map[string]*Account) { withPlan(0, 5, "rev")(b); b["a"].DailyDebitLimit = 10 }, transfer(6), ReasonDailyLimitExceeded},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := book(tt.opts)
			before := cloneAccounts(b)
			if res := b.Apply(tt.cmd, now); res.Status != StatusRejected || res.Reason != tt.reason {
				t.Fatalf("Apply() = %s %s, want rejected %s", res.Status, res.Reason, tt.reason)
			}
			if diff := cmp.Diff(before, cloneAccounts(b)); diff != "" {
				t.Errorf("a rejection changed the book:\n%s", diff)
			}
		})
	}
	t.Run("a deposit pays no fee; a withdrawal does", func(t *testing.T) {
		b := book(withPlan(0, 3, "rev"))
		if res := b.Apply(Command{CommandID: cid, Type: TypeDeposit, AccountID: "a", Amount: 10, Currency: "EUR"}, now); res.Transfer.Fee != 0 || len(res.Postings) != 2 {
			t.Errorf("deposit = %+v, want no fee", res)
		}
		if res := b.Apply(Command{CommandID: cid, Type: TypeWithdraw, AccountID: "a", Amount: 10, Currency: "EUR"}, now); res.Transfer.Fee != 3 || len(res.Postings) != 4 {
			t.Errorf("withdraw = %+v, want a fee of 3", res)
		}
	})
	t.Run("up_to leaves room for the fee", func(t *testing.T) {
		b := book(withPlan(1000, 0, "rev")) // 10 %
		c := transfer(1000)
		c.AmountMode = AmountUpTo
		res := b.Apply(c, now)
		// The largest x with x + round(x/10) ≤ 100 is 91 (91 + 9 = 100).
		if res.Status != StatusApplied || res.Transfer.Amount != 91 || res.Transfer.Fee != 9 || b.Accounts["a"].Balance != 0 {
			t.Errorf("up_to = %+v (a left with %d), want 91 moved and 9 paid", res.Transfer, b.Accounts["a"].Balance)
		}
	})
	t.Run("set_fee_plan applies to the commands after it", func(t *testing.T) {
		b := book(func(m map[string]*Account) { m["rev"] = &Account{ID: "rev", Currency: "EUR", Status: AccountActive} })
		set := func(p *FeePlan) Result {
			return b.Apply(Command{CommandID: cid, Type: TypeSetFeePlan, AccountID: "a", FeePlan: p}, now)
		}
		if res := b.Apply(transfer(10), now); res.Transfer.Fee != 0 {
			t.Fatalf("fee before any plan = %d", res.Transfer.Fee)
		}
		if res := set(&FeePlan{Fixed: 2, RevenueAccountID: "rev"}); res.Status != StatusApplied {
			t.Fatalf("set_fee_plan = %s %s", res.Status, res.Reason)
		}
		if res := b.Apply(transfer(10), now); res.Transfer.Fee != 2 {
			t.Errorf("fee under the plan = %d, want 2", res.Transfer.Fee)
		}
		if res := set(nil); res.Status != StatusApplied || b.Accounts["a"].FeePlan != nil {
			t.Fatalf("removing the plan = %s %s", res.Status, res.Reason)
		}
		if res := b.Apply(transfer(10), now); res.Transfer.Fee != 0 {
			t.Errorf("fee after the plan was removed = %d, want 0", res.Transfer.Fee)
		}
		for _, p := range []*FeePlan{{RevenueAccountID: "a"}, {RevenueAccountID: "nobody"}} {
			if res := set(p); res.Reason != ReasonFeeAccountInvalid {
				t.Errorf("set_fee_plan(revenue %s) = %s %s, want fee_account_invalid", p.RevenueAccountID, res.Status, res.Reason)
			}
		}
	})
	t.Run("up_to that cannot pay even 1 and its fee is short of funds, not of the daily limit", func(t *testing.T) {
		b := book(func(m map[string]*Account) {
			withPlan(0, 60, "rev")(m)
			m["a"].Balance, m["a"].DailyDebitLimit, m["a"].DailyDebitDay, m["a"].DailyDebited = 50, 100, "2026-11-25", 60
		})
		c := transfer(10)
		c.AmountMode = AmountUpTo
		if res := b.Apply(c, now); res.Reason != ReasonInsufficientFunds {
			t.Errorf("up_to = %s %s, want insufficient_funds (as an exact transfer of 1 would)", res.Status, res.Reason)
		}
	})
	t.Run("the fee to the account that receives the payment", func(t *testing.T) {
		b := book(withPlan(0, 3, "b"))
		res := b.Apply(transfer(10), now)
		if res.Status != StatusApplied || b.Accounts["b"].Balance != 13 || b.Accounts["a"].Balance != 87 || sum(b) != 100 {
			t.Errorf("Apply() = %s %s; a %d b %d; want b to get 10 and the fee of 3", res.Status, res.Reason, b.Accounts["a"].Balance, b.Accounts["b"].Balance)
		}
	})
	t.Run("a rejected transaction gives its fees back", func(t *testing.T) {
		b := book(withPlan(0, 5, "rev"))
		before := cloneAccounts(b)
		res := b.Apply(Command{CommandID: cid, Type: TypeTransaction, Legs: []Leg{
			{FromAccountID: "a", ToAccountID: "b", Amount: 10, Currency: "EUR"},
			{FromAccountID: "a", ToAccountID: "b", Amount: 90, Currency: "EUR"}}}, now)
		if res.Reason != ReasonInsufficientFunds || *res.Leg != 1 {
			t.Fatalf("Apply() = %s at %v, want insufficient_funds at leg 1 (90 + 5 after 15)", res.Reason, res.Leg)
		}
		if diff := cmp.Diff(before, cloneAccounts(b)); diff != "" {
			t.Errorf("the rejected transaction left a fee behind (-before +after):\n%s", diff)
		}
	})
	t.Run("each leg of a transaction pays its debit's fee", func(t *testing.T) {
		b := book(withPlan(0, 1, "rev"))
		res := b.Apply(Command{CommandID: cid, Type: TypeTransaction, Legs: []Leg{
			{FromAccountID: "a", ToAccountID: "b", Amount: 10, Currency: "EUR"},
			{FromAccountID: "b", ToAccountID: "a", Amount: 5, Currency: "EUR"},
			{FromAccountID: "a", ToAccountID: "b", Amount: 10, Currency: "EUR"}}}, now)
		if res.Status != StatusApplied || len(res.Postings) != 10 || res.Transfer.Legs[0].Fee != 1 || res.Transfer.Legs[1].Fee != 0 || res.Transfer.Legs[2].Fee != 1 {
			t.Fatalf("transaction = %+v", res)
		}
		if rev := b.Accounts["rev"].Balance; rev != 2 || sum(b) != 100 {
			t.Errorf("revenue %d, sum %d; want 2 and 100", rev, sum(b))
		}
	})
}
