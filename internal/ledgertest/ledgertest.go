// Package ledgertest generates seeded random command sequences for the
// domain's property tests and the pipeline's model check: the same seed
// always gives the same commands.
package ledgertest

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/txpipe/txpipe/domain"
)

// Account is an account the generator may name.
type Account struct {
	ID, Currency string
}

// Generator describes the commands to generate.
type Generator struct {
	Accounts []Account
	// Opens mixes open_account commands into the sequence. Leave it off
	// when the commands run concurrently on several partitions and the
	// accounts are opened beforehand: whether a transfer meets an account
	// opened on another partition at the same moment is a race, not a rule.
	Opens bool
	// Base is the time expiries are drawn around (-20 s … +100 s).
	Base time.Time
	// IDPrefix makes command ids unique per run (8 hex digits).
	IDPrefix string
}

// peer picks another account of a's currency, or a itself when it has none.
func (g Generator) peer(r *rand.Rand, a Account) Account {
	var same []Account
	for _, b := range g.Accounts {
		if b.Currency == a.Currency && b.ID != a.ID {
			same = append(same, b)
		}
	}
	if len(same) == 0 {
		return a
	}
	return same[r.IntN(len(same))]
}

// conditions adds the optional forms of a command, now and then: a
// reference from a small pool (so that some are refused as used), amount
// mode up_to on a larger amount, an expected version that rarely matches,
// and a close that sweeps to account b.
func (g Generator) conditions(r *rand.Rand, cmd *domain.Command, prefix string, n int, b Account) {
	switch cmd.Type {
	case domain.TypeDeposit, domain.TypeWithdraw, domain.TypeTransfer, domain.TypeHold, domain.TypeTransaction:
		if r.IntN(5) == 0 {
			cmd.Reference = fmt.Sprintf("%s ref %d", prefix, r.IntN(n/10+1))
		}
	case domain.TypeCloseAccount:
		if r.IntN(2) == 0 {
			cmd.SweepToAccountID = b.ID
		}
	}
	if (cmd.Type == domain.TypeWithdraw || cmd.Type == domain.TypeTransfer) && r.IntN(8) == 0 {
		cmd.AmountMode, cmd.Amount = domain.AmountUpTo, cmd.Amount*10
	}
	if (cmd.Type == domain.TypeWithdraw || cmd.Type == domain.TypeTransfer || cmd.Type == domain.TypeHold) && r.IntN(10) == 0 {
		v := r.Int64N(12)
		cmd.ExpectedVersion = &v
	}
}

// Commands returns n commands from seed: movements, holds and their
// lifecycle, reversals and status changes, with amounts that often exceed
// what is available so every rejection path is taken.
func (g Generator) Commands(seed uint64, n int) []domain.Command {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	prefix := g.IDPrefix
	if prefix == "" {
		prefix = "00000000"
	}
	var cmds []domain.Command
	type ref struct {
		id, from string
		legs     []int64 // a transaction's amounts
	}
	var refs []ref // transfers and holds issued so far
	pick := func() Account { return g.Accounts[r.IntN(len(g.Accounts))] }
	amount := func() int64 { return 1 + r.Int64N(300) }
	for i := range n {
		cmd := domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-8000-%012d", prefix, i)}
		a, b := pick(), pick()
		k := r.IntN(100)
		if !g.Opens && k < 8 {
			k = 8 + r.IntN(92)
		}
		switch {
		case k < 8:
			cmd.Type, cmd.AccountID, cmd.Currency = domain.TypeOpenAccount, a.ID, a.Currency
			cmd.OverdraftLimit = int64(r.IntN(3)) * 50
			if r.IntN(4) == 0 {
				cmd.DailyDebitLimit = 400
			}
		case k < 25:
			cmd.Type, cmd.AccountID, cmd.Amount, cmd.Currency = domain.TypeDeposit, a.ID, amount(), a.Currency
		case k < 33:
			cmd.Type, cmd.AccountID, cmd.Amount, cmd.Currency = domain.TypeWithdraw, a.ID, amount(), a.Currency
		case k < 55:
			cmd.Type, cmd.FromAccountID, cmd.ToAccountID, cmd.Amount, cmd.Currency = domain.TypeTransfer, a.ID, b.ID, amount(), a.Currency
		case k < 67:
			cmd.Type, cmd.FromAccountID, cmd.ToAccountID, cmd.Amount, cmd.Currency = domain.TypeHold, a.ID, b.ID, amount(), a.Currency
			if r.IntN(3) == 0 {
				exp := g.Base.Add(time.Duration(r.IntN(120)-20) * time.Second).UTC()
				cmd.ExpiresAt = &exp
			}
		case k < 87 && len(refs) > 0:
			ref := refs[r.IntN(len(refs))]
			types := []domain.Type{domain.TypeCapture, domain.TypeRelease, domain.TypeReverse}
			cmd.Type, cmd.AccountID = types[r.IntN(3)], ref.from
			if r.IntN(5) == 0 {
				cmd.AccountID = a.ID // often not the right account: *_not_found
			}
			if cmd.Type == domain.TypeReverse {
				cmd.TransferID = ref.id
				if len(ref.legs) > 0 && r.IntN(2) == 0 {
					// Mostly within each leg, now and then beyond one.
					cmd.LegAmounts = make([]int64, len(ref.legs))
					for j, a := range ref.legs {
						cmd.LegAmounts[j] = r.Int64N(a + 1 + a/(5+r.Int64N(20)))
					}
					if j := r.IntN(len(ref.legs)); cmd.LegAmounts[j] == 0 {
						cmd.LegAmounts[j] = 1
					}
				}
			} else {
				cmd.HoldID = ref.id
			}
			if cmd.Type != domain.TypeRelease && r.IntN(2) == 0 {
				cmd.Amount = 1 + amount()/2
			}
		case k < 87:
			cmd.Type, cmd.AccountID, cmd.Amount, cmd.Currency = domain.TypeDeposit, a.ID, amount(), a.Currency
		default:
			types := []domain.Type{domain.TypeFreezeAccount, domain.TypeUnfreezeAccount, domain.TypeUnfreezeAccount, domain.TypeUnfreezeAccount, domain.TypeCloseAccount}
			cmd.Type, cmd.AccountID = types[r.IntN(len(types))], a.ID
		}
		if r.IntN(10) == 0 {
			// A transaction of 2 to 4 legs, each in its debit account's
			// currency: a payment with its fee, a split, an exchange.
			cmd = domain.Command{CommandID: cmd.CommandID, Type: domain.TypeTransaction}
			for range 2 + r.IntN(3) {
				from, to := pick(), pick()
				if r.IntN(8) > 0 { // mostly a receiver that can take the leg
					to = g.peer(r, from)
				}
				cmd.Legs = append(cmd.Legs, domain.Leg{FromAccountID: from.ID, ToAccountID: to.ID, Amount: amount(), Currency: from.Currency})
			}
		}
		if r.IntN(25) == 0 {
			// A fee plan for a, paid to b (another currency's b is
			// fee_account_invalid), or none.
			cmd = domain.Command{CommandID: cmd.CommandID, Type: domain.TypeSetFeePlan, AccountID: a.ID}
			if r.IntN(3) > 0 {
				cmd.FeePlan = &domain.FeePlan{Bps: r.Int64N(500), Fixed: r.Int64N(5), RevenueAccountID: b.ID}
				if r.IntN(2) == 0 {
					hi := 1 + r.Int64N(20)
					cmd.FeePlan.Max = &hi
				}
			}
		}
		g.conditions(r, &cmd, prefix, n, b)
		switch cmd.Type {
		case domain.TypeTransfer, domain.TypeHold:
			refs = append(refs, ref{id: cmd.CommandID, from: cmd.FromAccountID})
		case domain.TypeTransaction:
			amounts := make([]int64, len(cmd.Legs))
			for j, l := range cmd.Legs {
				amounts[j] = l.Amount
			}
			refs = append(refs, ref{id: cmd.CommandID, from: cmd.Legs[0].FromAccountID, legs: amounts})
		}
		cmds = append(cmds, cmd)
	}
	return cmds
}
