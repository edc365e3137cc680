package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"time"
)

// Status is the outcome of a processed command.
type Status string

// Outcome statuses.
const (
	StatusApplied  Status = "applied"
	StatusRejected Status = "rejected"
	// StatusDeadLettered is the status of a command whose record went to
	// the DLQ: it was never decided. A later replay that decides it
	// replaces it.
	StatusDeadLettered Status = "dead_lettered"
)

// Reason says why a command was rejected. Reasons are stable snake_case codes
// that clients and analysts branch on; a rejection is an outcome, not an error.
type Reason string

// Rejection reasons. The order in which Apply checks them is documented in
// docs/ledger.md; the first failing check wins.
const (
	ReasonIdempotencyConflict     Reason = "idempotency_conflict"
	ReasonAccountNotFound         Reason = "account_not_found"
	ReasonAccountExists           Reason = "account_exists"
	ReasonAccountFrozen           Reason = "account_frozen"
	ReasonAccountClosed           Reason = "account_closed"
	ReasonCurrencyMismatch        Reason = "currency_mismatch"
	ReasonInsufficientFunds       Reason = "insufficient_funds"
	ReasonDailyLimitExceeded      Reason = "daily_limit_exceeded"
	ReasonSameAccount             Reason = "same_account"
	ReasonHoldNotFound            Reason = "hold_not_found"
	ReasonHoldNotPending          Reason = "hold_not_pending"
	ReasonHoldExpired             Reason = "hold_expired"
	ReasonCaptureExceedsHold      Reason = "capture_exceeds_hold"
	ReasonTransferNotFound        Reason = "transfer_not_found"
	ReasonReversalExceedsTransfer Reason = "reversal_exceeds_transfer"
	ReasonAccountNotEmpty         Reason = "account_not_empty"
	ReasonBalanceOverflow         Reason = "balance_overflow"
	ReasonReferenceExists         Reason = "reference_exists"
	ReasonVersionMismatch         Reason = "version_mismatch"
	ReasonFeeAccountInvalid       Reason = "fee_account_invalid"
	// ReasonForbidden: the API key that submitted the command may not move
	// money from one of its debit accounts (Command.DebitAccounts).
	ReasonForbidden Reason = "forbidden"
)

// AccountStatus is an account's lifecycle state.
type AccountStatus string

// Account states. A frozen account neither sends nor receives money until it
// is unfrozen; a closed account never does again.
const (
	AccountActive AccountStatus = "active"
	AccountFrozen AccountStatus = "frozen"
	AccountClosed AccountStatus = "closed"
)

// Account is the state of one ledger account. Amounts are minor units.
type Account struct {
	ID       string
	Currency string
	Status   AccountStatus
	// External marks the per-currency account that deposits and withdrawals
	// post against; it has no overdraft limit and is never opened by a client.
	External        bool
	Balance         int64
	Held            int64 // sum of pending holds, counted against Available
	OverdraftLimit  int64 // Available may go down to -OverdraftLimit
	DailyDebitLimit int64 // 0: no limit
	DailyDebitDay   string
	DailyDebited    int64 // debits and holds on DailyDebitDay (UTC, 2006-01-02)
	// Version counts the account's postings: the n-th posting of an account
	// carries AccountVersion n, so a consumer can see gaps.
	Version int64
	// Digest is the digest of the account's latest posting ("" before its
	// first): the link the next one chains to (PostingDigest).
	Digest string
	// FeePlan is the fee the account pays on what it sends; nil for none.
	FeePlan *FeePlan
	// Period is the account's open statement period, and ClosedThrough
	// the day of its last statement ("" before its first): see
	// statement.go.
	Period        Period
	ClosedThrough string
	// An account's metadata is not part of its state here: it never changes
	// and the rules never read it; the worker stores it sealed.
}

// Available is what the account may still spend before its overdraft limit.
func (a *Account) Available() int64 { return a.Balance - a.Held }

// ExternalPrefix starts the id of every per-currency external account. '@' is
// outside the account id alphabet, so no client can open or name one.
const ExternalPrefix = "@external:"

// ExternalAccountID is the id of the external account for currency.
func ExternalAccountID(currency string) string { return ExternalPrefix + currency }

// NewExternalAccount returns the zero state of currency's external account.
func NewExternalAccount(currency string) *Account {
	return &Account{ID: ExternalAccountID(currency), Currency: currency, Status: AccountActive, External: true}
}

// Posting is one change of one account's balance.
type Posting struct {
	AccountID      string
	Currency       string
	Amount         int64 // signed: a credit is positive, a debit negative
	BalanceAfter   int64
	AccountVersion int64
	// Reference is the reference of the transfer the posting moves money
	// for, so that analysts can join postings to orders.
	Reference string
	// Digest chains the account's postings (PostingDigest).
	Digest string
}

// PostingDigest is the digest of posting p of command commandID that
// follows the account's posting of digest prev ("" for its first): the
// lowercase hex SHA-256 of
// "prev|account_id|account_version|currency|amount|balance_after|command_id",
// numbers in decimal. Each posting names the one before it, so a copy of an
// account's postings that lacks one, holds one twice or has one altered
// breaks the chain from there on (docs/events.md).
func PostingDigest(prev string, p Posting, commandID string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s|%s|%d|%s|%d|%d|%s", prev, p.AccountID, p.AccountVersion, p.Currency, p.Amount, p.BalanceAfter, commandID)
	return hex.EncodeToString(h.Sum(nil))
}

// chain gives each of postings, in order, its digest, and moves its
// account's link on; it counts each posting in its account's statement
// period (at now), first closing the period of an earlier day, and returns
// the statements it closed.
func (b *Book) chain(postings []Posting, commandID string, now time.Time) (closed []Statement) {
	for i := range postings {
		p := &postings[i]
		a := b.Accounts[p.AccountID]
		before := p.BalanceAfter - p.Amount
		day := a.openPeriodFor(now)
		if a.Period.Day != "" && a.Period.Day < day {
			closed = append(closed, a.closePeriod(before, p.AccountVersion-1, a.Digest))
		}
		if a.Period.Day == "" {
			a.Period = Period{Day: day, Opening: before, FirstVersion: p.AccountVersion}
		}
		a.Period.add(p.Amount)
		p.Digest = PostingDigest(a.Digest, *p, commandID)
		a.Digest = p.Digest
	}
	return closed
}

// TransferKind says what made a transfer.
type TransferKind string

// Transfer kinds: every command that moves or reserves money makes one, with
// the command_id as its id.
const (
	KindTransfer   TransferKind = "transfer"
	KindDeposit    TransferKind = "deposit"
	KindWithdrawal TransferKind = "withdrawal"
	KindHold       TransferKind = "hold"
	// KindTransaction is a transaction of several legs; its row describes
	// its first leg, and Legs all of them.
	KindTransaction TransferKind = "transaction"
)

// TransferStatus is where a transfer stands.
type TransferStatus string

// Transfer states. Deposits, withdrawals and transfers are posted at once; a
// transfer whose whole amount was reversed is reversed. A hold is pending
// until captured, released or expired.
const (
	TransferPosted   TransferStatus = "posted"
	TransferReversed TransferStatus = "reversed"
	TransferPending  TransferStatus = "pending"
	TransferCaptured TransferStatus = "captured"
	TransferReleased TransferStatus = "released"
	TransferExpired  TransferStatus = "expired"
)

// Transfer is one movement or reservation of money.
type Transfer struct {
	ID            string
	Kind          TransferKind
	FromAccountID string
	ToAccountID   string
	Currency      string
	Amount        int64
	// CapturedAmount is what a captured hold moved (the rest was released).
	CapturedAmount int64
	// ReversedAmount is what reversals have given back so far.
	ReversedAmount int64
	Status         TransferStatus
	ExpiresAt      *time.Time
	// Reference is the reference of the command that made it ("" for none).
	Reference string
	// Legs are a transaction's movements; nil for the other kinds.
	Legs []TransferLeg
	// Fee is what the debit account paid on top of Amount, to its fee
	// plan's revenue account (a transaction's: its first leg's; each leg
	// has its own).
	Fee int64
}

// TransferLeg is one leg of a transaction, the fee its debit account paid
// on it, and what reversals gave back of it.
type TransferLeg struct {
	Leg
	Fee            int64
	ReversedAmount int64
}

// reversible is how much of t reversals may still give back: a transfer's
// amount, or a captured hold's captured amount, less what was reversed.
func (t *Transfer) reversible() int64 {
	switch {
	case t.Kind == KindTransaction:
		left := int64(0)
		for _, l := range t.Legs {
			left += l.Amount - l.ReversedAmount // ≤ 64 × MaxAmount: no overflow
		}
		return left
	case t.Kind == KindTransfer:
		return t.Amount - t.ReversedAmount
	case t.Kind == KindHold && (t.Status == TransferCaptured || t.Status == TransferReversed):
		return t.CapturedAmount - t.ReversedAmount
	}
	return 0
}

// Result is the outcome of applying one command.
type Result struct {
	Status   Status
	Reason   Reason // set when Status is StatusRejected
	Postings []Posting
	// Opened is the account an applied open_account created.
	Opened *Account
	// Changed lists the existing accounts whose state changed (postings,
	// holds or status).
	Changed []string
	// Transfer is the transfer the command created or changed.
	Transfer *Transfer
	// Leg is the index of a transaction's leg a rejection is about.
	Leg *int
	// Statements are the periods of earlier days that the command's
	// postings closed (their accounts' first postings of a new day).
	Statements []Statement
}

func rejected(r Reason) Result { return Result{Status: StatusRejected, Reason: r} }

// Book is the working set of accounts and transfers a batch of commands may
// touch. The caller loads (and locks) what Refs names; an id missing from the
// Book does not exist. Apply changes the Book only when a command is
// applied, so a rejection never leaves a trace.
type Book struct {
	Accounts  map[string]*Account
	Transfers map[string]*Transfer
	// References maps a reference in use to the transfer that holds it.
	// The caller loads the references its commands carry (RefsOf).
	References map[string]string
}

// NewBook returns an empty Book.
func NewBook() *Book {
	return &Book{Accounts: make(map[string]*Account), Transfers: make(map[string]*Transfer), References: make(map[string]string)}
}

// Refs lists what cmd reads or changes that the caller must load first: the
// accounts it names (with the external account of its currency) and the
// transfer it names. A named transfer's own accounts are needed too; the
// caller adds them once the transfer is loaded, and with every account the
// revenue account of its fee plan.
func Refs(cmd Command) (accounts, transfers []string) {
	switch cmd.Type {
	case TypeDeposit, TypeWithdraw:
		return []string{cmd.AccountID, ExternalAccountID(cmd.Currency)}, nil
	case TypeTransfer, TypeHold:
		return []string{cmd.FromAccountID, cmd.ToAccountID}, nil
	case TypeCapture, TypeRelease:
		return []string{cmd.AccountID}, []string{cmd.HoldID}
	case TypeReverse:
		return []string{cmd.AccountID}, []string{cmd.TransferID}
	case TypeCloseAccount:
		if cmd.SweepToAccountID != "" {
			return []string{cmd.AccountID, cmd.SweepToAccountID}, nil
		}
		return []string{cmd.AccountID}, nil
	case TypeTransaction:
		var accounts []string
		for _, l := range cmd.Legs {
			accounts = append(accounts, l.FromAccountID, l.ToAccountID)
		}
		return accounts, nil
	case TypeSetFeePlan:
		if cmd.FeePlan != nil {
			return []string{cmd.AccountID, cmd.FeePlan.RevenueAccountID}, nil
		}
		return []string{cmd.AccountID}, nil
	default:
		return []string{cmd.AccountID}, nil
	}
}

// Apply runs the ledger rules for cmd against the Book at time now and
// returns the outcome; on success the Book holds the new states.
// Idempotency (a command_id seen before) is the caller's check: it runs
// before Apply so that a retry always gets the first answer. The order of the
// checks of each command is documented in docs/ledger.md.
//
// A reference in use is the last check: reference_exists is the answer only
// for a command that would otherwise apply (decided on a copy of what it
// touches, so nothing changes). A command rejected for its own reasons then
// never depends on whether another command's reference was visible yet,
// and one that would apply writes a transfer, whose unique reference a
// concurrent transaction meets: outcomes stay those of one serial order.
func (b *Book) Apply(cmd Command, now time.Time) Result {
	if cmd.Reference != "" {
		if _, used := b.References[cmd.Reference]; used {
			if res := b.scratch(cmd).apply(cmd, now); res.Status != StatusApplied {
				return res
			}
			return rejected(ReasonReferenceExists)
		}
	}
	res := b.apply(cmd, now)
	if res.Status == StatusApplied {
		res.Statements = b.chain(res.Postings, cmd.CommandID, now)
	}
	if res.Status == StatusApplied && cmd.Reference != "" && res.Transfer != nil {
		res.Transfer.Reference = cmd.Reference
		b.References[cmd.Reference] = res.Transfer.ID
		for i := range res.Postings {
			res.Postings[i].Reference = cmd.Reference
		}
	}
	return res
}

// scratch is a copy of what cmd touches, to decide it without a trace.
func (b *Book) scratch(cmd Command) *Book {
	c := NewBook()
	accounts, transfers := Refs(cmd)
	for _, id := range accounts {
		if a := b.Accounts[id]; a != nil && a.FeePlan != nil {
			accounts = append(accounts, a.FeePlan.RevenueAccountID)
		}
	}
	for _, id := range accounts {
		if a := b.Accounts[id]; a != nil {
			x := *a
			c.Accounts[id] = &x
		}
	}
	for _, id := range transfers {
		if t := b.Transfers[id]; t != nil {
			x := *t
			c.Transfers[id] = &x
		}
	}
	return c
}

func (b *Book) apply(cmd Command, now time.Time) Result {
	acct := b.Accounts
	switch cmd.Type {
	case TypeOpenAccount:
		return b.openAccount(cmd)
	case TypeDeposit:
		return b.move(cmd, KindDeposit, acct[ExternalAccountID(cmd.Currency)], acct[cmd.AccountID], now)
	case TypeWithdraw:
		return b.move(cmd, KindWithdrawal, acct[cmd.AccountID], acct[ExternalAccountID(cmd.Currency)], now)
	case TypeTransfer:
		if cmd.FromAccountID == cmd.ToAccountID {
			return rejected(ReasonSameAccount)
		}
		return b.move(cmd, KindTransfer, acct[cmd.FromAccountID], acct[cmd.ToAccountID], now)
	case TypeHold:
		return b.hold(cmd, now)
	case TypeTransaction:
		return b.transaction(cmd, now)
	case TypeSetFeePlan:
		return b.setFeePlan(cmd)
	case TypeCapture:
		return b.capture(cmd, now)
	case TypeRelease:
		return b.release(cmd)
	case TypeReverse:
		return b.reverse(cmd)
	case TypeCloseAccount:
		if cmd.SweepToAccountID != "" {
			return b.closeAndSweep(cmd, now)
		}
		return b.setStatus(cmd)
	case TypeFreezeAccount, TypeUnfreezeAccount:
		return b.setStatus(cmd)
	}
	panic("domain: Apply of unknown command type " + string(cmd.Type)) // DecodeCommand admits none
}

func (b *Book) openAccount(cmd Command) Result {
	if _, ok := b.Accounts[cmd.AccountID]; ok {
		return rejected(ReasonAccountExists)
	}
	a := &Account{
		ID:              cmd.AccountID,
		Currency:        cmd.Currency,
		Status:          AccountActive,
		OverdraftLimit:  cmd.OverdraftLimit,
		DailyDebitLimit: cmd.DailyDebitLimit,
	}
	b.Accounts[a.ID] = a
	return Result{Status: StatusApplied, Opened: a}
}

// usable checks that both accounts of a movement exist, are open and not
// frozen, and hold currency. It returns "" when they do.
func usable(debit, credit *Account, currency string) Reason {
	switch {
	case debit == nil || credit == nil:
		return ReasonAccountNotFound
	case debit.Status == AccountClosed || credit.Status == AccountClosed:
		return ReasonAccountClosed
	case debit.Status == AccountFrozen || credit.Status == AccountFrozen:
		return ReasonAccountFrozen
	case debit.Currency != currency || credit.Currency != currency:
		return ReasonCurrencyMismatch
	}
	return ""
}

// fundsFor checks that debit may spend amount now: available funds down to
// the overdraft limit, then the daily debit limit. It returns the day's
// debits once amount is added (starting from 0 on a new UTC day); the sum
// stops at math.MaxInt64 rather than wrap on an account without a limit.
func fundsFor(debit *Account, amount int64, now time.Time) (int64, Reason) {
	if debit.External {
		return 0, ""
	}
	if debit.Available()-amount < -debit.OverdraftLimit {
		return 0, ReasonInsufficientFunds
	}
	debited := int64(0)
	if today(debit, now) == debit.DailyDebitDay {
		debited = debit.DailyDebited
	}
	if debited > math.MaxInt64-amount {
		debited = math.MaxInt64 - amount // above any limit (≤ MaxAmount) already
	}
	if debit.DailyDebitLimit > 0 && debited+amount > debit.DailyDebitLimit {
		return 0, ReasonDailyLimitExceeded
	}
	return debited + amount, ""
}

func day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// today is the day whose debits a debit at now counts against: now's UTC
// day, unless the account already stored a later one. Days never go back,
// so a worker whose clock is behind the day stored on the account (another
// worker's, or its own before a clock step) cannot reset the daily limit.
func today(a *Account, now time.Time) string {
	return max(day(now), a.DailyDebitDay) // YYYY-MM-DD sorts as it reads
}

// versionMatches checks cmd's expected_version, when it has one, against
// the debit account's version.
func versionMatches(cmd Command, debit *Account) Reason {
	if cmd.ExpectedVersion != nil && *cmd.ExpectedVersion != debit.Version {
		return ReasonVersionMismatch
	}
	return ""
}

// upTo is how much of amount debit can move now (amount_mode up_to): what
// its funds allow down to its overdraft limit, then what its daily limit
// leaves today. Nothing to move is insufficient_funds, or
// daily_limit_exceeded when only the daily limit stands in the way.
func upTo(debit *Account, amount int64, plan FeePlan, now time.Time) (int64, Reason) {
	if debit.External {
		return amount, ""
	}
	room := int64(math.MaxInt64)
	if avail := debit.Available(); avail <= math.MaxInt64-debit.OverdraftLimit {
		room = avail + debit.OverdraftLimit
	}
	if room <= 0 || 1+plan.Fee(1) > room {
		return 0, ReasonInsufficientFunds // not even the smallest amount and its fee
	}
	short := ReasonInsufficientFunds
	if debit.DailyDebitLimit > 0 {
		debited := int64(0)
		if today(debit, now) == debit.DailyDebitDay {
			debited = debit.DailyDebited
		}
		if left := debit.DailyDebitLimit - debited; left < room {
			room, short = left, ReasonDailyLimitExceeded
		}
	}
	// The largest x ≤ amount whose x + fee(x) fits in room: x + fee(x)
	// grows with x, so a binary search finds it.
	lo, hi := int64(0), min(amount, max(room, 0))
	for lo < hi {
		mid := hi - (hi-lo)/2
		if mid+plan.Fee(mid) <= room {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0 {
		return 0, short
	}
	return lo, ""
}

// move takes cmd.Amount (with amount_mode up_to, what can be moved of it)
// from debit and gives it to credit: usable accounts, expected_version,
// then no balance overflow, then the debit's funds and daily limit.
func (b *Book) move(cmd Command, kind TransferKind, debit, credit *Account, now time.Time) Result {
	amount := cmd.Amount
	if r := usable(debit, credit, cmd.Currency); r != "" {
		return rejected(r)
	}
	if r := versionMatches(cmd, debit); r != "" {
		return rejected(r)
	}
	plan, revenue, r := b.feePlanOf(debit, kind)
	if r != "" {
		return rejected(r)
	}
	if cmd.AmountMode == AmountUpTo {
		if amount, r = upTo(debit, amount, plan, now); r != "" {
			return rejected(r)
		}
	}
	fee := plan.Fee(amount)
	postings, r := b.pay(debit, credit, revenue, amount, fee, cmd.Currency, now)
	if r != "" {
		return rejected(r)
	}
	t := &Transfer{ID: cmd.CommandID, Kind: kind, FromAccountID: debit.ID, ToAccountID: credit.ID,
		Currency: cmd.Currency, Amount: amount, Status: TransferPosted, Fee: fee}
	b.Transfers[t.ID] = t
	changed := []string{debit.ID, credit.ID}
	if fee > 0 && revenue.ID != credit.ID {
		changed = append(changed, revenue.ID)
	}
	return Result{Status: StatusApplied, Postings: postings, Changed: changed, Transfer: t}
}

// feePlanOf is the fee plan debit pays under when it sends money as kind
// (a transfer, a withdrawal, a transaction's leg: not a deposit, whose
// debit is external) and the account the fee goes to. A plan whose revenue
// account cannot take the fee now (gone, closed, frozen, another currency)
// is fee_account_invalid. No plan is the zero plan: no fee.
func (b *Book) feePlanOf(debit *Account, kind TransferKind) (FeePlan, *Account, Reason) {
	if debit.External || debit.FeePlan == nil || kind == KindDeposit {
		return FeePlan{}, nil, ""
	}
	rev := b.Accounts[debit.FeePlan.RevenueAccountID]
	if rev == nil || rev.ID == debit.ID || rev.Status != AccountActive || rev.Currency != debit.Currency {
		return FeePlan{}, nil, ReasonFeeAccountInvalid
	}
	return *debit.FeePlan, rev, ""
}

// pay moves amount from debit to credit and fee from debit to revenue: no
// balance overflows, then amount + fee within the debit's funds and daily
// limit. It returns the postings (the fee's after the amount's), or why
// not, having changed nothing.
func (b *Book) pay(debit, credit, revenue *Account, amount, fee int64, currency string, now time.Time) ([]Posting, Reason) {
	total := amount + fee // ≤ 2 × 2^53 + 2^53: no overflow
	creditGets := amount
	if fee > 0 && revenue.ID == credit.ID {
		creditGets += fee
	}
	switch {
	case debit.Balance < math.MinInt64+total, credit.Balance > math.MaxInt64-creditGets:
		return nil, ReasonBalanceOverflow
	case fee > 0 && revenue.Balance > math.MaxInt64-fee:
		return nil, ReasonBalanceOverflow
	}
	debited, r := fundsFor(debit, total, now)
	if r != "" {
		return nil, r
	}
	if !debit.External {
		debit.DailyDebitDay, debit.DailyDebited = today(debit, now), debited
	}
	postings := post(debit, credit, amount, currency)
	if fee > 0 {
		postings = append(postings, post(debit, revenue, fee, currency)...)
	}
	return postings, ""
}

// setFeePlan sets or removes an account's fee plan: account_not_found,
// account_closed, then fee_account_invalid when the revenue account is
// missing, closed, frozen, in another currency, or the account itself.
// Commands applied after it pay under the new plan.
func (b *Book) setFeePlan(cmd Command) Result {
	a, r := b.notClosed(cmd.AccountID)
	if r != "" {
		return rejected(r)
	}
	if p := cmd.FeePlan; p != nil {
		rev := b.Accounts[p.RevenueAccountID]
		if rev == nil || rev.ID == a.ID || rev.Status != AccountActive || rev.Currency != a.Currency {
			return rejected(ReasonFeeAccountInvalid)
		}
		plan := *p
		a.FeePlan = &plan
	} else {
		a.FeePlan = nil
	}
	return Result{Status: StatusApplied, Changed: []string{a.ID}}
}

// legRejected is a transaction's rejection at leg i.
func legRejected(i int, r Reason) Result {
	res := rejected(r)
	res.Leg = &i
	return res
}

// saved holds accounts' states before an all-or-nothing change, to put them
// back when a later step fails.
type saved map[string]Account

func (b *Book) save(ids []string) saved {
	s := saved{}
	for _, id := range ids {
		if a := b.Accounts[id]; a != nil {
			s[id] = *a
		}
	}
	return s
}

func (b *Book) restore(s saved) {
	for id, a := range s {
		*b.Accounts[id] = a
	}
}

// transaction applies its legs in order, all or nothing: each leg is
// checked as a transfer (same_account, the accounts usable in the leg's
// currency, no overflow, the debit's funds and daily limit) against the
// state the legs before it left; the first failing leg rejects the whole
// with its reason and index, and no leg's effect remains. Each leg posts
// to both its accounts.
func (b *Book) transaction(cmd Command, now time.Time) Result {
	accounts, _ := Refs(cmd)
	for _, id := range accounts {
		if a := b.Accounts[id]; a != nil && a.FeePlan != nil {
			accounts = append(accounts, a.FeePlan.RevenueAccountID)
		}
	}
	before := b.save(accounts)
	var postings []Posting
	var changed []string
	seen := map[string]bool{}
	fees := make([]int64, len(cmd.Legs))
	for i, l := range cmd.Legs {
		ps, fee, revenue, r := b.leg(l, now)
		if r != "" {
			b.restore(before)
			return legRejected(i, r)
		}
		postings, fees[i] = append(postings, ps...), fee
		for _, id := range []string{l.FromAccountID, l.ToAccountID, revenue} {
			if id != "" && !seen[id] {
				seen[id] = true
				changed = append(changed, id)
			}
		}
	}
	first := cmd.Legs[0]
	t := &Transfer{ID: cmd.CommandID, Kind: KindTransaction, FromAccountID: first.FromAccountID, ToAccountID: first.ToAccountID,
		Currency: first.Currency, Amount: first.Amount, Status: TransferPosted, Legs: make([]TransferLeg, len(cmd.Legs))}
	for i, l := range cmd.Legs {
		t.Legs[i] = TransferLeg{Leg: l, Fee: fees[i]}
	}
	t.Fee = fees[0] // the row describes the first leg; Legs has every fee
	b.Transfers[t.ID] = t
	return Result{Status: StatusApplied, Postings: postings, Changed: changed, Transfer: t}
}

// leg checks one leg of a transaction and counts its debit against the
// daily limit; it reports why the leg cannot move, or "".
func (b *Book) leg(l Leg, now time.Time) (postings []Posting, fee int64, revenue string, r Reason) {
	if l.FromAccountID == l.ToAccountID {
		return nil, 0, "", ReasonSameAccount
	}
	debit, credit := b.Accounts[l.FromAccountID], b.Accounts[l.ToAccountID]
	if r := usable(debit, credit, l.Currency); r != "" {
		return nil, 0, "", r
	}
	plan, rev, r := b.feePlanOf(debit, KindTransaction)
	if r != "" {
		return nil, 0, "", r
	}
	fee = plan.Fee(l.Amount)
	if postings, r = b.pay(debit, credit, rev, l.Amount, fee, l.Currency, now); r != "" {
		return nil, 0, "", r
	}
	if fee > 0 {
		revenue = rev.ID
	}
	return postings, fee, revenue, ""
}

// reverseTransaction gives back a transaction, whole (every leg's
// remainder) or leg by leg (cmd.LegAmounts, one per leg, 0 leaving a leg
// alone), all or nothing, the last leg first: so an account a later leg
// paid on from an earlier one's money has it back before it must return it.
// Each leg's receiver must be usable and have the funds to give back.
func (b *Book) reverseTransaction(cmd Command, t *Transfer) Result {
	amounts := cmd.LegAmounts
	switch {
	case cmd.Amount > 0:
		return rejected(ReasonReversalExceedsTransfer) // a transaction is reversed whole or by leg_amounts
	case amounts == nil:
		for _, l := range t.Legs {
			amounts = append(amounts, l.Amount-l.ReversedAmount)
		}
	case len(amounts) != len(t.Legs):
		return rejected(ReasonReversalExceedsTransfer) // not one amount per leg: no leg to name
	}
	if t.reversible() == 0 {
		return rejected(ReasonReversalExceedsTransfer)
	}
	for i, a := range amounts {
		if a > t.Legs[i].Amount-t.Legs[i].ReversedAmount {
			return legRejected(i, ReasonReversalExceedsTransfer)
		}
	}
	accounts, _ := Refs(Command{Type: TypeTransaction, Legs: legsOf(t)})
	before := b.save(accounts)
	var postings []Posting
	var changed []string
	seen := map[string]bool{}
	for i := len(amounts) - 1; i >= 0; i-- {
		a := amounts[i]
		if a == 0 {
			continue
		}
		l := t.Legs[i]
		debit, credit := b.Accounts[l.ToAccountID], b.Accounts[l.FromAccountID]
		r := usable(debit, credit, l.Currency)
		switch {
		case r != "":
		case credit.Balance > math.MaxInt64-a || debit.Balance < math.MinInt64+a:
			r = ReasonBalanceOverflow
		case debit.Available()-a < -debit.OverdraftLimit:
			r = ReasonInsufficientFunds
		}
		if r != "" {
			b.restore(before)
			return legRejected(i, r)
		}
		postings = append(postings, post(debit, credit, a, l.Currency)...)
		for _, id := range []string{debit.ID, credit.ID} {
			if !seen[id] {
				seen[id] = true
				changed = append(changed, id)
			}
		}
	}
	for i, a := range amounts {
		t.Legs[i].ReversedAmount += a
	}
	t.ReversedAmount = t.Legs[0].ReversedAmount
	if t.reversible() == 0 {
		t.Status = TransferReversed
	}
	return Result{Status: StatusApplied, Postings: referenced(postings, t.Reference), Changed: changed, Transfer: t}
}

func legsOf(t *Transfer) []Leg {
	legs := make([]Leg, len(t.Legs))
	for i, l := range t.Legs {
		legs[i] = l.Leg
	}
	return legs
}

// closeAndSweep closes an account and moves its remaining balance to
// another, in one step: same_account, then both accounts usable (found,
// not closed, not frozen, the same currency), then account_not_empty when
// holds are pending or the balance is below zero (a debt is not swept),
// then no overflow of the receiver, then the daily debit limit (a sweep is
// money leaving; closing must not get around the limit). A zero balance
// closes with no posting; a positive one makes a transfer (id: the
// command's) that a reversal cannot undo, the account being closed.
func (b *Book) closeAndSweep(cmd Command, now time.Time) Result {
	if cmd.AccountID == cmd.SweepToAccountID {
		return rejected(ReasonSameAccount)
	}
	a, to := b.Accounts[cmd.AccountID], b.Accounts[cmd.SweepToAccountID]
	if a == nil {
		return rejected(ReasonAccountNotFound)
	}
	if r := usable(a, to, a.Currency); r != "" {
		return rejected(r)
	}
	if a.Held != 0 || a.Balance < 0 {
		return rejected(ReasonAccountNotEmpty)
	}
	if to.Balance > math.MaxInt64-a.Balance {
		return rejected(ReasonBalanceOverflow)
	}
	res := Result{Status: StatusApplied, Changed: []string{a.ID}}
	if a.Balance > 0 {
		// The daily debit limit is a control on money leaving: a sweep is
		// money leaving, and closing must not get around the limit.
		debited, r := fundsFor(a, a.Balance, now)
		if r != "" {
			return rejected(r)
		}
		a.DailyDebitDay, a.DailyDebited = today(a, now), debited
		t := &Transfer{ID: cmd.CommandID, Kind: KindTransfer, FromAccountID: a.ID, ToAccountID: to.ID,
			Currency: a.Currency, Amount: a.Balance, Status: TransferPosted}
		b.Transfers[t.ID] = t
		res.Postings, res.Transfer = post(a, to, a.Balance, a.Currency), t
		res.Changed = append(res.Changed, to.ID)
	}
	a.Status = AccountClosed
	return res
}

// post moves amount from debit to credit and returns the two postings.
func post(debit, credit *Account, amount int64, currency string) []Posting {
	debit.Balance -= amount
	debit.Version++
	credit.Balance += amount
	credit.Version++
	return []Posting{
		{AccountID: debit.ID, Currency: currency, Amount: -amount, BalanceAfter: debit.Balance, AccountVersion: debit.Version},
		{AccountID: credit.ID, Currency: currency, Amount: amount, BalanceAfter: credit.Balance, AccountVersion: credit.Version},
	}
}

// hold reserves cmd.Amount of the debit account for the credit account: the
// checks of a transfer (holds count against funds and the daily limit, and
// the reservation must not overflow), then an expiry in the past is
// hold_expired. Balances do not change, so a hold has no postings.
func (b *Book) hold(cmd Command, now time.Time) Result {
	if cmd.FromAccountID == cmd.ToAccountID {
		return rejected(ReasonSameAccount)
	}
	debit, credit := b.Accounts[cmd.FromAccountID], b.Accounts[cmd.ToAccountID]
	if r := usable(debit, credit, cmd.Currency); r != "" {
		return rejected(r)
	}
	if r := versionMatches(cmd, debit); r != "" {
		return rejected(r)
	}
	if debit.Held > math.MaxInt64-cmd.Amount || debit.Balance-debit.Held < math.MinInt64+cmd.Amount {
		return rejected(ReasonBalanceOverflow)
	}
	debited, r := fundsFor(debit, cmd.Amount, now)
	if r != "" {
		return rejected(r)
	}
	if cmd.ExpiresAt != nil && !cmd.ExpiresAt.After(now) {
		return rejected(ReasonHoldExpired)
	}
	debit.Held += cmd.Amount
	debit.DailyDebitDay, debit.DailyDebited = today(debit, now), debited
	t := &Transfer{ID: cmd.CommandID, Kind: KindHold, FromAccountID: debit.ID, ToAccountID: credit.ID,
		Currency: cmd.Currency, Amount: cmd.Amount, Status: TransferPending, ExpiresAt: cmd.ExpiresAt}
	b.Transfers[t.ID] = t
	return Result{Status: StatusApplied, Changed: []string{debit.ID}, Transfer: t}
}

// pendingHold finds the hold a capture or release names: it must exist, be a
// hold of cmd.AccountID, and be pending.
func (b *Book) pendingHold(cmd Command) (*Transfer, Reason) {
	t := b.Transfers[cmd.HoldID]
	switch {
	case t == nil || t.Kind != KindHold || t.FromAccountID != cmd.AccountID:
		return nil, ReasonHoldNotFound
	case t.Status != TransferPending:
		return nil, ReasonHoldNotPending
	}
	return t, ""
}

// capture moves all or part of a pending hold and releases the rest:
// hold_not_found, hold_not_pending, hold_expired (past its expiry even if
// the expirer has not run yet), capture_exceeds_hold, then the accounts must
// be usable and the credit must not overflow. Funds were reserved by the
// hold, so there is no funds or daily-limit check.
func (b *Book) capture(cmd Command, now time.Time) Result {
	t, r := b.pendingHold(cmd)
	if r != "" {
		return rejected(r)
	}
	if t.ExpiresAt != nil && !t.ExpiresAt.After(now) {
		return rejected(ReasonHoldExpired)
	}
	amount := t.Amount
	if cmd.Amount > 0 {
		amount = cmd.Amount
	}
	if amount > t.Amount {
		return rejected(ReasonCaptureExceedsHold)
	}
	debit, credit := b.Accounts[t.FromAccountID], b.Accounts[t.ToAccountID]
	if r := usable(debit, credit, t.Currency); r != "" {
		return rejected(r)
	}
	if credit.Balance > math.MaxInt64-amount {
		return rejected(ReasonBalanceOverflow)
	}
	debit.Held -= t.Amount
	t.Status, t.CapturedAmount = TransferCaptured, amount
	return Result{Status: StatusApplied, Postings: referenced(post(debit, credit, amount, t.Currency), t.Reference),
		Changed: []string{debit.ID, credit.ID}, Transfer: t}
}

// release gives a pending hold's whole amount back to available funds:
// hold_not_found, hold_not_pending. A hold past its expiry that the expirer
// has not reached yet is released (the funds come back either way). Frozen
// accounts may release.
func (b *Book) release(cmd Command) Result {
	t, r := b.pendingHold(cmd)
	if r != "" {
		return rejected(r)
	}
	debit := b.Accounts[t.FromAccountID]
	debit.Held -= t.Amount
	t.Status = TransferReleased
	return Result{Status: StatusApplied, Changed: []string{debit.ID}, Transfer: t}
}

// Expire ends a pending hold whose expiry has passed, giving its amount
// back to available funds. ok is false when the hold is not pending or not
// due, so a hold expires once whoever tries.
func (b *Book) Expire(holdID string, now time.Time) (t *Transfer, ok bool) {
	t = b.Transfers[holdID]
	if t == nil || t.Kind != KindHold || t.Status != TransferPending || t.ExpiresAt == nil || t.ExpiresAt.After(now) {
		return nil, false
	}
	b.Accounts[t.FromAccountID].Held -= t.Amount
	t.Status = TransferExpired
	return t, true
}

// reverse gives back all (no amount) or part of a transfer or captured hold:
// transfer_not_found (also when cmd.AccountID is not its debit account),
// reversal_exceeds_transfer (nothing or not that much left), then the
// accounts must be usable, no overflow, and the account that received the
// money must have the funds to return it. A reversal is a correction: it
// does not count against the daily limit.
func (b *Book) reverse(cmd Command) Result {
	t := b.Transfers[cmd.TransferID]
	if t == nil || (t.Kind != KindTransfer && t.Kind != KindHold && t.Kind != KindTransaction) || t.FromAccountID != cmd.AccountID {
		return rejected(ReasonTransferNotFound)
	}
	if t.Kind == KindTransaction {
		return b.reverseTransaction(cmd, t)
	}
	if len(cmd.LegAmounts) > 0 {
		return rejected(ReasonReversalExceedsTransfer) // leg_amounts are for a transaction
	}
	left := t.reversible()
	amount := left
	if cmd.Amount > 0 {
		amount = cmd.Amount
	}
	if left == 0 || amount > left {
		return rejected(ReasonReversalExceedsTransfer)
	}
	debit, credit := b.Accounts[t.ToAccountID], b.Accounts[t.FromAccountID]
	if r := usable(debit, credit, t.Currency); r != "" {
		return rejected(r)
	}
	if credit.Balance > math.MaxInt64-amount || debit.Balance < math.MinInt64+amount {
		return rejected(ReasonBalanceOverflow)
	}
	if debit.Available()-amount < -debit.OverdraftLimit {
		return rejected(ReasonInsufficientFunds)
	}
	t.ReversedAmount += amount
	if t.reversible() == 0 {
		t.Status = TransferReversed
	}
	return Result{Status: StatusApplied, Postings: referenced(post(debit, credit, amount, t.Currency), t.Reference),
		Changed: []string{debit.ID, credit.ID}, Transfer: t}
}

// referenced marks ps with the reference of the transfer they move money
// for.
func referenced(ps []Posting, reference string) []Posting {
	for i := range ps {
		ps[i].Reference = reference
	}
	return ps
}

// notClosed finds account id: account_not_found, or account_closed (a
// closed account stays closed).
func (b *Book) notClosed(id string) (*Account, Reason) {
	a := b.Accounts[id]
	switch {
	case a == nil:
		return nil, ReasonAccountNotFound
	case a.Status == AccountClosed:
		return nil, ReasonAccountClosed
	}
	return a, ""
}

// setStatus freezes, unfreezes or closes an account: account_not_found,
// account_closed (a closed account stays closed), and for close_account
// account_not_empty (a balance or pending holds). Freezing a frozen or
// unfreezing an active account is applied and changes nothing.
func (b *Book) setStatus(cmd Command) Result {
	a, r := b.notClosed(cmd.AccountID)
	if r != "" {
		return rejected(r)
	}
	switch cmd.Type {
	case TypeFreezeAccount:
		a.Status = AccountFrozen
	case TypeUnfreezeAccount:
		a.Status = AccountActive
	case TypeCloseAccount:
		if a.Balance != 0 || a.Held != 0 {
			return rejected(ReasonAccountNotEmpty)
		}
		a.Status = AccountClosed
	}
	return Result{Status: StatusApplied, Changed: []string{a.ID}}
}
