package domain

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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
			if diff := cmp.Diff(tt.want, got.Postings); diff != "" {
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
