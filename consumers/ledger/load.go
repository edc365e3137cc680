package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/txpipe/txpipe/domain"
)

// openSQL is a batch's first statement after BEGIN. It reads the clock of
// the batch's decisions and sets, for the transaction:
//   - idle_in_transaction_session_timeout: how long the transaction may
//     sit idle between its statements: above the worker's attempt timeout,
//     far above the time one batch takes to decide. A worker paused between
//     Load and Write (SIGSTOP, a frozen VM) would otherwise hold its offset
//     and account locks, stalling every other partition that touches those
//     accounts, for as long as the pause: PostgreSQL ends such a session;
//   - plan_cache_mode: every statement of a batch finds its rows by key
//     (arrays of ids, joined to unnest or matched with = ANY), whose one
//     right plan is an index lookup whatever the ids, so each uses the plan
//     prepared once per connection. Left to choose, PostgreSQL planned the
//     small batches of a low rate again at every call (docs/benchmarks.md,
//     "Planning");
//   - lock_timeout: the worker's attempt timeout (20 s). Past it the
//     worker has closed its connection and retries on another, but
//     PostgreSQL does not notice a closed client while its backend waits
//     for a lock: behind a commit that waits for a synchronous standby
//     that is down, each retry would leave one more backend waiting, until
//     max_connections ran out. With it, the waiting backend gives up when
//     its client did, and only the live attempt waits.
const openSQL = `SELECT now(), set_config('idle_in_transaction_session_timeout', '30s', true),
	set_config('plan_cache_mode', 'force_generic_plan', true), set_config('lock_timeout', '20s', true)`

// LoadRequest is what a batch of commands needs read and locked.
type LoadRequest struct {
	// Expected holds, for each partition the batch takes records from, the
	// stored offset it must find.
	Expected Positions
	// CommandIDs are the ids whose stored decisions the batch needs.
	CommandIDs []string
	// Accounts and Transfers are the ids the commands name.
	Accounts, Transfers []string
	// Currencies lists the currencies whose external account must exist
	// (deposits and withdrawals move money through it).
	Currencies []string
	// References are the references the commands carry: those already
	// held by a transfer are loaded into the book.
	References []string
	// Payers are the accounts that send money (a transfer's, a
	// withdrawal's, a transaction leg's debit): the revenue accounts of
	// their fee plans are locked too.
	Payers []string
}

// ErrPlanMoved means a payer's fee plan changed while the batch waited for
// its lock, to a revenue account the batch did not lock. Nothing was
// committed; the batch is retried (the next attempt locks the new one).
var ErrPlanMoved = errors.New("a fee plan changed while the batch waited for its account: retry")

// State is what a batch's decisions read: the database's clock, the stored
// decisions of its command ids, and the accounts and transfers it touches,
// locked until Write commits.
type State struct {
	Now time.Time
	// ClockRaised says Now was moved forward from the batch's clock to
	// the day an account of the batch had already begun (raiseClock).
	ClockRaised bool
	Priors      map[string]Prior
	Book        *domain.Book
	// Loaded marks the transfers read from the database: Write updates
	// those and inserts the others.
	Loaded map[string]bool
	// Locked marks the accounts the lock statement returned, so held FOR
	// UPDATE until the batch commits: with those the batch opens, the
	// only accounts its rows may name (Writes.Locked).
	Locked map[string]bool
}

// Prior is the decision stored for a command_id.
type Prior struct {
	Fingerprint []byte
	Status      domain.Status
	Reason      domain.Reason
}

// Load begins the batch's transaction on tx and reads its State: it checks
// the fence (ErrFenced unless every partition of req.Expected stands there
// and is not halted), reads the stored decisions, and loads and locks what
// the batch touches in the package's lock order. A batch that names no
// transfer does it all in one round trip; otherwise the accounts of the
// named transfers are known only once those are read, so the account locks
// take a second. The caller ends the transaction with Write, or rolls it
// back (internal/pgtx).
func (s Source) Load(ctx context.Context, tx Sender, req LoadRequest) (*State, error) {
	st := &State{Book: domain.NewBook(), Loaded: make(map[string]bool), Priors: make(map[string]Prior), Locked: make(map[string]bool)}
	transfers, currencies := sortedUnique(req.Transfers), sortedUnique(req.Currencies)
	accounts := req.Accounts
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED") // see internal/pgtx; whatever the server's default_transaction_isolation
	// One clock decides: every worker takes the time of its decisions (daily
	// limits, expiries, processed_at) from PostgreSQL, not from its host.
	b.Queue(openSQL).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(&st.Now, nil, nil, nil); err != nil {
			return err
		}
		st.Now = s.Clock.read(st.Now)
		return nil
	})
	stored := s.queueFence(b, req.Expected)
	if len(req.CommandIDs) > 0 {
		queueReadDecisions(b, req.CommandIDs, st.Priors)
	}
	queueReferences(b, req.References, st.Book)
	queueExternalAccounts(b, currencies)
	if len(transfers) > 0 {
		queueReadTransfers(b, selectTransfers+`WHERE transfer_id = ANY($1::uuid[]) ORDER BY transfer_id FOR UPDATE`, []any{transfers}, st)
		// A transaction's legs change only under its transfer's lock, just taken.
		queueReadLegs(b, transfers, st.Book)
	} else if len(accounts) > 0 {
		queueLockAccounts(b, sortedUnique(accounts), req.Payers, st)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load batch state: %w", err)
	}
	for p, want := range req.Expected {
		if got, ok := stored[p]; !ok || got != want {
			return nil, fmt.Errorf("%w (partition %d: stored %d or halted, expected %d)", ErrFenced, p, got, want)
		}
	}
	if len(transfers) > 0 {
		if err := lockTransfersAccounts(ctx, tx, accounts, req.Payers, st); err != nil {
			return nil, err
		}
	}
	return st, s.check(ctx, tx, st, req.Payers)
}

// queueReferences reads which transfers hold the references refs into
// book. Not locked: a concurrent batch that applies the same reference
// meets the unique index on commit, and its retry reads this one's.
func queueReferences(b *pgx.Batch, refs []string, book *domain.Book) {
	if len(refs) == 0 {
		return
	}
	b.Queue(`SELECT reference, transfer_id::text FROM transfers WHERE reference = ANY($1)`,
		sortedUnique(refs)).Query(func(rows pgx.Rows) error {
		var ref, id string
		_, err := pgx.ForEachRow(rows, []any{&ref, &id}, func() error { book.References[ref] = id; return nil })
		return err
	})
}

// queueExternalAccounts creates the external accounts of currencies where
// missing: cheap when the rows exist (no lock is taken on conflict), and
// right after a restore too, which a cache would not be.
func queueExternalAccounts(b *pgx.Batch, currencies []string) {
	if len(currencies) == 0 {
		return
	}
	b.Queue(`INSERT INTO accounts (account_id, currency, status, external)
		SELECT $1 || c, c, 'active', true FROM unnest($2::text[]) AS c
		ON CONFLICT (account_id) DO NOTHING`, domain.ExternalPrefix, currencies)
}

// lockTransfersAccounts locks, in a second round trip, accounts and the
// accounts of the transfers (and their legs) book holds, now that they
// are read.
func lockTransfersAccounts(ctx context.Context, tx Sender, accounts, payers []string, st *State) error {
	for _, t := range st.Book.Transfers {
		accounts = append(accounts, t.FromAccountID, t.ToAccountID)
		for _, l := range t.Legs {
			accounts = append(accounts, l.FromAccountID, l.ToAccountID)
		}
	}
	b := &pgx.Batch{}
	queueLockAccounts(b, sortedUnique(accounts), payers, st)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("lock accounts: %w", err)
	}
	return nil
}

// check deals with what the locks just taken may have moved under the
// batch: the days its accounts have begun (raiseClock), and the revenue
// accounts of fee plans (checkRevenue).
func (s Source) check(ctx context.Context, tx Sender, st *State, payers []string) error {
	raiseClock(st)
	if err := recount(ctx, tx, st.Book); err != nil {
		return err
	}
	return s.checkRevenue(ctx, tx, st.Book, payers)
}

// recount adds to the open periods of book's accounts that missed
// postings (domain.Account.Stale) the entries after the last one they
// counted: one more round trip, only then, reading only what was missed.
func recount(ctx context.Context, tx Sender, book *domain.Book) error {
	var ids []string
	var counted []int64
	for _, a := range book.Accounts {
		if a.Stale() {
			ids, counted = append(ids, a.ID), append(counted, a.Period.FirstVersion+a.Period.Entries-1)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT e.account_id, coalesce(sum(-e.amount) FILTER (WHERE e.amount < 0), 0)::text,
			coalesce(sum(e.amount) FILTER (WHERE e.amount > 0), 0)::text, count(*)
		FROM unnest($1::text[], $2::int8[]) AS u (id, counted)
		JOIN entries e ON e.account_id = u.id AND e.account_version > u.counted
		GROUP BY e.account_id`, ids, counted).Query(func(rows pgx.Rows) error {
		var id, debits, credits string
		var n int64
		_, err := pgx.ForEachRow(rows, []any{&id, &debits, &credits, &n}, func() error {
			d, err := domain.ParseSum(debits)
			if err != nil {
				return fmt.Errorf("recount debits of %s: %w", id, err)
			}
			c, err := domain.ParseSum(credits)
			if err != nil {
				return fmt.Errorf("recount credits of %s: %w", id, err)
			}
			p := &book.Accounts[id].Period
			p.Debits.AddSum(d)
			p.Credits.AddSum(c)
			p.Entries += n
			return nil
		})
		return err
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("recount statement periods: %w", err)
	}
	return nil
}

// raiseClock moves st.Now forward, when it is behind, to the start of the
// latest day an account of the batch has already begun: the day of its
// open statement period, the day after the last one it closed, or the day
// of its daily debit limit's count (a hold placed after midnight posts
// nothing, but counts against the new day's limit). The
// batch read its clock when it began; a batch of the next day, or a
// closer, may have taken one of its accounts past midnight while it
// waited for the lock. Dated by its own clock, its postings would fall in
// a day whose statement is closed, or be counted in the next day's while
// dated the day before. Raised, they are dated by the day their account
// is in, and every posting of a statement is of its day; the rare batch
// this moves is a few milliseconds later than its clock. A database clock
// that steps back holds every account's postings at the start of the day
// it had reached, until the clock catches up, rather than stopping them.
func raiseClock(st *State) {
	var floor time.Time
	for _, a := range st.Book.Accounts {
		for _, day := range []string{a.Period.Day, domain.NextDay(a.ClosedThrough), a.DailyDebitDay} {
			if t, err := time.Parse(time.DateOnly, day); err == nil && t.After(floor) {
				floor = t
			}
		}
	}
	if st.Now.Before(floor) {
		st.Now, st.ClockRaised = floor, true
	}
}

// checkRevenue makes sure every payer's fee plan names a revenue account
// the batch locked, or one that does not exist (which the rules refuse as
// fee_account_invalid). The lock statement chose the revenue accounts from
// the plans as its snapshot saw them; a plan changed while it waited for
// the payer's lock (a set_fee_plan on the payer's partition racing a
// transaction leg from another) may name another: ErrPlanMoved.
func (Source) checkRevenue(ctx context.Context, tx Sender, book *domain.Book, payers []string) error {
	var missing []string
	for _, id := range payers {
		if a := book.Accounts[id]; a != nil && a.FeePlan != nil && book.Accounts[a.FeePlan.RevenueAccountID] == nil {
			missing = append(missing, a.FeePlan.RevenueAccountID)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	exists := false
	b := &pgx.Batch{}
	b.Queue(`SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = ANY($1))`, missing).QueryRow(func(row pgx.Row) error {
		return row.Scan(&exists)
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("check revenue accounts: %w", err)
	}
	if exists {
		return ErrPlanMoved
	}
	return nil
}

// queueFence creates the rows of the partitions of expected where missing
// (at the expected offset) and locks them in partition order; the returned
// map is filled with their stored offsets when the batch runs. A halted
// partition reads as missing: fenced, so a zombie that still holds it after
// a halt applies nothing.
func (s Source) queueFence(b *pgx.Batch, expected Positions) Positions {
	parts, offsets := offsetColumns(expected)
	b.Queue(`INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
		SELECT $1, $2, p, o FROM unnest($3::int4[], $4::int8[]) AS u (p, o)
		ORDER BY p
		ON CONFLICT DO NOTHING`, s.Group, s.Topic, parts, offsets)
	stored := Positions{}
	b.Queue(`SELECT partition, next_offset FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int4[]) AND halted_at IS NULL
		ORDER BY partition FOR UPDATE`,
		s.Group, s.Topic, parts).Query(func(rows pgx.Rows) error { return scanPositions(rows, stored) })
	return stored
}

// queueReadDecisions reads the stored decisions of ids into priors.
func queueReadDecisions(b *pgx.Batch, ids []string, priors map[string]Prior) {
	b.Queue(`SELECT command_id::text, fingerprint, status, coalesce(reason, '') FROM processed_commands
		WHERE command_id = ANY($1::uuid[])`, ids).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id, status, reason string
			var fp []byte
			if err := rows.Scan(&id, &fp, &status, &reason); err != nil {
				return err
			}
			priors[id] = Prior{Fingerprint: fp, Status: domain.Status(status), Reason: domain.Reason(reason)}
		}
		return rows.Err()
	})
}

// selectTransfers reads the columns of transfers the decisions use; the
// callers add which rows, their order and their locks.
const selectTransfers = `SELECT transfer_id::text, kind, from_account_id, to_account_id, currency, amount,
		captured_amount, reversed_amount, status, expires_at, coalesce(reference, ''), fee
	FROM transfers `

// queueReadTransfers loads the transfers query (selectTransfers and its
// rows) selects into st.Book, and marks them loaded.
func queueReadTransfers(b *pgx.Batch, query string, args []any, st *State) {
	b.Queue(query, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			t := &domain.Transfer{}
			var kind, status string
			var expires pgtype.Timestamptz
			if err := rows.Scan(&t.ID, &kind, &t.FromAccountID, &t.ToAccountID, &t.Currency, &t.Amount,
				&t.CapturedAmount, &t.ReversedAmount, &status, &expires, &t.Reference, &t.Fee); err != nil {
				return err
			}
			t.Kind, t.Status = domain.TransferKind(kind), domain.TransferStatus(status)
			if expires.Valid {
				e := expires.Time.UTC()
				t.ExpiresAt = &e
			}
			st.Book.Transfers[t.ID] = t
			st.Loaded[t.ID] = true
		}
		return rows.Err()
	})
}

// queueReadLegs loads the legs of the transactions among transfers into
// book (the transfers' own rows must be queued before).
func queueReadLegs(b *pgx.Batch, transfers []string, book *domain.Book) {
	b.Queue(`SELECT transfer_id::text, from_account_id, to_account_id, currency, amount, fee, reversed_amount
		FROM transfer_legs WHERE transfer_id = ANY($1::uuid[]) ORDER BY transfer_id, leg`, transfers).Query(func(rows pgx.Rows) error {
		var id string
		var l domain.TransferLeg
		_, err := pgx.ForEachRow(rows, []any{&id, &l.FromAccountID, &l.ToAccountID, &l.Currency, &l.Amount, &l.Fee, &l.ReversedAmount}, func() error {
			if t := book.Transfers[id]; t != nil {
				t.Legs = append(t.Legs, l)
			}
			return nil
		})
		return err
	})
}

// queueLockAccounts loads and locks the accounts ids into st.Book, with
// the revenue accounts of the fee plans of payers (among ids; a fee is
// posted there), all in id order in one statement, so the lock order
// holds, and marks each row it returns in st.Locked. The plans are read in
// the statement's snapshot, before it waits for locks: checkRevenue
// catches a plan that changed meanwhile.
func queueLockAccounts(b *pgx.Batch, ids, payers []string, st *State) {
	if payers == nil {
		payers = []string{}
	}
	b.Queue(selectAccounts+`WHERE account_id = ANY($1::text[] || ARRAY(SELECT fee_plan->>'revenue_account_id' FROM accounts
			WHERE account_id = ANY($2::text[]) AND fee_plan IS NOT NULL))
		ORDER BY account_id FOR UPDATE`, ids, payers).Query(func(rows pgx.Rows) error { return scanAccounts(rows, st.Book, st.Locked) })
}

// selectAccounts reads the columns of accounts the rules use (scanAccounts
// reads them); the callers add which rows and their locks.
const selectAccounts = `SELECT account_id, currency, status, external, balance, held, overdraft_limit, daily_debit_limit,
		coalesce(to_char(daily_debit_day, 'YYYY-MM-DD'), ''), daily_debited, version, fee_plan, coalesce(encode(digest, 'hex'), ''),
		coalesce(to_char(period_day, 'YYYY-MM-DD'), ''), period_opening, period_first_version, period_debits::text, period_credits::text,
		period_entries, coalesce(to_char(closed_through, 'YYYY-MM-DD'), '')
	FROM accounts `

// scanAccounts reads the rows of a selectAccounts query into book.
func scanAccounts(rows pgx.Rows, book *domain.Book, locked map[string]bool) error {
	for rows.Next() {
		a := &domain.Account{}
		var status, debits, credits string
		var plan []byte
		if err := rows.Scan(&a.ID, &a.Currency, &status, &a.External, &a.Balance, &a.Held, &a.OverdraftLimit,
			&a.DailyDebitLimit, &a.DailyDebitDay, &a.DailyDebited, &a.Version, &plan, &a.Digest,
			&a.Period.Day, &a.Period.Opening, &a.Period.FirstVersion, &debits, &credits, &a.Period.Entries, &a.ClosedThrough); err != nil {
			return err
		}
		if plan != nil {
			a.FeePlan = &domain.FeePlan{}
			if err := json.Unmarshal(plan, a.FeePlan); err != nil {
				return fmt.Errorf("fee plan of account %s: %w", a.ID, err)
			}
		}
		var err error
		if a.Period.Debits, err = domain.ParseSum(debits); err != nil {
			return fmt.Errorf("period debits of account %s: %w", a.ID, err)
		}
		if a.Period.Credits, err = domain.ParseSum(credits); err != nil {
			return fmt.Errorf("period credits of account %s: %w", a.ID, err)
		}
		a.Status = domain.AccountStatus(status)
		book.Accounts[a.ID] = a
		if locked != nil {
			locked[a.ID] = true
		}
	}
	return rows.Err()
}
