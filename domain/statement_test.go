package domain_test

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/txpipe/txpipe/domain"
)

func TestSumCountsBeyondInt64(t *testing.T) {
	var s domain.Sum
	want := new(big.Int)
	for range 3000 { // 3 000 × (2^53-1) > 2^63
		s.Add(domain.MaxAmount)
		want.Add(want, big.NewInt(domain.MaxAmount))
	}
	s.Add(1<<64 - 1) // carries
	want.Add(want, new(big.Int).SetUint64(1<<64-1))
	if s.String() != want.String() || s.Big().Cmp(want) != 0 {
		t.Fatalf("sum = %s, want %s", s, want)
	}
	var twice domain.Sum
	twice.AddSum(s)
	twice.AddSum(s) // carries from the low word
	if want2 := new(big.Int).Add(want, want); twice.Big().Cmp(want2) != 0 {
		t.Fatalf("sum added to itself = %s, want %s", twice, want2)
	}
	back, err := domain.ParseSum(s.String())
	if err != nil || back != s {
		t.Errorf("ParseSum(%s) = %v, %v; want it back", s, back, err)
	}
	if js, _ := s.MarshalJSON(); string(js) != want.String() {
		t.Errorf("JSON %s, want the integer %s", js, want)
	}
	for _, bad := range []string{"", "-1", "1.5", "1e3", "340282366920938463463374607431768211456"} { // the last is 2^128
		if _, err := domain.ParseSum(bad); err == nil {
			t.Errorf("ParseSum(%q) accepted", bad)
		}
	}
	if s, err := domain.ParseSum("340282366920938463463374607431768211455"); err != nil || s.String() != "340282366920938463463374607431768211455" {
		t.Errorf("ParseSum(2^128-1) = %v, %v", s, err)
	}
}

// A random sequence of commands spread over four days, with a closer
// passing at random moments (as workers' closers do) and at the end: every
// posting is in exactly one statement, that of its day; each account's
// statements chain (versions, balances, digests); and every statement adds
// up.
func TestStatementsCoverEachPostingOnceInItsDay(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 7))
			cmds := generator.Commands(seed, 400)
			b := domain.NewBook()
			b.Accounts[domain.ExternalAccountID("EUR")] = domain.NewExternalAccount("EUR")
			b.Accounts[domain.ExternalAccountID("USD")] = domain.NewExternalAccount("USD")
			type dated struct {
				p   domain.Posting
				day string
			}
			var postings []dated
			var statements []domain.Statement
			closeAll := func(at time.Time) {
				for _, a := range b.Accounts {
					if s, ok := a.CloseDay(at); ok {
						statements = append(statements, s)
					}
				}
			}
			at := now
			for _, c := range cmds {
				at = at.Add(time.Duration(rnd.IntN(30)) * time.Minute) // 400 × 15 min on average: about four days
				if rnd.IntN(40) == 0 {
					closeAll(at)
				}
				res := b.Apply(c, at)
				statements = append(statements, res.Statements...)
				for id, a := range b.Accounts {
					if a.Stale() {
						t.Fatalf("after %s, account %s's period %+v does not count its postings to version %d", c.Type, id, a.Period, a.Version)
					}
				}
				for _, p := range res.Postings {
					postings = append(postings, dated{p, domain.DayOf(at)})
				}
			}
			closeAll(at.AddDate(0, 0, 1))

			covered := make(map[string]domain.Statement) // account/day → its statement
			for _, s := range statements {
				k := s.AccountID + "/" + s.Day
				if _, dup := covered[k]; dup {
					t.Fatalf("two statements of %s", k)
				}
				covered[k] = s
				if got := new(big.Int).Sub(new(big.Int).Add(big.NewInt(s.Opening), s.Credits.Big()), s.Debits.Big()); got.Cmp(big.NewInt(s.Closing)) != 0 {
					t.Errorf("%s: opening %d + credits %s - debits %s = %s, closing says %d", k, s.Opening, s.Credits, s.Debits, got, s.Closing)
				}
			}
			counted := make(map[string]int64)
			var last = make(map[string]domain.Posting) // account → its last posting so far
			for _, d := range postings {
				k := d.p.AccountID + "/" + d.day
				s, ok := covered[k]
				switch {
				case !ok:
					t.Fatalf("posting %s v%d of %s is in no statement", d.p.AccountID, d.p.AccountVersion, d.day)
				case d.p.AccountVersion < s.FirstVersion || d.p.AccountVersion > s.LastVersion:
					t.Errorf("posting %s v%d of %s outside its statement's versions %d–%d", d.p.AccountID, d.p.AccountVersion, d.day, s.FirstVersion, s.LastVersion)
				case d.p.AccountVersion == s.FirstVersion && d.p.BalanceAfter-d.p.Amount != s.Opening:
					t.Errorf("%s: opening %d, but the day's first posting starts from %d", k, s.Opening, d.p.BalanceAfter-d.p.Amount)
				case d.p.AccountVersion == s.LastVersion && (d.p.BalanceAfter != s.Closing || d.p.Digest != s.LastDigest):
					t.Errorf("%s: closing %d digest %s, but the day's last posting has %d %s", k, s.Closing, s.LastDigest, d.p.BalanceAfter, d.p.Digest)
				}
				counted[k]++
				last[d.p.AccountID] = d.p
			}
			for k, s := range covered {
				if counted[k] != s.Entries() {
					t.Errorf("%s: %d entries, %d postings that day", k, s.Entries(), counted[k])
				}
			}
			if len(covered) < 10 || len(covered) > len(postings) {
				t.Errorf("%d statements for %d postings: the sequence does not span days", len(covered), len(postings))
			}
			for id, a := range b.Accounts {
				if a.Period.Day != "" {
					t.Errorf("account %s still has an open period of %s after the last closer", id, a.Period.Day)
				}
				if p, moved := last[id]; moved && covered[id+"/"+a.ClosedThrough].LastVersion != p.AccountVersion {
					t.Errorf("account %s: its last statement (%s) ends before its last posting v%d", id, a.ClosedThrough, p.AccountVersion)
				}
			}
		})
	}
}

// A posting whose clock is not after the account's last closed day (a
// worker's clock behind the closer's; the workers retry such a batch) opens
// the period of the day after, never a second statement of a closed day.
func TestPostingBehindAClosedDayOpensTheNextDay(t *testing.T) {
	b := domain.NewBook()
	b.Accounts[domain.ExternalAccountID("EUR")] = domain.NewExternalAccount("EUR")
	b.Accounts["a"] = &domain.Account{ID: "a", Currency: "EUR", Status: domain.AccountActive}
	deposit := func(id string, at time.Time) {
		t.Helper()
		if res := b.Apply(domain.Command{CommandID: id, Type: domain.TypeDeposit, AccountID: "a", Amount: 5, Currency: "EUR"}, at); res.Status != domain.StatusApplied {
			t.Fatalf("deposit: %s %s", res.Status, res.Reason)
		}
	}
	day1 := time.Date(2026, 12, 1, 23, 59, 0, 0, time.UTC)
	deposit("0190b1c2-0000-7000-8000-000000000001", day1)
	s, ok := b.Accounts["a"].CloseDay(day1.Add(2 * time.Minute))
	if !ok || s.Day != "2026-12-01" || s.Closing != 5 || s.Entries() != 1 {
		t.Fatalf("CloseDay after midnight = %+v, %v; want the statement of 2026-12-01", s, ok)
	}
	if _, again := b.Accounts["a"].CloseDay(day1.Add(time.Hour)); again {
		t.Error("a closed day closed twice")
	}
	deposit("0190b1c2-0000-7000-8000-000000000002", day1) // a clock behind the closer's
	if got := b.Accounts["a"].Period; got.Day != "2026-12-02" || got.Opening != 5 || got.FirstVersion != 2 {
		t.Errorf("period after a late posting = %+v, want one of 2026-12-02 from balance 5, version 2", got)
	}
}

func TestSumJSONRoundTrip(t *testing.T) {
	var s domain.Sum
	s.Add(1<<64 - 1)
	s.Add(2)
	js, _ := s.MarshalJSON()
	var back domain.Sum
	if err := back.UnmarshalJSON(js); err != nil || back != s || string(js) != "18446744073709551617" {
		t.Errorf("%s back = %v, %v; want %v", js, back, err, s)
	}
	if err := back.UnmarshalJSON([]byte(`"5"`)); err == nil {
		t.Error("a JSON string read as a sum")
	}
}
