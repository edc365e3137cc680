package main

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
)

// history generates the commands of a pipeline that has run for a while and
// decides them with the ledger rules themselves (domain.Book.Apply, as the
// workers do), turning each outcome into the rows a worker writes for it
// (consumers/ledger, Write). It is deterministic for a seed: a test
// regenerates the same commands to check what was stored.
//
// The history: every account of the workload (acct-0 … acct-N-1, EUR) is
// opened and funded with 10^9 cents, as loadgen run --setup does, and so are
// N/10 USD accounts (usd-0 …) with a daily debit limit, a quarter of them
// with an overdraft. The rest are mostly small EUR transfers, like the
// benchmark's own, mixed with USD transfers large enough to meet the daily
// limit, withdrawals, deposits, holds later captured or released (some left
// pending), partial and whole reversals, and transfers refused for lack of
// funds. Commands are spread evenly over the span ending at end.
type history struct {
	spec  preloadSpec
	by    string // the API key id that "submitted" every command
	rng   *rand.Rand
	book  *domain.Book
	total int
	n     int // commands generated so far
	usd   int // USD accounts
	start time.Time
	step  time.Duration

	offsets [commandPartitions]int64
	created map[string]time.Time // accounts: when opened
	updated map[string]time.Time // accounts: last changed
	// Transfers of the current chunk: rows are written with their final
	// state when the chunk ends, and never change after it (holds and
	// reversals name only transfers of their own chunk).
	transfers map[string]*ledger.HistoryTransfer
	pending   []string // holds of this chunk still pending
	recent    []string // transfers of this chunk that a reversal may name
}

// commandPartitions is how many partitions the commands topic had: the
// stored source_partition of each command is the one ingest's producer
// (kafka-go's murmur2 balancer on the debit account) would have chosen.
const commandPartitions = 12

// preloadSpec says what the preload holds.
type preloadSpec struct {
	commands int // processed commands in all
	accounts int // EUR accounts of the workload
	seed     uint64
	end      time.Time     // the last command's time
	span     time.Duration // the history's length
	// chunk is how many commands go in one transaction (default
	// preloadChunk). Holds and reversals name transfers of their own chunk.
	chunk int
}

func (s preloadSpec) chunkSize() int {
	if s.chunk > 0 {
		return s.chunk
	}
	return preloadChunk
}

func (s preloadSpec) usdAccounts() int { return max(1, s.accounts/10) }

// minCommands is the fewest commands a spec needs: opening and funding
// every account.
func (s preloadSpec) minCommands() int { return 2 * (s.accounts + s.usdAccounts()) }

func newHistory(spec preloadSpec, by string) *history {
	total := max(spec.commands, spec.minCommands())
	h := &history{spec: spec, by: by, rng: rand.New(rand.NewPCG(spec.seed, 11)), book: domain.NewBook(), total: total,
		usd: spec.usdAccounts(), created: map[string]time.Time{}, updated: map[string]time.Time{}, transfers: map[string]*ledger.HistoryTransfer{}}
	h.start = spec.end.Add(-spec.span)
	h.step = spec.span / time.Duration(total)
	return h
}

func usdAccountID(i int) string { return fmt.Sprintf("usd-%d", i) }

// done reports whether every command has been generated.
func (h *history) done() bool { return h.n >= h.total }

// next returns the next command and the time it is decided at.
func (h *history) next() (domain.Command, time.Time) {
	at := h.start.Add(time.Duration(h.n) * h.step).UTC().Truncate(time.Microsecond)
	id := uuidAt(at, h.rng)
	i := h.n
	h.n++
	eur, usd := h.spec.accounts, h.usd
	switch {
	case i < 2*eur:
		a := accountID(i / 2)
		if i%2 == 0 {
			return domain.Command{CommandID: id, Type: domain.TypeOpenAccount, AccountID: a, Currency: "EUR"}, at
		}
		return domain.Command{CommandID: id, Type: domain.TypeDeposit, AccountID: a, Amount: 1000000000, Currency: "EUR"}, at
	case i < 2*eur+2*usd:
		j := (i - 2*eur) / 2
		a := usdAccountID(j)
		if i%2 == 0 {
			c := domain.Command{CommandID: id, Type: domain.TypeOpenAccount, AccountID: a, Currency: "USD", DailyDebitLimit: 500000}
			if j%4 == 0 {
				c.OverdraftLimit = 100000
			}
			return c, at
		}
		return domain.Command{CommandID: id, Type: domain.TypeDeposit, AccountID: a, Amount: 5000000, Currency: "USD"}, at
	}
	pair := func(n int, name func(int) string) (string, string) {
		a := h.rng.IntN(n)
		b := h.rng.IntN(n - 1)
		if b >= a {
			b++
		}
		return name(a), name(b)
	}
	eurAcct := func() string { return accountID(h.rng.IntN(eur)) }
	r := h.rng.IntN(100)
	switch {
	case r < 4 && usd > 1:
		from, to := pair(usd, usdAccountID)
		return domain.Command{CommandID: id, Type: domain.TypeTransfer, FromAccountID: from, ToAccountID: to,
			Amount: 1 + h.rng.Int64N(200000), Currency: "USD"}, at
	case r < 6:
		return domain.Command{CommandID: id, Type: domain.TypeWithdraw, AccountID: eurAcct(), Amount: 1 + h.rng.Int64N(1000), Currency: "EUR"}, at
	case r < 8:
		return domain.Command{CommandID: id, Type: domain.TypeDeposit, AccountID: eurAcct(), Amount: 1 + h.rng.Int64N(1000), Currency: "EUR"}, at
	case r < 10 && eur > 1:
		from, to := pair(eur, accountID)
		return domain.Command{CommandID: id, Type: domain.TypeHold, FromAccountID: from, ToAccountID: to,
			Amount: 1 + h.rng.Int64N(100), Currency: "EUR"}, at
	case r < 12 && len(h.pending) > 0:
		k := h.rng.IntN(len(h.pending))
		hold := h.transfers[h.pending[k]]
		h.pending[k] = h.pending[len(h.pending)-1]
		h.pending = h.pending[:len(h.pending)-1]
		c := domain.Command{CommandID: id, Type: domain.TypeRelease, AccountID: hold.From, HoldID: hold.ID}
		if h.rng.IntN(3) > 0 {
			c.Type = domain.TypeCapture
			if h.rng.IntN(2) == 0 {
				c.Amount = 1 + h.rng.Int64N(hold.Amount)
			}
		}
		return c, at
	case r < 13 && len(h.recent) > 0:
		t := h.transfers[h.recent[h.rng.IntN(len(h.recent))]]
		c := domain.Command{CommandID: id, Type: domain.TypeReverse, AccountID: t.From, TransferID: t.ID}
		if h.rng.IntN(2) == 0 {
			c.Amount = 1 + h.rng.Int64N(t.Amount) // may exceed what is left: reversal_exceeds_transfer
		}
		return c, at
	case r < 14 && eur > 1:
		from, to := pair(eur, accountID)
		return domain.Command{CommandID: id, Type: domain.TypeTransfer, FromAccountID: from, ToAccountID: to,
			Amount: 5000000000, Currency: "EUR"}, at // more than any account holds: insufficient_funds
	case r < 15 && eur > 1:
		// A two-leg transaction (a payment and its commission).
		from, to := pair(eur, accountID)
		_, fee := pair(eur, accountID)
		return domain.Command{CommandID: id, Type: domain.TypeTransaction, Legs: []domain.Leg{
			{FromAccountID: from, ToAccountID: to, Amount: 1 + h.rng.Int64N(100), Currency: "EUR"},
			{FromAccountID: from, ToAccountID: fee, Amount: 1 + h.rng.Int64N(5), Currency: "EUR"}}}, at
	}
	if eur < 2 {
		return domain.Command{CommandID: id, Type: domain.TypeDeposit, AccountID: eurAcct(), Amount: 1, Currency: "EUR"}, at
	}
	from, to := pair(eur, accountID)
	return domain.Command{CommandID: id, Type: domain.TypeTransfer, FromAccountID: from, ToAccountID: to,
		Amount: 1 + h.rng.Int64N(100), Currency: "EUR"}, at
}

// uuidAt is a version 7 UUID for time t, its random bits from r.
func uuidAt(t time.Time, r *rand.Rand) string {
	var b [16]byte
	ms := uint64(t.UnixMilli())
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	lo, hi := r.Uint64(), r.Uint64()
	for i := range 2 {
		b[6+i] = byte(lo >> (8 * i))
	}
	for i := range 8 {
		b[8+i] = byte(hi >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x70 // version 7
	b[8] = b[8]&0x3f | 0x80 // variant 10
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// chunk decides the next n commands (fewer at the end).
func (h *history) chunk(n int) *ledger.History {
	c := &ledger.History{}
	for range n {
		if h.done() {
			break
		}
		cmd, at := h.next()
		h.decide(c, cmd, at)
	}
	// The accounts opened in this chunk as they stand now: the next chunk,
	// decided while this one is written, changes the book's.
	for i := range c.Accounts {
		a := *c.Accounts[i].Account
		c.Accounts[i].Account = &a
	}
	for _, t := range h.transfers {
		c.Transfers = append(c.Transfers, t)
	}
	clear(h.transfers)
	clear(h.book.Transfers)
	h.pending, h.recent = h.pending[:0], h.recent[:0]
	return c
}

// decide applies cmd at time at, as a worker's batch does: the external
// account of a deposit's or withdrawal's currency is created when first
// needed, the rules decide, and the outcome becomes rows.
func (h *history) decide(c *ledger.History, cmd domain.Command, at time.Time) {
	if cmd.Type == domain.TypeDeposit || cmd.Type == domain.TypeWithdraw {
		ext := domain.ExternalAccountID(cmd.Currency)
		if h.book.Accounts[ext] == nil {
			h.book.Accounts[ext] = domain.NewExternalAccount(cmd.Currency)
			h.created[ext], h.updated[ext] = at, at
			c.Accounts = append(c.Accounts, ledger.HistoryAccount{Account: h.book.Accounts[ext], Created: at})
		}
	}
	key := cmd.DebitAccount()
	part := kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(key)}, partitionList...)
	offset := h.offsets[part]
	h.offsets[part]++
	accepted := at.Add(-time.Duration(1+h.rng.IntN(20)) * time.Millisecond).Truncate(time.Millisecond)
	res := h.book.Apply(cmd, at)
	c.Decisions = append(c.Decisions, ledger.HistoryDecision{ID: cmd.CommandID, Type: string(cmd.Type), Status: string(res.Status),
		Reason: string(res.Reason), Debit: key, Fingerprint: cmd.Fingerprint(), Accepted: accepted, At: at, Partition: part, Offset: offset})
	if res.Opened != nil {
		h.created[res.Opened.ID], h.updated[res.Opened.ID] = at, at
		c.Accounts = append(c.Accounts, ledger.HistoryAccount{Account: res.Opened, Created: at})
	}
	for _, id := range res.Changed {
		h.updated[id] = at
	}
	if t := res.Transfer; t != nil {
		row := h.transfers[t.ID]
		if row == nil {
			row = &ledger.HistoryTransfer{ID: t.ID, Kind: string(t.Kind), From: t.FromAccountID, To: t.ToAccountID, Currency: t.Currency,
				Amount: t.Amount, Created: at, Legs: slices.Clone(t.Legs)}
			h.transfers[t.ID] = row
			switch t.Kind {
			case domain.KindHold:
				h.pending = append(h.pending, t.ID)
			case domain.KindTransfer:
				h.recent = append(h.recent, t.ID)
			}
		}
		row.Status, row.Captured, row.Reversed, row.Updated = string(t.Status), t.CapturedAmount, t.ReversedAmount, at
	}
	for _, p := range res.Postings {
		c.Entries = append(c.Entries, ledger.HistoryEntry{Account: p.AccountID, CommandID: cmd.CommandID, CommandType: string(cmd.Type),
			Currency: p.Currency, Version: p.AccountVersion, Amount: p.Amount, BalanceAfter: p.BalanceAfter, At: at, Digest: p.Digest})
	}
}

var partitionList = func() []int {
	ps := make([]int, commandPartitions)
	for i := range ps {
		ps[i] = i
	}
	return ps
}()
