package domain

import (
	"errors"
	"math/big"
	"math/bits"
	"strconv"
	"time"
)

// Daily statements. An account's postings are gathered into periods of one
// UTC day. The period of a day closes at the account's first posting of a
// later day, or, for an account that does not move again, when a worker's
// closer finds the day over: either way once, under the account's row lock,
// with one statement.closed event. Each statement names the versions it
// covers, so that the statements of an account chain: the next one starts
// at the version after, from the balance this one closed at.

// Period is an account's open statement period: its postings since its
// last statement, all of one UTC day.
type Period struct {
	// Day is the UTC day (2006-01-02) of the period's postings; "" when the
	// account has posted nothing since its last statement.
	Day string
	// Opening is the balance before the period's first posting, and
	// FirstVersion that posting's account_version.
	Opening, FirstVersion int64
	// Debits and Credits add up what the period's postings took out and
	// put in, both as positive numbers, and Entries counts them.
	Debits, Credits Sum
	Entries         int64
}

// add counts a posting of amount in the period.
func (p *Period) add(amount int64) {
	if amount < 0 {
		p.Debits.Add(uint64(-amount)) // amount > math.MinInt64: a balance moved by it fit in int64
	} else {
		p.Credits.Add(uint64(amount))
	}
	p.Entries++
}

// Stale reports whether the account's open period missed postings: its
// version moved past what the period counted (a worker of an earlier
// version posted without counting). The caller recounts it from the
// entries before the rules run.
func (a *Account) Stale() bool {
	return a.Period.Day != "" && a.Period.FirstVersion+a.Period.Entries-1 != a.Version
}

// Statement is an account's closed period.
type Statement struct {
	AccountID string
	Currency  string
	Day       string // UTC, 2006-01-02
	// Opening and Closing are the balances before the first posting of the
	// day and after its last.
	Opening, Closing int64
	Debits, Credits  Sum
	// FirstVersion and LastVersion are the account_version of the first
	// and of the last posting of the day; LastDigest is the last one's
	// digest, which anchors the day's chain.
	FirstVersion, LastVersion int64
	LastDigest                string
}

// Entries is the number of postings the statement covers.
func (s Statement) Entries() int64 { return s.LastVersion - s.FirstVersion + 1 }

// DayOf is the UTC day of t, as statements name it.
func DayOf(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// NextDay is the day after day (2006-01-02); "" for "" or a malformed day.
func NextDay(day string) string {
	t, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return ""
	}
	return DayOf(t.AddDate(0, 0, 1))
}

// openPeriodFor is the day of the period a posting at now opens: now's, or
// the day after the account's last closed one when now is not after it. A
// clock behind the one that closed that day would otherwise open a second
// period of a closed day (the workers date such a batch at the next day's
// start, consumers/ledger's raiseClock; this keeps each day's statement
// unique regardless).
func (a *Account) openPeriodFor(now time.Time) string {
	day := DayOf(now)
	if a.ClosedThrough != "" && day <= a.ClosedThrough {
		return NextDay(a.ClosedThrough)
	}
	return day
}

// closePeriod ends the account's open period at its state after version
// last (closing balance, digest) and returns its statement.
func (a *Account) closePeriod(closing, last int64, digest string) Statement {
	s := Statement{AccountID: a.ID, Currency: a.Currency, Day: a.Period.Day,
		Opening: a.Period.Opening, Closing: closing, Debits: a.Period.Debits, Credits: a.Period.Credits,
		FirstVersion: a.Period.FirstVersion, LastVersion: last, LastDigest: digest}
	a.ClosedThrough, a.Period = a.Period.Day, Period{}
	return s
}

// CloseDay closes the account's open period if its day is over at now (a
// UTC day before now's), as a worker's closer does for accounts that did
// not move since, and returns its statement.
func (a *Account) CloseDay(now time.Time) (Statement, bool) {
	if a.Period.Day == "" || a.Period.Day >= DayOf(now) {
		return Statement{}, false
	}
	return a.closePeriod(a.Balance, a.Version, a.Digest), true
}

// Sum is a non-negative total of amounts, exact however many are added: a
// day's debits of one account can exceed an int64 (MaxAmount is 2^53-1),
// so it counts in 128 bits, which 2^64 amounts cannot overflow.
type Sum struct{ hi, lo uint64 }

// Add adds v.
func (s *Sum) Add(v uint64) {
	var carry uint64
	s.lo, carry = bits.Add64(s.lo, v, 0)
	s.hi += carry
}

// AddSum adds o.
func (s *Sum) AddSum(o Sum) {
	var carry uint64
	s.lo, carry = bits.Add64(s.lo, o.lo, 0)
	s.hi += o.hi + carry
}

// Equal reports whether s and o are the same sum.
func (s Sum) Equal(o Sum) bool { return s == o }

// Big is s as a big.Int.
func (s Sum) Big() *big.Int {
	n := new(big.Int).SetUint64(s.hi)
	n.Lsh(n, 64)
	return n.Add(n, new(big.Int).SetUint64(s.lo))
}

// String is s in decimal.
func (s Sum) String() string {
	if s.hi == 0 {
		return strconv.FormatUint(s.lo, 10)
	}
	return s.Big().String()
}

// MarshalJSON writes s as a JSON integer.
func (s Sum) MarshalJSON() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalJSON reads a JSON integer (as MarshalJSON writes it).
func (s *Sum) UnmarshalJSON(b []byte) error {
	v, err := ParseSum(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// errSum is a Sum that is not a decimal integer in [0, 2^128).
var errSum = errors.New("not a decimal integer between 0 and 2^128-1")

// ParseSum reads a Sum written in decimal (as String writes it). Sums
// that fit 64 bits, nearly all, are read without a big.Int: every batch
// reads two per account.
func ParseSum(text string) (Sum, error) {
	if v, err := strconv.ParseUint(text, 10, 64); err == nil {
		return Sum{lo: v}, nil
	}
	n, ok := new(big.Int).SetString(text, 10)
	if !ok || n.Sign() < 0 || n.BitLen() > 128 {
		return Sum{}, errSum
	}
	lo := new(big.Int).And(n, new(big.Int).SetUint64(^uint64(0))).Uint64()
	return Sum{hi: new(big.Int).Rsh(n, 64).Uint64(), lo: lo}, nil
}
