package domain

import (
	"encoding/json"
	"math"
	"time"
)

// Status is the outcome of a processed command.
type Status string

// Outcome statuses.
const (
	StatusApplied  Status = "applied"
	StatusRejected Status = "rejected"
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
	// ReasonNotSupported rejects a well-formed command whose type this
	// version of the workers does not apply yet.
	ReasonNotSupported Reason = "command_not_supported"
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
	Version  int64
	Metadata json.RawMessage
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
}

// Result is the outcome of applying one command.
type Result struct {
	Status   Status
	Reason   Reason // set when Status is StatusRejected
	Postings []Posting
	// Opened is the account an applied open_account created.
	Opened *Account
}

func rejected(r Reason) Result { return Result{Status: StatusRejected, Reason: r} }

// Book is the working set of accounts a batch of commands may touch, keyed by
// account id. The caller loads (and locks) the accounts the commands name;
// an id missing from the Book does not exist. Apply changes the Book only when
// a command is applied, so a rejection never leaves a trace.
type Book map[string]*Account

// AccountIDs lists the accounts cmd reads or changes, including the external
// account of its currency, so the caller knows what to load and lock.
func AccountIDs(cmd Command) []string {
	switch cmd.Type {
	case TypeDeposit, TypeWithdraw:
		return []string{cmd.AccountID, ExternalAccountID(cmd.Currency)}
	case TypeTransfer, TypeHold:
		return []string{cmd.FromAccountID, cmd.ToAccountID}
	default:
		return []string{cmd.AccountID}
	}
}

// Apply runs the ledger rules for cmd against the Book at time now and
// returns the outcome; on success the Book holds the new account states.
// Idempotency (a command_id seen before) is the caller's check: it runs before
// Apply so that a retry always gets the first answer.
func (b Book) Apply(cmd Command, now time.Time) Result {
	switch cmd.Type {
	case TypeOpenAccount:
		return b.openAccount(cmd)
	case TypeDeposit:
		return b.move(cmd, b[ExternalAccountID(cmd.Currency)], b[cmd.AccountID], now)
	case TypeWithdraw:
		return b.move(cmd, b[cmd.AccountID], b[ExternalAccountID(cmd.Currency)], now)
	case TypeTransfer:
		if cmd.FromAccountID == cmd.ToAccountID {
			return rejected(ReasonSameAccount)
		}
		return b.move(cmd, b[cmd.FromAccountID], b[cmd.ToAccountID], now)
	default:
		return rejected(ReasonNotSupported)
	}
}

func (b Book) openAccount(cmd Command) Result {
	if _, ok := b[cmd.AccountID]; ok {
		return rejected(ReasonAccountExists)
	}
	a := &Account{
		ID:              cmd.AccountID,
		Currency:        cmd.Currency,
		Status:          AccountActive,
		OverdraftLimit:  cmd.OverdraftLimit,
		DailyDebitLimit: cmd.DailyDebitLimit,
		Metadata:        cmd.Metadata,
	}
	b[a.ID] = a
	return Result{Status: StatusApplied, Opened: a}
}

// move takes cmd.Amount from debit and gives it to credit. Checks run in this
// order, the first failure winning: both accounts exist (debit first), neither
// is closed, neither is frozen, both hold the command's currency, no balance
// overflows, the debit account's available funds cover the amount down to its
// overdraft limit, and the debit stays within its daily debit limit.
func (b Book) move(cmd Command, debit, credit *Account, now time.Time) Result {
	amount := cmd.Amount
	switch {
	case debit == nil || credit == nil:
		return rejected(ReasonAccountNotFound)
	case debit.Status == AccountClosed || credit.Status == AccountClosed:
		return rejected(ReasonAccountClosed)
	case debit.Status == AccountFrozen || credit.Status == AccountFrozen:
		return rejected(ReasonAccountFrozen)
	case debit.Currency != cmd.Currency || credit.Currency != cmd.Currency:
		return rejected(ReasonCurrencyMismatch)
	case debit.Balance < math.MinInt64+amount || credit.Balance > math.MaxInt64-amount:
		return rejected(ReasonBalanceOverflow)
	}
	day := now.UTC().Format(time.DateOnly)
	debited := int64(0)
	if !debit.External {
		if debit.Available()-amount < -debit.OverdraftLimit {
			return rejected(ReasonInsufficientFunds)
		}
		if debit.DailyDebitDay == day {
			debited = debit.DailyDebited
		}
		if debit.DailyDebitLimit > 0 && debited+amount > debit.DailyDebitLimit {
			return rejected(ReasonDailyLimitExceeded)
		}
	}
	debit.Balance -= amount
	debit.Version++
	if !debit.External {
		debit.DailyDebitDay, debit.DailyDebited = day, debited+amount
	}
	credit.Balance += amount
	credit.Version++
	return Result{Status: StatusApplied, Postings: []Posting{
		{AccountID: debit.ID, Currency: cmd.Currency, Amount: -amount, BalanceAfter: debit.Balance, AccountVersion: debit.Version},
		{AccountID: credit.ID, Currency: cmd.Currency, Amount: amount, BalanceAfter: credit.Balance, AccountVersion: credit.Version},
	}}
}
