package domain

import (
	"math"
	"testing"
	"time"
)

const holdID = "00000000-0000-7000-8000-0000000000aa"

func at(d time.Duration) *time.Time {
	t := now.Add(d)
	return &t
}

// withHold returns a book where a holds 40 for b (pending, expiring in an
// hour) and a has transferred 30 to b, whatever the options change after.
func withHold(opts ...func(*Book)) *Book {
	b := book()
	if r := b.Apply(Command{CommandID: holdID, Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 40, Currency: "EUR", ExpiresAt: at(time.Hour)}, now); r.Status != StatusApplied {
		panic("setup hold: " + string(r.Reason))
	}
	if r := b.Apply(Command{CommandID: cid, Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: 30, Currency: "EUR"}, now); r.Status != StatusApplied {
		panic("setup transfer: " + string(r.Reason))
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

func TestLifecycleRejections(t *testing.T) {
	capture := func(amount int64) Command {
		return Command{Type: TypeCapture, AccountID: "a", HoldID: holdID, Amount: amount}
	}
	reverse := func(amount int64) Command {
		return Command{Type: TypeReverse, AccountID: "a", TransferID: cid, Amount: amount}
	}
	hold := func(amount int64, expires *time.Time) Command {
		return Command{Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: amount, Currency: "EUR", ExpiresAt: expires}
	}
	tests := []struct {
		name string
		book *Book
		cmd  Command
		want Reason
	}{
		// hold: the checks of a transfer, then expiry.
		{"hold to self", withHold(), Command{Type: TypeHold, FromAccountID: "a", ToAccountID: "a", Amount: 1, Currency: "EUR"}, ReasonSameAccount},
		{"hold from missing", withHold(), Command{Type: TypeHold, FromAccountID: "zz", ToAccountID: "b", Amount: 1, Currency: "EUR"}, ReasonAccountNotFound},
		{"hold beyond available", withHold(), hold(31, nil), ReasonInsufficientFunds},
		{"hold counts toward the daily limit", withHold(func(b *Book) { b.Accounts["a"].DailyDebitLimit = 75 }), hold(6, nil), ReasonDailyLimitExceeded},
		{"hold already expired", withHold(), hold(1, at(-time.Second)), ReasonHoldExpired},
		{"hold expiring now", withHold(), hold(1, at(0)), ReasonHoldExpired},
		{"hold funds before expiry", withHold(), hold(31, at(-time.Second)), ReasonInsufficientFunds},
		{"hold overflows held", withHold(func(b *Book) {
			b.Accounts["a"].Held = math.MaxInt64 - 1
			b.Accounts["a"].OverdraftLimit = math.MaxInt64
		}), hold(2, nil), ReasonBalanceOverflow},
		// capture
		{"capture unknown hold", withHold(), Command{Type: TypeCapture, AccountID: "a", HoldID: cid}, ReasonHoldNotFound},
		{"capture another account's hold", withHold(), Command{Type: TypeCapture, AccountID: "b", HoldID: holdID}, ReasonHoldNotFound},
		{"capture released hold", withHold(func(b *Book) { b.Transfers[holdID].Status = TransferReleased }), capture(0), ReasonHoldNotPending},
		{"not pending before expired", withHold(func(b *Book) {
			b.Transfers[holdID].Status = TransferCaptured
			b.Transfers[holdID].ExpiresAt = at(-time.Hour)
		}), capture(0), ReasonHoldNotPending},
		{"capture past expiry", withHold(func(b *Book) { b.Transfers[holdID].ExpiresAt = at(-time.Second) }), capture(0), ReasonHoldExpired},
		{"expired before exceeds", withHold(func(b *Book) { b.Transfers[holdID].ExpiresAt = at(-time.Second) }), capture(41), ReasonHoldExpired},
		{"capture more than held", withHold(), capture(41), ReasonCaptureExceedsHold},
		{"capture into frozen", withHold(func(b *Book) { b.Accounts["b"].Status = AccountFrozen }), capture(0), ReasonAccountFrozen},
		{"capture into overflow", withHold(func(b *Book) { b.Accounts["b"].Balance = math.MaxInt64 - 10 }), capture(0), ReasonBalanceOverflow},
		// release
		{"release unknown", withHold(), Command{Type: TypeRelease, AccountID: "a", HoldID: cid}, ReasonHoldNotFound},
		{"release expired", withHold(func(b *Book) { b.Transfers[holdID].Status = TransferExpired }), Command{Type: TypeRelease, AccountID: "a", HoldID: holdID}, ReasonHoldNotPending},
		// reverse
		{"reverse unknown", withHold(), Command{Type: TypeReverse, AccountID: "a", TransferID: "00000000-0000-7000-8000-0000000000ff"}, ReasonTransferNotFound},
		{"reverse from the wrong account", withHold(), Command{Type: TypeReverse, AccountID: "b", TransferID: cid}, ReasonTransferNotFound},
		{"reverse a pending hold", withHold(), Command{Type: TypeReverse, AccountID: "a", TransferID: holdID}, ReasonReversalExceedsTransfer},
		{"reverse more than transferred", withHold(), reverse(31), ReasonReversalExceedsTransfer},
		{"reverse more than remains", withHold(func(b *Book) { b.Transfers[cid].ReversedAmount = 25 }), reverse(6), ReasonReversalExceedsTransfer},
		{"reverse a fully reversed transfer", withHold(func(b *Book) { b.Transfers[cid].ReversedAmount = 30 }), reverse(0), ReasonReversalExceedsTransfer},
		{"reverse from a frozen receiver", withHold(func(b *Book) { b.Accounts["b"].Status = AccountFrozen }), reverse(0), ReasonAccountFrozen},
		{"reverse when the receiver spent it", withHold(func(b *Book) { b.Accounts["b"].Balance = 10 }), reverse(0), ReasonInsufficientFunds},
		// account status
		{"freeze missing", withHold(), Command{Type: TypeFreezeAccount, AccountID: "zz"}, ReasonAccountNotFound},
		{"unfreeze closed", withHold(func(b *Book) { b.Accounts["b"].Status = AccountClosed }), Command{Type: TypeUnfreezeAccount, AccountID: "b"}, ReasonAccountClosed},
		{"close with balance", withHold(), Command{Type: TypeCloseAccount, AccountID: "b"}, ReasonAccountNotEmpty},
		{"close with holds only", withHold(func(b *Book) { b.Accounts["a"].Balance = 0 }), Command{Type: TypeCloseAccount, AccountID: "a"}, ReasonAccountNotEmpty},
		{"close twice", withHold(func(b *Book) { b.Accounts["b"].Status = AccountClosed }), Command{Type: TypeCloseAccount, AccountID: "b"}, ReasonAccountClosed},
		{"transfer into closed", withHold(func(b *Book) { b.Accounts["b"].Status = AccountClosed }), transfer(1), ReasonAccountClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkRejected(t, tt.book, tt.cmd, tt.want) })
	}
}

func TestHoldCaptureReleaseExpire(t *testing.T) {
	b := withHold() // a: balance 70, held 40; b: 30
	a := b.Accounts["a"]
	if a.Balance != 70 || a.Held != 40 || a.Available() != 30 {
		t.Fatalf("after hold 40 and transfer 30: a = balance %d held %d, want 70 and 40", a.Balance, a.Held)
	}
	res := b.Apply(Command{Type: TypeCapture, AccountID: "a", HoldID: holdID, Amount: 25}, now)
	if res.Status != StatusApplied || len(res.Postings) != 2 {
		t.Fatalf("partial capture = %+v, want applied with two postings", res)
	}
	if a.Balance != 45 || a.Held != 0 || b.Accounts["b"].Balance != 55 {
		t.Errorf("after capturing 25 of 40: a balance %d held %d, b %d; want 45, 0 (rest released), 55", a.Balance, a.Held, b.Accounts["b"].Balance)
	}
	if h := b.Transfers[holdID]; h.Status != TransferCaptured || h.CapturedAmount != 25 {
		t.Errorf("hold = %+v, want captured 25", h)
	}
	// A second hold, released; a third, expired exactly once.
	second := Command{CommandID: "h2", Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 10, Currency: "EUR"}
	b.Apply(second, now)
	if r := b.Apply(Command{Type: TypeRelease, AccountID: "a", HoldID: "h2"}, now); r.Status != StatusApplied || a.Held != 0 || len(r.Postings) != 0 {
		t.Errorf("release = %+v, held %d; want applied, held 0, no postings", r, a.Held)
	}
	third := Command{CommandID: "h3", Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 5, Currency: "EUR", ExpiresAt: at(time.Minute)}
	b.Apply(third, now)
	if _, ok := b.Expire("h3", now); ok {
		t.Error("Expire before the expiry time succeeded")
	}
	if h, ok := b.Expire("h3", now.Add(time.Minute)); !ok || h.Status != TransferExpired || a.Held != 0 {
		t.Errorf("Expire at the expiry time = %v %v, held %d; want expired, held 0", h, ok, a.Held)
	}
	if _, ok := b.Expire("h3", now.Add(time.Hour)); ok {
		t.Error("a hold expired twice")
	}
}

func TestReversePartialThenFull(t *testing.T) {
	b := withHold()
	r := b.Apply(Command{Type: TypeReverse, AccountID: "a", TransferID: cid, Amount: 10}, now)
	if r.Status != StatusApplied || b.Transfers[cid].Status != TransferPosted || b.Transfers[cid].ReversedAmount != 10 {
		t.Fatalf("partial reverse = %+v, transfer %+v; want applied, still posted, 10 reversed", r, b.Transfers[cid])
	}
	r = b.Apply(Command{Type: TypeReverse, AccountID: "a", TransferID: cid}, now)
	if r.Status != StatusApplied || r.Postings[0].Amount != -20 || b.Transfers[cid].Status != TransferReversed {
		t.Fatalf("full reverse of the rest = %+v, transfer %+v; want 20 back and reversed", r, b.Transfers[cid])
	}
	if got := b.Accounts["b"].Balance; got != 0 {
		t.Errorf("b balance after full reversal = %d, want 0", got)
	}
	// A captured hold can be reversed too, up to what was captured.
	b.Apply(Command{Type: TypeCapture, AccountID: "a", HoldID: holdID, Amount: 15}, now)
	if r := b.Apply(Command{Type: TypeReverse, AccountID: "a", TransferID: holdID, Amount: 16}, now); r.Reason != ReasonReversalExceedsTransfer {
		t.Errorf("reverse 16 of a 15 capture = %q, want %q", r.Reason, ReasonReversalExceedsTransfer)
	}
	if r := b.Apply(Command{Type: TypeReverse, AccountID: "a", TransferID: holdID}, now); r.Status != StatusApplied || b.Transfers[holdID].Status != TransferReversed {
		t.Errorf("reverse of the captured hold = %+v, want applied and reversed", r)
	}
}

func TestFreezeUnfreezeClose(t *testing.T) {
	b := book()
	for _, c := range []struct {
		typ  Type
		want AccountStatus
	}{{TypeFreezeAccount, AccountFrozen}, {TypeFreezeAccount, AccountFrozen}, {TypeUnfreezeAccount, AccountActive}, {TypeUnfreezeAccount, AccountActive}, {TypeCloseAccount, AccountClosed}} {
		r := b.Apply(Command{Type: c.typ, AccountID: "b"}, now)
		if r.Status != StatusApplied || b.Accounts["b"].Status != c.want {
			t.Errorf("%s = %+v, status %s; want applied and %s", c.typ, r, b.Accounts["b"].Status, c.want)
		}
	}
}
