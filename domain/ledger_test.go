package domain

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// book returns a Book with active EUR accounts a and b, the EUR external
// account, and whatever the options change.
func book(opts ...func(acct map[string]*Account)) *Book {
	b := NewBook()
	b.Accounts["a"] = &Account{ID: "a", Currency: "EUR", Status: AccountActive, Balance: 100, Version: 1}
	b.Accounts["b"] = &Account{ID: "b", Currency: "EUR", Status: AccountActive}
	b.Accounts[ExternalAccountID("EUR")] = NewExternalAccount("EUR")
	for _, o := range opts {
		o(b.Accounts)
	}
	return b
}

func transfer(amount int64) Command {
	return Command{CommandID: cid, Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: amount, Currency: "EUR"}
}

func TestApplyRejections(t *testing.T) {
	tests := []struct {
		name string
		book *Book
		cmd  Command
		want Reason
	}{
		{"open existing", book(), Command{Type: TypeOpenAccount, AccountID: "a", Currency: "EUR"}, ReasonAccountExists},
		{"deposit to missing", book(), Command{Type: TypeDeposit, AccountID: "zz", Amount: 1, Currency: "EUR"}, ReasonAccountNotFound},
		{"transfer from missing", book(), Command{Type: TypeTransfer, FromAccountID: "zz", ToAccountID: "b", Amount: 1, Currency: "EUR"}, ReasonAccountNotFound},
		{"transfer to missing", book(), Command{Type: TypeTransfer, FromAccountID: "a", ToAccountID: "zz", Amount: 1, Currency: "EUR"}, ReasonAccountNotFound},
		{"same account before not found", book(), Command{Type: TypeTransfer, FromAccountID: "zz", ToAccountID: "zz", Amount: 1, Currency: "EUR"}, ReasonSameAccount},
		{"closed before frozen", book(func(b map[string]*Account) { b["a"].Status = AccountFrozen; b["b"].Status = AccountClosed }), transfer(1), ReasonAccountClosed},
		{"frozen receiver", book(func(b map[string]*Account) { b["b"].Status = AccountFrozen }), transfer(1), ReasonAccountFrozen},
		{"currency of command", book(), Command{Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "USD"}, ReasonCurrencyMismatch},
		{"currency of receiver", book(func(b map[string]*Account) { b["b"].Currency = "USD" }), transfer(1), ReasonCurrencyMismatch},
		{"insufficient funds", book(), transfer(101), ReasonInsufficientFunds},
		{"overdraft too small", book(func(b map[string]*Account) { b["a"].OverdraftLimit = 50 }), transfer(151), ReasonInsufficientFunds},
		{"holds count against available", book(func(b map[string]*Account) { b["a"].Held = 60 }), transfer(41), ReasonInsufficientFunds},
		{"daily limit", book(func(b map[string]*Account) { b["a"].DailyDebitLimit = 10 }), transfer(11), ReasonDailyLimitExceeded},
		{"daily limit counts today's debits", book(func(b map[string]*Account) {
			b["a"].DailyDebitLimit, b["a"].DailyDebitDay, b["a"].DailyDebited = 10, "2026-11-25", 5
		}), transfer(6), ReasonDailyLimitExceeded},
		// A worker whose clock is behind the day stored on the account (a
		// day another worker already counted) must not reset the limit.
		{"daily limit holds on a clock behind the stored day", book(func(b map[string]*Account) {
			b["a"].DailyDebitLimit, b["a"].DailyDebitDay, b["a"].DailyDebited = 10, "2026-11-26", 10
		}), transfer(1), ReasonDailyLimitExceeded},
		{"daily limit holds for holds on a clock behind the stored day", book(func(b map[string]*Account) {
			b["a"].DailyDebitLimit, b["a"].DailyDebitDay, b["a"].DailyDebited = 10, "2026-11-26", 10
		}), Command{CommandID: cid, Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "EUR"}, ReasonDailyLimitExceeded},
		{"credit overflow", book(func(b map[string]*Account) { b["b"].Balance = math.MaxInt64 - 5 }), transfer(6), ReasonBalanceOverflow},
		{"overflow before insufficient funds", book(func(b map[string]*Account) { b["b"].Balance = math.MaxInt64 }), transfer(1000), ReasonBalanceOverflow},
		{"withdraw beyond balance", book(), Command{Type: TypeWithdraw, AccountID: "a", Amount: 101, Currency: "EUR"}, ReasonInsufficientFunds},
		{"withdraw from frozen", book(func(b map[string]*Account) { b["a"].Status = AccountFrozen }), Command{Type: TypeWithdraw, AccountID: "a", Amount: 1, Currency: "EUR"}, ReasonAccountFrozen},
		{"deposit of another currency", book(func(b map[string]*Account) { b[ExternalAccountID("USD")] = NewExternalAccount("USD") }),
			Command{Type: TypeDeposit, AccountID: "a", Amount: 1, Currency: "USD"}, ReasonCurrencyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkRejected(t, tt.book, tt.cmd, tt.want) })
	}
}

// checkRejected applies cmd to b and requires the rejection want and a
// book left exactly as it was.
func checkRejected(t *testing.T, b *Book, cmd Command, want Reason) {
	t.Helper()
	before := cloneBook(b)
	got := b.Apply(cmd, now)
	if got.Status != StatusRejected || got.Reason != want {
		t.Errorf("Apply(%s) = %s %q, want rejected %q", cmd.Type, got.Status, got.Reason, want)
	}
	if diff := cmp.Diff(before, b); diff != "" {
		t.Errorf("a rejected %s changed the book (-before +after):\n%s", cmd.Type, diff)
	}
}

func TestApplyPostings(t *testing.T) {
	ext := ExternalAccountID("EUR")
	tests := []struct {
		name string
		book *Book
		cmd  Command
		want []Posting
	}{
		{"deposit", book(), Command{Type: TypeDeposit, AccountID: "b", Amount: 30, Currency: "EUR"}, []Posting{
			{AccountID: ext, Currency: "EUR", Amount: -30, BalanceAfter: -30, AccountVersion: 1},
			{AccountID: "b", Currency: "EUR", Amount: 30, BalanceAfter: 30, AccountVersion: 1},
		}},
		{"withdraw everything", book(), Command{Type: TypeWithdraw, AccountID: "a", Amount: 100, Currency: "EUR"}, []Posting{
			{AccountID: "a", Currency: "EUR", Amount: -100, BalanceAfter: 0, AccountVersion: 2},
			{AccountID: ext, Currency: "EUR", Amount: 100, BalanceAfter: 100, AccountVersion: 1},
		}},
		{"transfer into overdraft", book(func(b map[string]*Account) { b["a"].OverdraftLimit = 50 }), transfer(150), []Posting{
			{AccountID: "a", Currency: "EUR", Amount: -150, BalanceAfter: -50, AccountVersion: 2},
			{AccountID: "b", Currency: "EUR", Amount: 150, BalanceAfter: 150, AccountVersion: 1},
		}},
		{"daily limit resets on a new day", book(func(b map[string]*Account) {
			b["a"].DailyDebitLimit, b["a"].DailyDebitDay, b["a"].DailyDebited = 10, "2026-11-24", 10
		}), transfer(10), []Posting{
			{AccountID: "a", Currency: "EUR", Amount: -10, BalanceAfter: 90, AccountVersion: 2},
			{AccountID: "b", Currency: "EUR", Amount: 10, BalanceAfter: 10, AccountVersion: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.book.Apply(tt.cmd, now)
			if got.Status != StatusApplied {
				t.Fatalf("Apply(%s) = rejected %q, want applied", tt.cmd.Type, got.Reason)
			}
			// Digests: TestPostingDigestsChainEachAccount.
			if diff := cmp.Diff(tt.want, got.Postings, cmpopts.IgnoreFields(Posting{}, "Digest")); diff != "" {
				t.Errorf("Apply(%s) postings mismatch (-want +got):\n%s", tt.cmd.Type, diff)
			}
			var sum int64
			for _, p := range got.Postings {
				sum += p.Amount
				if a := tt.book.Accounts[p.AccountID]; a.Balance != p.BalanceAfter || a.Version != p.AccountVersion {
					t.Errorf("account %s = balance %d version %d, want the posting's %d and %d", a.ID, a.Balance, a.Version, p.BalanceAfter, p.AccountVersion)
				}
			}
			if sum != 0 {
				t.Errorf("postings of %s sum to %d, want 0 (double entry)", tt.cmd.Type, sum)
			}
		})
	}
}

func TestApplyOpenAccountThenUseInSameBook(t *testing.T) {
	b := NewBook()
	b.Accounts[ExternalAccountID("GBP")] = NewExternalAccount("GBP")
	open := Command{Type: TypeOpenAccount, AccountID: "n", Currency: "GBP", OverdraftLimit: 5, DailyDebitLimit: 7}
	if got := b.Apply(open, now); got.Status != StatusApplied || got.Opened == nil || len(got.Postings) != 0 {
		t.Fatalf("Apply(open_account) = %+v, want applied with the opened account and no postings", got)
	}
	if got := b.Apply(open, now); got.Reason != ReasonAccountExists {
		t.Errorf("second Apply(open_account) = %q, want %q", got.Reason, ReasonAccountExists)
	}
	if got := b.Apply(Command{Type: TypeWithdraw, AccountID: "n", Amount: 5, Currency: "GBP"}, now); got.Status != StatusApplied {
		t.Errorf("withdraw within the overdraft = rejected %q, want applied", got.Reason)
	}
	if got := b.Apply(Command{Type: TypeWithdraw, AccountID: "n", Amount: 1, Currency: "GBP"}, now); got.Reason != ReasonInsufficientFunds {
		t.Errorf("withdraw beyond the overdraft = %q, want %q", got.Reason, ReasonInsufficientFunds)
	}
}

func cloneBook(b *Book) *Book {
	c := NewBook()
	for id, a := range b.Accounts {
		cp := *a
		c.Accounts[id] = &cp
	}
	for id, t := range b.Transfers {
		cp := *t
		c.Transfers[id] = &cp
	}
	return c
}

// TestReferences: a reference is unique among applied money commands; the
// check comes before the command's own rules; a rejection does not use it
// up; it stays with the transfer and marks every posting made for it, the
// capture's and the reversal's included.
func TestReferences(t *testing.T) {
	b := book()
	id := func(n int) string {
		return "00000000-0000-7000-8000-0000000000" + string(rune('0'+n/10)) + string(rune('0'+n%10))
	}
	withRef := func(n int, c Command, ref string) Command { c.CommandID, c.Reference = id(n), ref; return c }

	first := b.Apply(withRef(1, transfer(10), "order-1"), now)
	if first.Status != StatusApplied || first.Transfer.Reference != "order-1" || b.References["order-1"] != id(1) {
		t.Fatalf("first use: %+v, book references %v; want applied and held by %s", first, b.References, id(1))
	}
	for _, p := range first.Postings {
		if p.Reference != "order-1" {
			t.Errorf("posting %+v carries reference %q, want order-1", p, p.Reference)
		}
	}
	// Another command with the reference is refused for it when it would
	// otherwise apply; one that fails its own checks gets their reason. The
	// reference comes last, so that no outcome depends on whether another
	// partition's use of it was visible yet. Neither changes anything.
	before := *b.Accounts["a"]
	for _, tt := range []struct {
		cmd  Command
		want Reason
	}{
		{withRef(2, transfer(1), "order-1"), ReasonReferenceExists},
		{withRef(2, Command{Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "EUR"}, "order-1"), ReasonReferenceExists},
		{withRef(3, transfer(1_000_000), "order-1"), ReasonInsufficientFunds},
		{withRef(4, Command{Type: TypeDeposit, AccountID: "zz", Amount: 1, Currency: "EUR"}, "order-1"), ReasonAccountNotFound},
	} {
		if got := b.Apply(tt.cmd, now); got.Status != StatusRejected || got.Reason != tt.want {
			t.Errorf("Apply(%s with a used reference) = %s %s, want rejected %s", tt.cmd.Type, got.Status, got.Reason, tt.want)
		}
	}
	if b.Accounts["a"].Held != 0 {
		t.Errorf("a refused hold left %d held", b.Accounts["a"].Held)
	}
	if diff := cmp.Diff(before, *b.Accounts["a"]); diff != "" {
		t.Errorf("a refused reference changed the account (-before +after):\n%s", diff)
	}
	// A rejection does not use its reference up.
	if got := b.Apply(withRef(5, transfer(1_000_000), "order-2"), now); got.Reason != ReasonInsufficientFunds {
		t.Fatalf("Apply(overdraw, order-2) = %s, want insufficient_funds", got.Reason)
	}
	if got := b.Apply(withRef(6, transfer(5), "order-2"), now); got.Status != StatusApplied {
		t.Errorf("Apply(order-2 after its rejection) = %s %s, want applied", got.Status, got.Reason)
	}
	// A hold's reference marks its capture's postings, and a reversal's.
	hold := withRef(7, Command{Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 20, Currency: "EUR"}, "order-3")
	if got := b.Apply(hold, now); got.Status != StatusApplied {
		t.Fatalf("hold: %s %s", got.Status, got.Reason)
	}
	capture := b.Apply(Command{CommandID: id(8), Type: TypeCapture, AccountID: "a", HoldID: id(7)}, now)
	reversal := b.Apply(Command{CommandID: id(9), Type: TypeReverse, AccountID: "a", TransferID: id(7), Amount: 5}, now)
	for _, res := range []Result{capture, reversal} {
		if res.Status != StatusApplied || len(res.Postings) != 2 {
			t.Fatalf("capture or reversal: %s %s", res.Status, res.Reason)
		}
		for _, p := range res.Postings {
			if p.Reference != "order-3" {
				t.Errorf("posting %+v of the hold's %s carries %q, want order-3", p, res.Transfer.Status, p.Reference)
			}
		}
	}
}

// TestConditionalAmounts: amount_mode up_to moves what the debit account
// can spend, at most the amount; expected_version refuses a command whose
// debit account moved since the sender looked.
func TestConditionalAmounts(t *testing.T) {
	v := func(n int64) *int64 { return &n }
	upTo := func(amount int64) Command { c := transfer(amount); c.AmountMode = AmountUpTo; return c }
	withdrawUpTo := func(amount int64) Command {
		return Command{CommandID: cid, Type: TypeWithdraw, AccountID: "a", Amount: amount, Currency: "EUR", AmountMode: AmountUpTo}
	}
	expecting := func(c Command, n int64) Command { c.ExpectedVersion = v(n); return c }
	tests := []struct {
		name   string
		book   *Book
		cmd    Command
		moved  int64 // 0: rejected with reason
		reason Reason
	}{
		{"up_to below the funds moves the amount", book(), upTo(60), 60, ""},
		{"up_to above the funds moves the funds", book(), upTo(1000), 100, ""},
		{"up_to counts the overdraft and the holds", book(func(b map[string]*Account) { b["a"].OverdraftLimit, b["a"].Held = 30, 50 }), upTo(1000), 80, ""},
		{"up_to stops at what the daily limit leaves", book(func(b map[string]*Account) {
			b["a"].DailyDebitLimit, b["a"].DailyDebitDay, b["a"].DailyDebited = 50, "2026-11-25", 20
		}), upTo(1000), 30, ""},
		{"up_to with nothing to spend", book(func(b map[string]*Account) { b["a"].Held = 100 }), upTo(10), 0, ReasonInsufficientFunds},
		{"up_to with the day's allowance spent", book(func(b map[string]*Account) {
			b["a"].DailyDebitLimit, b["a"].DailyDebitDay, b["a"].DailyDebited = 50, "2026-11-25", 50
		}), upTo(10), 0, ReasonDailyLimitExceeded},
		{"withdraw up_to", book(), withdrawUpTo(500), 100, ""},
		{"up_to still checks the accounts first", book(func(b map[string]*Account) { b["b"].Status = AccountFrozen }), upTo(10), 0, ReasonAccountFrozen},
		{"the version expected", book(), expecting(transfer(10), 1), 10, ""},
		{"another version", book(), expecting(transfer(10), 0), 0, ReasonVersionMismatch},
		{"version before funds", book(), expecting(transfer(1000), 2), 0, ReasonVersionMismatch},
		{"version of a hold", book(), expecting(Command{CommandID: cid, Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 5, Currency: "EUR"}, 7), 0, ReasonVersionMismatch},
		{"up_to with the version expected", book(), expecting(upTo(1000), 1), 100, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := cloneAccounts(tt.book)
			res := tt.book.Apply(tt.cmd, now)
			if tt.reason != "" {
				if res.Status != StatusRejected || res.Reason != tt.reason {
					t.Fatalf("Apply() = %s %s, want rejected %s", res.Status, res.Reason, tt.reason)
				}
				if diff := cmp.Diff(before, cloneAccounts(tt.book)); diff != "" {
					t.Errorf("a rejection changed the book (-before +after):\n%s", diff)
				}
				return
			}
			if res.Status != StatusApplied {
				t.Fatalf("Apply() = %s %s, want applied", res.Status, res.Reason)
			}
			if tt.cmd.Type == TypeHold {
				return
			}
			if res.Transfer.Amount != tt.moved || res.Postings[0].Amount != -tt.moved || res.Postings[1].Amount != tt.moved {
				t.Errorf("moved: transfer %d, postings %d and %d; want %d", res.Transfer.Amount, res.Postings[0].Amount, res.Postings[1].Amount, tt.moved)
			}
			if a := tt.book.Accounts["a"]; a.Available() < -a.OverdraftLimit {
				t.Errorf("a's available %d is below its overdraft limit -%d", a.Available(), a.OverdraftLimit)
			}
		})
	}
}

// TestCloseAndSweep: close_account with sweep_to_account_id moves the
// balance and closes in one step, or changes nothing.
func TestCloseAndSweep(t *testing.T) {
	sweep := func(to string) Command {
		return Command{CommandID: cid, Type: TypeCloseAccount, AccountID: "a", SweepToAccountID: to}
	}
	usd := func(b map[string]*Account) { b["c"] = &Account{ID: "c", Currency: "USD", Status: AccountActive} }
	for _, tt := range []struct {
		name   string
		book   *Book
		cmd    Command
		reason Reason
	}{
		{"to itself", book(), sweep("a"), ReasonSameAccount},
		{"to no account", book(), sweep("zz"), ReasonAccountNotFound},
		{"to a frozen account", book(func(b map[string]*Account) { b["b"].Status = AccountFrozen }), sweep("b"), ReasonAccountFrozen},
		{"to another currency", book(usd), sweep("c"), ReasonCurrencyMismatch},
		{"with a hold pending", book(func(b map[string]*Account) { b["a"].Held = 1 }), sweep("b"), ReasonAccountNotEmpty},
		{"owing money", book(func(b map[string]*Account) { b["a"].Balance, b["a"].OverdraftLimit = -5, 10 }), sweep("b"), ReasonAccountNotEmpty},
		{"already closed", book(func(b map[string]*Account) { b["a"].Status = AccountClosed }), sweep("b"), ReasonAccountClosed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := cloneAccounts(tt.book)
			if res := tt.book.Apply(tt.cmd, now); res.Status != StatusRejected || res.Reason != tt.reason {
				t.Fatalf("Apply() = %s %s, want rejected %s", res.Status, res.Reason, tt.reason)
			}
			if diff := cmp.Diff(before, cloneAccounts(tt.book)); diff != "" {
				t.Errorf("a rejection changed the book (-before +after):\n%s", diff)
			}
		})
	}
	limited := book(func(b map[string]*Account) { b["a"].DailyDebitLimit = 99 })
	if res := limited.Apply(sweep("b"), now); res.Reason != ReasonDailyLimitExceeded || limited.Accounts["a"].Status != AccountActive {
		t.Errorf("sweep of 100 under a daily limit of 99 = %s %s, want daily_limit_exceeded and the account open", res.Status, res.Reason)
	}
	b := book(func(b map[string]*Account) { b["a"].DailyDebitLimit = 100 })
	res := b.Apply(sweep("b"), now)
	if res.Status != StatusApplied || len(res.Postings) != 2 || res.Transfer == nil || res.Transfer.Amount != 100 {
		t.Fatalf("sweep of 100 = %+v", res)
	}
	if a, to := b.Accounts["a"], b.Accounts["b"]; a.Status != AccountClosed || a.Balance != 0 || a.Version != 2 || to.Balance != 100 {
		t.Errorf("after the sweep: a %+v, b %+v; want a closed and empty at version 2, b holding 100", a, to)
	}
	empty := book(func(b map[string]*Account) { b["a"].Balance = 0 })
	if res := empty.Apply(sweep("b"), now); res.Status != StatusApplied || len(res.Postings) != 0 || res.Transfer != nil ||
		empty.Accounts["a"].Status != AccountClosed {
		t.Errorf("sweep of an empty account = %+v, want closed with no posting and no transfer", res)
	}
}

func cloneAccounts(b *Book) map[string]Account {
	out := map[string]Account{}
	for id, a := range b.Accounts {
		out[id] = *a
	}
	return out
}

// TestTransactions: legs apply in order, each seeing the ones before it,
// all or nothing; a rejection names its leg; legs may move several
// currencies; a reversal gives back the whole or leg by leg, all or
// nothing, and stays within each leg.
func TestTransactions(t *testing.T) {
	fx := func(b map[string]*Account) {
		b["a-usd"] = &Account{ID: "a-usd", Currency: "USD", Status: AccountActive}
		b["lp-eur"] = &Account{ID: "lp-eur", Currency: "EUR", Status: AccountActive}
		b["lp-usd"] = &Account{ID: "lp-usd", Currency: "USD", Status: AccountActive, Balance: 1000}
		b["fee"] = &Account{ID: "fee", Currency: "EUR", Status: AccountActive}
	}
	tx := func(legs ...Leg) Command { return Command{CommandID: cid, Type: TypeTransaction, Legs: legs} }
	leg := func(from, to string, amount int64, cur string) Leg {
		return Leg{FromAccountID: from, ToAccountID: to, Amount: amount, Currency: cur}
	}
	t.Run("a fee, a split and an exchange", func(t *testing.T) {
		b := book(fx)
		res := b.Apply(tx(
			leg("a", "b", 60, "EUR"),          // the payment
			leg("a", "fee", 2, "EUR"),         // its fee
			leg("b", "fee", 10, "EUR"),        // b pays on from what leg 0 gave it
			leg("a", "lp-eur", 30, "EUR"),     // an exchange: EUR in …
			leg("lp-usd", "a-usd", 33, "USD"), // … USD out
		), now)
		if res.Status != StatusApplied || len(res.Postings) != 10 || res.Transfer.Kind != KindTransaction || len(res.Transfer.Legs) != 5 {
			t.Fatalf("Apply(transaction) = %+v", res)
		}
		got := map[string]int64{}
		for id, a := range b.Accounts {
			got[id] = a.Balance
		}
		want := map[string]int64{"a": 8, "b": 50, "fee": 12, "lp-eur": 30, "lp-usd": 967, "a-usd": 33, ExternalAccountID("EUR"): 0}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("balances (-want +got):\n%s", diff)
		}
		if a := b.Accounts["a"]; a.Version != 4 {
			t.Errorf("a's version %d, want 4: one posting per leg it is in", a.Version)
		}
	})
	for _, tt := range []struct {
		name   string
		cmd    Command
		reason Reason
		leg    int
	}{
		{"a leg beyond the funds the earlier legs left", tx(leg("a", "b", 60, "EUR"), leg("a", "fee", 41, "EUR")), ReasonInsufficientFunds, 1},
		{"a leg to itself", tx(leg("a", "b", 1, "EUR"), leg("b", "b", 1, "EUR")), ReasonSameAccount, 1},
		{"a leg in another currency than its accounts", tx(leg("a", "b", 1, "EUR"), leg("a", "b", 1, "USD")), ReasonCurrencyMismatch, 1},
		{"a leg to no account", tx(leg("a", "nobody", 1, "EUR")), ReasonAccountNotFound, 0},
		{"the last leg of many", tx(leg("a", "b", 10, "EUR"), leg("b", "fee", 5, "EUR"), leg("lp-usd", "a-usd", 2000, "USD")), ReasonInsufficientFunds, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := book(fx)
			before := cloneAccounts(b)
			res := b.Apply(tt.cmd, now)
			if res.Status != StatusRejected || res.Reason != tt.reason || res.Leg == nil || *res.Leg != tt.leg {
				t.Fatalf("Apply() = %s %s leg %v, want rejected %s at leg %d", res.Status, res.Reason, res.Leg, tt.reason, tt.leg)
			}
			if diff := cmp.Diff(before, cloneAccounts(b)); diff != "" {
				t.Errorf("a rejected transaction left a trace (-before +after):\n%s", diff)
			}
			if len(b.Transfers) != 0 {
				t.Errorf("a rejected transaction made a transfer")
			}
		})
	}
	t.Run("the daily limit counts every leg", func(t *testing.T) {
		b := book(func(a map[string]*Account) { fx(a); a["a"].DailyDebitLimit = 50 })
		res := b.Apply(tx(leg("a", "b", 30, "EUR"), leg("a", "fee", 30, "EUR")), now)
		if res.Reason != ReasonDailyLimitExceeded || *res.Leg != 1 || b.Accounts["a"].DailyDebited != 0 {
			t.Errorf("Apply() = %s at %v, debited %d; want daily_limit_exceeded at leg 1 and nothing counted", res.Reason, res.Leg, b.Accounts["a"].DailyDebited)
		}
	})
	t.Run("reversals", func(t *testing.T) {
		b := book(fx)
		if res := b.Apply(tx(leg("a", "b", 60, "EUR"), leg("b", "fee", 10, "EUR"), leg("lp-usd", "a-usd", 5, "USD")), now); res.Status != StatusApplied {
			t.Fatalf("transaction: %s %s", res.Status, res.Reason)
		}
		rev := func(n int, amounts ...int64) Command {
			return Command{CommandID: fmt.Sprint(n), Type: TypeReverse, AccountID: "a", TransferID: cid, LegAmounts: amounts}
		}
		for _, tt := range []struct {
			cmd    Command
			reason Reason
			leg    int
		}{
			{rev(1, 61, 0, 0), ReasonReversalExceedsTransfer, 0},
			{rev(2, 1, 1), ReasonReversalExceedsTransfer, -1},
			{Command{Type: TypeReverse, AccountID: "a", TransferID: cid, Amount: 5}, ReasonReversalExceedsTransfer, -1},
			{Command{Type: TypeReverse, AccountID: "b", TransferID: cid}, ReasonTransferNotFound, -1},
		} {
			before := cloneAccounts(b)
			res := b.Apply(tt.cmd, now)
			if res.Status != StatusRejected || res.Reason != tt.reason || (tt.leg >= 0) != (res.Leg != nil) || (res.Leg != nil && *res.Leg != tt.leg) {
				t.Errorf("Apply(%v) = %s %s leg %v, want %s at %d", tt.cmd.LegAmounts, res.Status, res.Reason, res.Leg, tt.reason, tt.leg)
			}
			if diff := cmp.Diff(before, cloneAccounts(b)); diff != "" {
				t.Errorf("a rejected reversal left a trace (-before +after):\n%s", diff)
			}
		}
		// Part of two legs, then the rest: back where it started.
		if res := b.Apply(rev(3, 20, 0, 5), now); res.Status != StatusApplied || len(res.Postings) != 4 || res.Transfer.Status != TransferPosted {
			t.Fatalf("partial reversal = %+v", res)
		}
		res := b.Apply(Command{CommandID: "4", Type: TypeReverse, AccountID: "a", TransferID: cid}, now)
		if res.Status != StatusApplied || res.Transfer.Status != TransferReversed {
			t.Fatalf("reversal of the rest = %s %s %+v", res.Status, res.Reason, res.Transfer)
		}
		for id, want := range map[string]int64{"a": 100, "b": 0, "fee": 0, "lp-usd": 1000, "a-usd": 0} {
			if got := b.Accounts[id].Balance; got != want {
				t.Errorf("after reversing everything %s holds %d, want %d", id, got, want)
			}
		}
		if res := b.Apply(Command{CommandID: "5", Type: TypeReverse, AccountID: "a", TransferID: cid}, now); res.Reason != ReasonReversalExceedsTransfer {
			t.Errorf("reversing a reversed transaction = %s, want reversal_exceeds_transfer", res.Reason)
		}
	})
	t.Run("a reversal the receiver cannot pay back", func(t *testing.T) {
		b := book(fx)
		b.Apply(tx(leg("a", "b", 60, "EUR"), leg("b", "fee", 60, "EUR")), now)
		before := cloneAccounts(b)
		res := b.Apply(Command{CommandID: "1", Type: TypeReverse, AccountID: "a", TransferID: cid}, now)
		// The last leg first: fee gives 60 back to b, then b gives 60 back to a.
		if res.Status != StatusApplied {
			t.Fatalf("reversal = %s %s at %v, want applied (last leg first)", res.Status, res.Reason, res.Leg)
		}
		b2 := book(fx)
		b2.Apply(tx(leg("a", "b", 60, "EUR"), leg("b", "fee", 60, "EUR")), now)
		b2.Accounts["fee"].Balance = 0 // the fee was spent
		before = cloneAccounts(b2)
		res = b2.Apply(Command{CommandID: "1", Type: TypeReverse, AccountID: "a", TransferID: cid}, now)
		if res.Reason != ReasonInsufficientFunds || *res.Leg != 1 {
			t.Fatalf("reversal with the fee spent = %s at %v, want insufficient_funds at leg 1", res.Reason, res.Leg)
		}
		if diff := cmp.Diff(before, cloneAccounts(b2)); diff != "" {
			t.Errorf("a rejected reversal left a trace (-before +after):\n%s", diff)
		}
	})
}

// TestTransactionEdges: a transaction carrying a used reference is refused
// for it only when it would apply (decided on a copy, nothing changes);
// its reversal after one of its accounts was frozen names that leg.
func TestTransactionEdges(t *testing.T) {
	b := book()
	legs := []Leg{{FromAccountID: "a", ToAccountID: "b", Amount: 10, Currency: "EUR"}, {FromAccountID: "b", ToAccountID: "a", Amount: 4, Currency: "EUR"}}
	if res := b.Apply(Command{CommandID: cid, Type: TypeTransaction, Legs: legs, Reference: "r"}, now); res.Status != StatusApplied {
		t.Fatalf("transaction = %s %s", res.Status, res.Reason)
	}
	before := cloneAccounts(b)
	if res := b.Apply(Command{CommandID: "2", Type: TypeTransaction, Legs: legs, Reference: "r"}, now); res.Reason != ReasonReferenceExists {
		t.Errorf("a second transaction with the reference = %s %s, want reference_exists", res.Status, res.Reason)
	}
	over := []Leg{{FromAccountID: "a", ToAccountID: "b", Amount: 1000, Currency: "EUR"}}
	if res := b.Apply(Command{CommandID: "3", Type: TypeTransaction, Legs: over, Reference: "r"}, now); res.Reason != ReasonInsufficientFunds || *res.Leg != 0 {
		t.Errorf("a failing transaction with the reference = %s at %v, want its own insufficient_funds at leg 0", res.Reason, res.Leg)
	}
	if diff := cmp.Diff(before, cloneAccounts(b)); diff != "" {
		t.Errorf("refused transactions changed the book (-before +after):\n%s", diff)
	}
	b.Accounts["b"].Status = AccountFrozen
	res := b.Apply(Command{CommandID: "4", Type: TypeReverse, AccountID: "a", TransferID: cid}, now)
	if res.Reason != ReasonAccountFrozen || res.Leg == nil || *res.Leg != 1 {
		t.Errorf("reversal with b frozen = %s at %v, want account_frozen at leg 1 (the last leg goes first)", res.Reason, res.Leg)
	}
}

// The digest is the one docs/events.md defines (vectors computed with
// Python's hashlib), and Apply chains each account's postings: every
// posting names its account's previous one.
func TestPostingDigestsChainEachAccount(t *testing.T) {
	const (
		open  = "0190b1c2-0000-7000-8000-000000000001"
		pay   = "0190b1c2-0000-7000-8000-000000000002"
		want1 = "52095c048bc64a092e3e95e95d8c6e4f4be95c937a9a908c4f6a6371e1d7b300"
		want2 = "1dbd50966d0eeeeefb3ab5edda6dec4cf90b9a43b9af883c3c707f4b0562952c"
	)
	first := Posting{AccountID: "alice", Currency: "EUR", Amount: 100, BalanceAfter: 100, AccountVersion: 1}
	if got := PostingDigest("", first, open); got != want1 {
		t.Errorf("PostingDigest(first) = %s, want %s", got, want1)
	}
	second := Posting{AccountID: "alice", Currency: "EUR", Amount: -30, BalanceAfter: 70, AccountVersion: 2}
	if got := PostingDigest(want1, second, pay); got != want2 {
		t.Errorf("PostingDigest(second) = %s, want %s", got, want2)
	}

	b := NewBook()
	b.Accounts["alice"] = &Account{ID: "alice", Currency: "EUR", Status: AccountActive, Balance: 100, Version: 1, Digest: want1}
	b.Accounts["bob"] = &Account{ID: "bob", Currency: "EUR", Status: AccountActive}
	res := b.Apply(Command{CommandID: pay, Type: TypeTransfer, FromAccountID: "alice", ToAccountID: "bob", Amount: 30, Currency: "EUR"}, now)
	if res.Status != StatusApplied || res.Postings[0].Digest != want2 || b.Accounts["alice"].Digest != want2 {
		t.Fatalf("alice's posting digest %q (account %q), want %s", res.Postings[0].Digest, b.Accounts["alice"].Digest, want2)
	}
	bob := res.Postings[1]
	if want := PostingDigest("", bob, pay); bob.Digest != want || b.Accounts["bob"].Digest != want {
		t.Errorf("bob's first posting digest %q, want %s chained from nothing", bob.Digest, want)
	}
	// A rejected command moves no link.
	if res := b.Apply(Command{CommandID: open, Type: TypeTransfer, FromAccountID: "bob", ToAccountID: "alice", Amount: 1000, Currency: "EUR"}, now); res.Status != StatusRejected || b.Accounts["bob"].Digest != bob.Digest {
		t.Errorf("a rejected transfer moved bob's digest to %q", b.Accounts["bob"].Digest)
	}
}
