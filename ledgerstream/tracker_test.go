package ledgerstream_test

import (
	"testing"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/ledgerstream"
)

// chain makes n honest postings of account a (amounts 10, 20, …), their
// digests chained as the workers chain them.
func chain(a string, n int) []ledgerstream.Posting {
	var out []ledgerstream.Posting
	prev, bal := "", int64(0)
	for i := 1; i <= n; i++ {
		amt := int64(10 * i)
		bal += amt
		p := domain.Posting{AccountID: a, AccountVersion: int64(i), Currency: "EUR", Amount: amt, BalanceAfter: bal}
		cmd := "0190b1c2-0000-7000-8000-00000000000" + string(rune('0'+i))
		prev = domain.PostingDigest(prev, p, cmd)
		out = append(out, ledgerstream.Posting{PostingData: domain.PostingData{AccountID: a, AccountVersion: p.AccountVersion,
			Currency: "EUR", Amount: amt, BalanceAfter: bal, Digest: prev}, EventID: cmd, CommandID: cmd})
	}
	return out
}

func TestTrackerSaysWhatEachPostingIs(t *testing.T) {
	ps := chain("a", 4)
	altered := ps[2]
	altered.Amount, altered.BalanceAfter = 31, ps[1].BalanceAfter+31
	noDigest := func(p ledgerstream.Posting) ledgerstream.Posting { p.Digest = ""; return p }
	for _, c := range []struct {
		name  string
		feed  []ledgerstream.Posting
		want  []ledgerstream.Verdict
		final int64 // version
	}{
		{"an honest chain", ps, []ledgerstream.Verdict{0, 0, 0, 0}, 4},
		{"a redelivery, then an older copy", []ledgerstream.Posting{ps[0], ps[1], ps[1], ps[0], ps[2]},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.New, ledgerstream.Duplicate, ledgerstream.Duplicate, ledgerstream.New}, 3},
		{"a posting missing", []ledgerstream.Posting{ps[0], ps[2], ps[3]},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.Gap, ledgerstream.New}, 4},
		{"an altered posting, its digest kept", []ledgerstream.Posting{ps[0], ps[1], altered},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.New, ledgerstream.Broken}, 2},
		{"a balance that does not follow", []ledgerstream.Posting{ps[0], func() ledgerstream.Posting { p := ps[1]; p.BalanceAfter++; return p }()},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.Broken}, 1},
		{"a second, different posting at a version", []ledgerstream.Posting{ps[0], ps[1], func() ledgerstream.Posting { p := ps[1]; p.Digest = ps[2].Digest; return p }()},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.New, ledgerstream.Broken}, 2},
		{"postings from before digests carry the chain", []ledgerstream.Posting{noDigest(ps[0]), noDigest(ps[1]), ps[2]},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.New, ledgerstream.New}, 3},
		{"a digest removed after postings that had one", []ledgerstream.Posting{ps[0], noDigest(ps[1])},
			[]ledgerstream.Verdict{ledgerstream.New, ledgerstream.Broken}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := ledgerstream.NewTracker(nil)
			for i, p := range c.feed {
				v, prob := tr.Observe(p)
				if v != c.want[i] || (prob != nil) != (v == ledgerstream.Gap || v == ledgerstream.Broken) {
					t.Errorf("posting %d (version %d) = %v, %v; want %v", i, p.AccountVersion, v, prob, c.want[i])
				}
			}
			if a, _ := tr.Account("a"); a.Version != c.final {
				t.Errorf("account at version %d, want %d", a.Version, c.final)
			}
		})
	}
}

// A consumer that stored the tracker's state resumes from it: the next
// posting chains on, and what it had already seen is a duplicate.
func TestTrackerResumesFromItsState(t *testing.T) {
	ps := chain("a", 3)
	first := ledgerstream.NewTracker(nil)
	first.Observe(ps[0])
	first.Observe(ps[1])
	resumed := ledgerstream.NewTracker(first.State())
	if v, _ := resumed.Observe(ps[1]); v != ledgerstream.Duplicate {
		t.Errorf("the last posting seen, again = %v, want duplicate", v)
	}
	if v, prob := resumed.Observe(ps[2]); v != ledgerstream.New || prob != nil {
		t.Errorf("the next posting after a resume = %v %v, want new", v, prob)
	}
	fresh := ledgerstream.NewTracker(nil)
	if v, prob := fresh.Observe(ps[2]); v != ledgerstream.Gap || prob == nil || prob.String() != "account a: version 3 follows 0: versions 1 to 2 are missing" {
		t.Errorf("version 3 with nothing before = %v %v, want a gap naming versions 1 to 2", v, prob)
	}
}
