// Package ledgerstream is the library downstream services use to consume
// txpipe's postings topic (ledger.postings.v1) without re-implementing
// what every consumer needs: drop redeliveries, notice a missing posting,
// check each account's digest chain, and keep every balance.
//
// Tracker is the pure part: feed it posting events in topic order and it
// says what each one is. Run is the Kafka part: a consumer group that
// feeds a Tracker and calls back once per new posting, committing offsets
// only after the callback returned.
package ledgerstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/txpipe/txpipe/domain"
)

// Posting is one posting as the topic carries it.
type Posting struct {
	domain.PostingData
	EventID, CommandID string
	OccurredAt         time.Time
}

// Account is what the postings so far say of an account.
type Account struct {
	Currency string
	// Version and Balance are those of its latest posting.
	Version, Balance int64
	// Digest is its latest posting's, the link the next one must chain to
	// ("" while unknown: before the first posting, or after a gap).
	Digest string
	// Digested: a posting with a digest was seen, so every later one must
	// carry one (only postings published before digests existed lack it).
	Digested bool
}

// Verdict says what a posting is to the accounts tracked so far.
type Verdict int

const (
	// New is the account's next posting, chained to the one before.
	New Verdict = iota
	// Duplicate is a posting already seen (a relay published it again):
	// skip it.
	Duplicate
	// Gap is a posting past the next version: some are missing (Problem
	// says which). It is applied, so that the account goes on, but its
	// chain cannot be checked across the gap.
	Gap
	// Broken is a posting whose digest does not chain to the one before,
	// or that differs from the posting already seen at its version: the
	// copy was altered. It is not applied.
	Broken
)

func (v Verdict) String() string {
	return [...]string{"new", "duplicate", "gap", "broken"}[v]
}

// Problem is a gap or a broken link, named by account and versions.
type Problem struct {
	Verdict Verdict
	Account string
	// Have is the version tracked before the posting; Got the posting's.
	Have, Got int64
	Detail    string
}

func (p Problem) String() string {
	switch p.Verdict {
	case Gap:
		return fmt.Sprintf("account %s: version %d follows %d: versions %d to %d are missing", p.Account, p.Got, p.Have, p.Have+1, p.Got-1)
	default:
		return fmt.Sprintf("account %s breaks at version %d: %s", p.Account, p.Got, p.Detail)
	}
}

// Tracker follows accounts through their postings. The zero value is not
// usable; make one with NewTracker. It is not safe for concurrent use.
type Tracker struct {
	accounts map[string]*Account
}

// NewTracker starts from state (nil: every account at version 0), for a
// consumer that resumes where its own store left off.
func NewTracker(state map[string]Account) *Tracker {
	t := &Tracker{accounts: map[string]*Account{}}
	for id, a := range state {
		t.accounts[id] = &a
	}
	return t
}

// State is a copy of what the tracker holds, to store beside what the
// consumer made of the postings.
func (t *Tracker) State() map[string]Account {
	out := make(map[string]Account, len(t.accounts))
	for id, a := range t.accounts {
		out[id] = *a
	}
	return out
}

// Accounts are the ids of the accounts seen, sorted.
func (t *Tracker) Accounts() []string { return slices.Sorted(maps.Keys(t.accounts)) }

// Account is account id as tracked, and whether it was seen.
func (t *Tracker) Account(id string) (Account, bool) {
	a, ok := t.accounts[id]
	if !ok {
		return Account{}, false
	}
	return *a, true
}

// ErrNotAPosting is Decode's answer for an event of another type: a
// consumer skips it (the topic may carry new types one day).
var ErrNotAPosting = errors.New("an event that is not a posting")

// PostingType is the type of every posting event.
const PostingType = "posting.created"

// Decode reads a posting event.
func Decode(value []byte) (Posting, error) {
	var ev domain.Event
	if err := json.Unmarshal(value, &ev); err != nil {
		return Posting{}, fmt.Errorf("not an event: %w", err)
	}
	if ev.Type != PostingType {
		return Posting{}, fmt.Errorf("event %s of type %q: %w", ev.EventID, ev.Type, ErrNotAPosting)
	}
	var p Posting
	if err := json.Unmarshal(ev.Data, &p.PostingData); err != nil || p.AccountID == "" || p.AccountVersion < 1 {
		return Posting{}, fmt.Errorf("event %s: its data is not a posting", ev.EventID)
	}
	p.EventID, p.CommandID, p.OccurredAt = ev.EventID, ev.CommandID, ev.OccurredAt
	return p, nil
}

// Observe takes the next posting in topic order and says what it is. New
// and Gap postings are applied to their account; a Problem comes with Gap
// and Broken. A posting without a digest (published before digests
// existed) carries the chain on what its fields give, as the migration
// that added them chained the entries.
func (t *Tracker) Observe(p Posting) (Verdict, *Problem) {
	a := t.accounts[p.AccountID]
	if a == nil {
		a = &Account{Currency: p.Currency}
		t.accounts[p.AccountID] = a
	}
	broken := func(detail string, args ...any) (Verdict, *Problem) {
		return Broken, &Problem{Verdict: Broken, Account: p.AccountID, Have: a.Version, Got: p.AccountVersion, Detail: fmt.Sprintf(detail, args...)}
	}
	switch v := p.AccountVersion; {
	case v < a.Version:
		return Duplicate, nil // an older copy, published again
	case v == a.Version:
		if p.Digest != "" && a.Digest != "" && p.Digest != a.Digest {
			return broken("a second, different posting at this version (digest %s, the first's %s)", p.Digest, a.Digest)
		}
		return Duplicate, nil
	case v > a.Version+1:
		prob := &Problem{Verdict: Gap, Account: p.AccountID, Have: a.Version, Got: v}
		a.Version, a.Balance, a.Digest = v, p.BalanceAfter, p.Digest // the chain resumes from what it names
		a.Digested = a.Digested || p.Digest != ""
		return Gap, prob
	}
	if p.BalanceAfter != a.Balance+p.Amount {
		return broken("balance_after %d, but the balance was %d and the amount is %d", p.BalanceAfter, a.Balance, p.Amount)
	}
	if p.Digest == "" && a.Digested {
		return broken("no digest, after postings that had one")
	}
	known := a.Version == 0 || a.Digest != "" // the link this one must chain to
	want := ""
	if known {
		want = domain.PostingDigest(a.Digest, domain.Posting{AccountID: p.AccountID, AccountVersion: p.AccountVersion,
			Currency: p.Currency, Amount: p.Amount, BalanceAfter: p.BalanceAfter}, p.CommandID)
		if p.Digest != "" && p.Digest != want {
			return broken("digest %s, its fields and the link before give %s", p.Digest, want)
		}
	}
	if p.Digest != "" {
		want, a.Digested = p.Digest, true
	}
	a.Version, a.Balance, a.Digest = p.AccountVersion, p.BalanceAfter, want
	return New, nil
}

// undo puts account id back as it stood before a posting whose delivery
// failed, so that the posting is new again when it comes back.
func (t *Tracker) undo(id string, before Account, existed bool) {
	if !existed {
		delete(t.accounts, id)
		return
	}
	*t.accounts[id] = before
}
