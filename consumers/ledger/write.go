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
	"github.com/txpipe/txpipe/outbox"
)

// Writes are a batch's effects, written by Write in one round trip.
type Writes struct {
	// Opened are the accounts the batch created, Changed those it loaded
	// and changed.
	Opened, Changed []*domain.Account
	// Locked are the accounts Load locked (State.Locked): with Opened,
	// the only accounts the batch's entries and created transfers may
	// name, since no foreign key checks them (migration 0022).
	// queueWrites refuses any other.
	Locked map[string]bool
	// AccountMetadata is the metadata of Opened accounts and
	// TransferMetadata that of Created transfers, by id, sealed: the
	// plaintext is never written.
	AccountMetadata, TransferMetadata map[string]domain.Sealed
	// Created are the transfers the batch made, Updated those it loaded
	// and changed.
	Created, Updated []*domain.Transfer
	Entries          []Entry
	Decisions        []Decision
	DeadLettered     []DeadLettered
	// Outbox is published by the relay once the batch commits.
	Outbox []outbox.Message
	// Next is the stored offset of each partition after the batch.
	Next Positions
	// Now stamps the rows: the time the batch decided at (State.Now).
	Now time.Time
}

// Entry is one posting of a command, a line of its account's statement.
type Entry struct {
	Posting     domain.Posting
	CommandID   string
	CommandType domain.Type
	SubmittedBy string
}

// Decision is the outcome of a command, stored under its command_id so that
// a redelivery of it has no effect.
type Decision struct {
	Command     domain.Command
	Fingerprint []byte
	Result      domain.Result
	// AcceptedAt is when ingest accepted it (zero when unknown).
	AcceptedAt  time.Time
	Partition   int
	Offset      int64
	SubmittedBy string
}

// DeadLettered is the dead_lettered outcome of a record whose command id
// could be read.
type DeadLettered struct {
	Identity       domain.Identity
	Reason, Detail string
	Partition      int
	Offset         int64
	SubmittedBy    string
}

// CodeRowMissing is the SQLSTATE of a batch's update that found fewer
// rows than it locked (txpipe_expect_rows, migration 0021). A row the
// batch locked cannot be deleted or renamed before it commits (the DELETE
// or UPDATE waits for the lock), so only a bug in txpipe raises it: a row
// written that Load did not lock.
const CodeRowMissing = "TXP01"

// ErrNotLocked means a row of a batch names an account the batch neither
// locked nor opened (in neither Writes.Locked nor Writes.Opened): a bug in
// txpipe, refused before anything is sent, so the batch's transaction
// commits nothing. With CodeRowMissing it is what the foreign keys to
// accounts used to catch (migration 0022).
var ErrNotLocked = errors.New("a row names an account the batch did not lock")

// Write stores w, moves the stored offsets to w.Next and commits, in one
// round trip. Every account of w.Changed and transfer of w.Updated must
// have been locked by Load; a missing row fails the batch. Every account
// an entry or a created transfer names must be in w.Locked or w.Opened,
// or Write sends nothing and returns ErrNotLocked.
func (s Source) Write(ctx context.Context, tx Sender, w *Writes) error {
	b := &pgx.Batch{}
	if err := s.queueWrites(b, w); err != nil {
		return err
	}
	b.Queue("COMMIT") // see internal/pgtx
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write batch effects: %w", err)
	}
	return nil
}

// checkAccounts returns ErrNotLocked for the first account an entry, a
// created transfer or one of its legs names that is neither in w.Locked
// nor among w.Opened.
func (w *Writes) checkAccounts() error {
	if len(w.Entries) == 0 && len(w.Created) == 0 {
		return nil
	}
	opened := make(map[string]bool, len(w.Opened))
	for _, a := range w.Opened {
		opened[a.ID] = true
	}
	known := func(id string) bool { return w.Locked[id] || opened[id] }
	for _, e := range w.Entries {
		if !known(e.Posting.AccountID) {
			return fmt.Errorf("%w: an entry of command %s names account %q", ErrNotLocked, e.CommandID, e.Posting.AccountID)
		}
	}
	for _, t := range w.Created {
		if id, ok := firstUnknown(known, t.FromAccountID, t.ToAccountID); !ok {
			return fmt.Errorf("%w: transfer %s names account %q", ErrNotLocked, t.ID, id)
		}
		for _, l := range t.Legs {
			if id, ok := firstUnknown(known, l.FromAccountID, l.ToAccountID); !ok {
				return fmt.Errorf("%w: transfer %s names account %q", ErrNotLocked, t.ID, id)
			}
		}
	}
	return nil
}

// firstUnknown returns the first of from and to that known refuses, and
// false; true when it knows both. (No slice: it runs for every transfer
// of every batch.)
func firstUnknown(known func(string) bool, from, to string) (string, bool) {
	if !known(from) {
		return from, false
	}
	if !known(to) {
		return to, false
	}
	return "", true
}

// queueWrites queues w's statements, stamped w.Now, once checkAccounts
// passes; on ErrNotLocked it queues nothing.
func (s Source) queueWrites(b *pgx.Batch, w *Writes) error {
	if err := w.checkAccounts(); err != nil {
		return err
	}
	at := w.Now
	if len(w.Opened) > 0 {
		queueInsertAccounts(b, w.Opened, w.AccountMetadata, at)
	}
	if len(w.Changed) > 0 {
		queueUpdateAccounts(b, w.Changed, at)
	}
	if len(w.Created) > 0 {
		queueInsertTransfers(b, w.Created, w.TransferMetadata, at)
		// Each leg carries its transaction's creation time, for the API's
		// queries by account.
		queueLegs(b, w.Created, `INSERT INTO transfer_legs (transfer_id, leg, from_account_id, to_account_id, currency, amount, reversed_amount, fee, created_at)
			SELECT u.id::uuid, n, f, u.t, c, amt, rev, u.fee, tr.created_at
			FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[])
				AS u (id, n, f, t, c, amt, rev, fee)
			JOIN transfers tr ON tr.transfer_id = u.id::uuid`)
	}
	if len(w.Updated) > 0 {
		queueUpdateTransfers(b, w.Updated, at)
		queueLegs(b, w.Updated, `UPDATE transfer_legs AS l SET reversed_amount = u.rev
			FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[])
				AS u (id, n, f, t, c, amt, rev, fee)
			WHERE l.transfer_id = u.id::uuid AND l.leg = u.n`)
	}
	if len(w.Entries) > 0 {
		queueEntries(b, w.Entries, at)
	}
	if len(w.Decisions) > 0 {
		queueDecisions(b, w.Decisions, at)
	}
	if len(w.DeadLettered) > 0 {
		queueDeadLettered(b, w.DeadLettered, at)
	}
	outbox.Queue(b, w.Outbox)
	if len(w.Next) > 0 {
		parts, offsets := offsetColumns(w.Next)
		b.Queue(`UPDATE consumer_offsets AS c SET next_offset = u.o, updated_at = now()
			FROM unnest($3::int4[], $4::int8[]) AS u (p, o)
			WHERE c.group_id = $1 AND c.topic = $2 AND c.partition = u.p`, s.Group, s.Topic, parts, offsets)
	}
	return nil
}

// The set-based writes of a batch: one statement per table, whatever the
// number of rows, each over unnest()ed column arrays.

// queueInsertAccounts creates the accounts this batch opened. A plain
// INSERT on purpose: if another partition opened the same id concurrently
// (a second open_account under another command_id, or a producer that keys
// records differently), the unique violation rolls this batch back and its
// retry sees the row and rejects with account_exists. An upsert would
// silently overwrite the other account. Metadata is written only sealed.
func queueInsertAccounts(b *pgx.Batch, accounts []*domain.Account, sealed map[string]domain.Sealed, now time.Time) {
	n := len(accounts)
	ids, currencies, statuses, days, keyIDs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	balance, held, overdraft, daily, debited, versions := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	ciphertexts := make([][]byte, n)
	for i, a := range accounts {
		ids[i], currencies[i], statuses[i], days[i] = a.ID, a.Currency, string(a.Status), a.DailyDebitDay
		balance[i], held[i], overdraft[i], daily[i], debited[i], versions[i] = a.Balance, a.Held, a.OverdraftLimit, a.DailyDebitLimit, a.DailyDebited, a.Version
		if s, ok := sealed[a.ID]; ok {
			keyIDs[i], ciphertexts[i] = s.KeyID, s.Ciphertext
		}
	}
	// An account opened in this batch may have had its fee plan set later
	// in the same batch: the row is written once, as the batch left it.
	p := periods(accounts)
	b.Queue(`INSERT INTO accounts (account_id, currency, status, balance, held, overdraft_limit,
			daily_debit_limit, daily_debit_day, daily_debited, version, metadata_key_id, metadata_sealed, created_at, updated_at, fee_plan, digest,
			period_day, period_opening, period_first_version, period_debits, period_credits, period_entries, closed_through)
		SELECT id, cur, st, bal, hld, od, dl, nullif(dd, '')::date, deb, ver, nullif(kid, ''), ct, $13, $13, nullif(fp, '')::jsonb,
			decode(nullif(dg, ''), 'hex'), nullif(pd, '')::date, po, pv, pdb::numeric, pcr::numeric, pn, nullif(ctd, '')::date
		FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
			$8::text[], $9::int8[], $10::int8[], $11::text[], $12::bytea[], $14::text[], $15::text[],
			$16::text[], $17::int8[], $18::int8[], $19::text[], $20::text[], $21::int8[], $22::text[])
			AS u (id, cur, st, bal, hld, od, dl, dd, deb, ver, kid, ct, fp, dg, pd, po, pv, pdb, pcr, pn, ctd)`,
		ids, currencies, statuses, balance, held, overdraft, daily, days, debited, versions, keyIDs, ciphertexts, now, feePlans(accounts), digests(accounts),
		p.days, p.opening, p.first, p.debits, p.credits, p.entries, p.closed)
}

// periodColumns are the statement periods of accounts as the columns of
// accounts hold them: each one's day ("" for none), opening balance, first
// version, debits and credits (decimal), postings counted, and the day of
// its last statement.
type periodColumns struct {
	days, debits, credits, closed []string
	opening, first, entries       []int64
}

func periods(accounts []*domain.Account) periodColumns {
	n := len(accounts)
	c := periodColumns{days: make([]string, n), debits: make([]string, n), credits: make([]string, n), closed: make([]string, n),
		opening: make([]int64, n), first: make([]int64, n), entries: make([]int64, n)}
	for i, a := range accounts {
		p := a.Period
		c.days[i], c.opening[i], c.first[i], c.entries[i], c.closed[i] = p.Day, p.Opening, p.FirstVersion, p.Entries, a.ClosedThrough
		c.debits[i], c.credits[i] = p.Debits.String(), p.Credits.String()
	}
	return c
}

// digests is the digest of each of accounts' latest posting, hex ("" for
// none).
func digests(accounts []*domain.Account) []string {
	out := make([]string, len(accounts))
	for i, a := range accounts {
		out[i] = a.Digest
	}
	return out
}

// feePlans is the fee plan of each of accounts as JSON, "" for none.
func feePlans(accounts []*domain.Account) []string {
	plans := make([]string, len(accounts))
	for i, a := range accounts {
		if a.FeePlan != nil {
			js, _ := json.Marshal(a.FeePlan) // integers and a string: cannot fail
			plans[i] = string(js)
		}
	}
	return plans
}

// queueUpdateAccounts writes the new state of accounts this batch loaded
// and locked. Every row must exist; a missing one fails the transaction
// in the server (CodeRowMissing), before its COMMIT.
func queueUpdateAccounts(b *pgx.Batch, accounts []*domain.Account, now time.Time) {
	n := len(accounts)
	ids, statuses, days, plans := make([]string, n), make([]string, n), make([]string, n), feePlans(accounts)
	balance, held, debited, versions := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i, a := range accounts {
		ids[i], statuses[i], days[i] = a.ID, string(a.Status), a.DailyDebitDay
		balance[i], held[i], debited[i], versions[i] = a.Balance, a.Held, a.DailyDebited, a.Version
	}
	p := periods(accounts)
	b.Queue(`WITH changed AS (
			UPDATE accounts AS a SET status = u.st, balance = u.bal, held = u.hld,
				daily_debit_day = nullif(u.dd, '')::date, daily_debited = u.deb, version = u.ver, updated_at = $8,
				fee_plan = nullif(u.fp, '')::jsonb, digest = decode(nullif(u.dg, ''), 'hex'),
				period_day = nullif(u.pd, '')::date, period_opening = u.po, period_first_version = u.pv,
				period_debits = u.pdb::numeric, period_credits = u.pcr::numeric, period_entries = u.pn,
				closed_through = nullif(u.ctd, '')::date
			FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], $7::int8[], $9::text[], $10::text[],
					$11::text[], $12::int8[], $13::int8[], $14::text[], $15::text[], $16::int8[], $17::text[])
				AS u (id, st, bal, hld, dd, deb, ver, fp, dg, pd, po, pv, pdb, pcr, pn, ctd)
			WHERE a.account_id = u.id
			RETURNING 1)
		SELECT txpipe_expect_rows(count(*), cardinality($1::text[]), 'update accounts') FROM changed`,
		ids, statuses, balance, held, days, debited, versions, now, plans, digests(accounts),
		p.days, p.opening, p.first, p.debits, p.credits, p.entries, p.closed)
}

// queueInsertTransfers creates transfers made by this batch, with their
// reference and sealed metadata. The unique index on reference refuses a
// reference another transaction applied meanwhile: the batch rolls back
// and its retry reads the other's and rejects with reference_exists.
func queueInsertTransfers(b *pgx.Batch, ts []*domain.Transfer, sealed map[string]domain.Sealed, now time.Time) {
	ids, kinds, from, to, currencies, statuses, expires := transferColumns(ts)
	amounts, captured, reversed := amountColumns(ts)
	refs, keyIDs, ciphertexts, fees := make([]string, len(ts)), make([]string, len(ts)), make([][]byte, len(ts)), make([]int64, len(ts))
	for i, t := range ts {
		refs[i], fees[i] = t.Reference, t.Fee
		if s, ok := sealed[t.ID]; ok {
			keyIDs[i], ciphertexts[i] = s.KeyID, s.Ciphertext
		}
	}
	// settled_at: a hold captured or released in the batch that made it.
	b.Queue(`INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount,
			captured_amount, reversed_amount, status, expires_at, created_at, updated_at,
			reference, metadata_key_id, metadata_sealed, fee, settled_at)
		SELECT id::uuid, k, f, t, c, amt, cap, rev, st, exp, $11, $11, nullif(ref, ''), nullif(kid, ''), ct, fee,
			CASE WHEN k = 'hold' AND st <> 'pending' THEN $11::timestamptz END
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[],
			$9::text[], $10::timestamptz[], $12::text[], $13::text[], $14::bytea[], $15::int8[])
			AS u (id, k, f, t, c, amt, cap, rev, st, exp, ref, kid, ct, fee)`,
		ids, kinds, from, to, currencies, amounts, captured, reversed, statuses, expires, now, refs, keyIDs, ciphertexts, fees)
}

// queueUpdateTransfers writes the new state of transfers this batch
// locked; a row missing fails the transaction, as for accounts.
func queueUpdateTransfers(b *pgx.Batch, ts []*domain.Transfer, now time.Time) {
	ids, _, _, _, _, statuses, _ := transferColumns(ts)
	_, captured, reversed := amountColumns(ts)
	// settled_at: when a hold stopped counting against available funds.
	b.Queue(`WITH changed AS (
			UPDATE transfers AS t SET captured_amount = u.cap, reversed_amount = u.rev, status = u.st, updated_at = $5,
				settled_at = CASE WHEN t.status = 'pending' AND u.st <> 'pending' THEN $5 ELSE t.settled_at END
			FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) AS u (id, cap, rev, st)
			WHERE t.transfer_id = u.id::uuid
			RETURNING 1)
		SELECT txpipe_expect_rows(count(*), cardinality($1::text[]), 'update transfers') FROM changed`,
		ids, captured, reversed, statuses, now)
}

// queueLegs runs sql (an INSERT or an UPDATE of transfer_legs over eight
// unnested columns) for the legs of the transactions among ts; nothing when
// there are none.
func queueLegs(b *pgx.Batch, ts []*domain.Transfer, sql string) {
	var ids, from, to, currencies []string
	var legs []int16
	var amounts, reversed, fees []int64
	for _, t := range ts {
		for i, l := range t.Legs {
			ids, legs, from, to, currencies = append(ids, t.ID), append(legs, int16(i)), append(from, l.FromAccountID), append(to, l.ToAccountID), append(currencies, l.Currency)
			amounts, reversed, fees = append(amounts, l.Amount), append(reversed, l.ReversedAmount), append(fees, l.Fee)
		}
	}
	if len(ids) == 0 {
		return
	}
	b.Queue(sql, ids, legs, from, to, currencies, amounts, reversed, fees)
}

func transferColumns(ts []*domain.Transfer) (ids, kinds, from, to, currencies, statuses []string, expires []pgtype.Timestamptz) {
	n := len(ts)
	ids, kinds, from, to, currencies, statuses = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	expires = make([]pgtype.Timestamptz, n)
	for i, t := range ts {
		ids[i], kinds[i], from[i], to[i], currencies[i], statuses[i] = t.ID, string(t.Kind), t.FromAccountID, t.ToAccountID, t.Currency, string(t.Status)
		if t.ExpiresAt != nil {
			expires[i] = pgtype.Timestamptz{Time: *t.ExpiresAt, Valid: true}
		}
	}
	return
}

func amountColumns(ts []*domain.Transfer) (amounts, captured, reversed []int64) {
	n := len(ts)
	amounts, captured, reversed = make([]int64, n), make([]int64, n), make([]int64, n)
	for i, t := range ts {
		amounts[i], captured[i], reversed[i] = t.Amount, t.CapturedAmount, t.ReversedAmount
	}
	return
}
func queueEntries(b *pgx.Batch, rows []Entry, now time.Time) {
	n := len(rows)
	accounts, commandIDs, types, currencies, by, digest := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	versions, amounts, after := make([]int64, n), make([]int64, n), make([]int64, n)
	for i, r := range rows {
		accounts[i], commandIDs[i], types[i], currencies[i], by[i] = r.Posting.AccountID, r.CommandID, string(r.CommandType), r.Posting.Currency, r.SubmittedBy
		versions[i], amounts[i], after[i], digest[i] = r.Posting.AccountVersion, r.Posting.Amount, r.Posting.BalanceAfter, r.Posting.Digest
	}
	b.Queue(`INSERT INTO entries (account_id, account_version, command_id, command_type, currency, amount, balance_after, created_at, submitted_by, digest)
		SELECT a, v, c::uuid, t, cur, amt, bal, $8, s, decode(dg, 'hex')
		FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $9::text[], $10::text[])
			AS u (a, v, c, t, cur, amt, bal, s, dg)`,
		accounts, versions, commandIDs, types, currencies, amounts, after, now, by, digest)
}

func queueDecisions(b *pgx.Batch, rows []Decision, now time.Time) {
	n := len(rows)
	ids, types, statuses, reasons, debit, accepted, by := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	fps := make([][]byte, n)
	offsets, partitions, legs := make([]int64, n), make([]int32, n), make([]int16, n)
	for i, r := range rows {
		legs[i] = -1
		if r.Result.Leg != nil {
			legs[i] = int16(*r.Result.Leg)
		}
		ids[i], types[i], statuses[i], reasons[i] = r.Command.CommandID, string(r.Command.Type), string(r.Result.Status), string(r.Result.Reason)
		debit[i], fps[i], offsets[i], partitions[i], by[i] = r.Command.DebitAccount(), r.Fingerprint, r.Offset, int32(r.Partition), r.SubmittedBy
		if !r.AcceptedAt.IsZero() {
			accepted[i] = r.AcceptedAt.UTC().Format(time.RFC3339Nano)
		}
	}
	b.Queue(`INSERT INTO processed_commands (command_id, type, fingerprint, status, reason, debit_account_id,
			accepted_at, processed_at, source_partition, source_offset, submitted_by, leg)
		SELECT id::uuid, t, fp, st, nullif(r, ''), d, nullif(acc, '')::timestamptz, $8, p, o, s, nullif(l, -1)
		FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[], $9::int4[], $10::int8[], $11::text[], $12::int2[])
			WITH ORDINALITY AS u (id, t, fp, st, r, d, acc, p, o, s, l, n)
		ORDER BY n`,
		ids, types, fps, statuses, reasons, debit, accepted, now, partitions, offsets, by, legs)
}

// queueDeadLettered records the dead_lettered outcome of records whose
// command id could be read; the latest dead-lettering of an id wins. A
// decision in processed_commands, earlier or later, always wins over it
// (the API reads that first).
func queueDeadLettered(b *pgx.Batch, rows []DeadLettered, now time.Time) {
	n := len(rows)
	ids, types, debit, reasons, details, by := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	partitions, offsets := make([]int32, n), make([]int64, n)
	for i, r := range rows {
		ids[i], types[i], debit[i], reasons[i], details[i], by[i] = r.Identity.CommandID, string(r.Identity.Type), r.Identity.DebitAccountID, r.Reason, r.Detail, r.SubmittedBy
		partitions[i], offsets[i] = int32(r.Partition), r.Offset
	}
	// DISTINCT ON keeps one row per id (the last in the batch): ON CONFLICT
	// cannot change one row twice in a statement.
	b.Queue(`INSERT INTO dead_lettered_commands (command_id, type, debit_account_id, reason, detail,
			source_partition, source_offset, submitted_by, dead_lettered_at)
		SELECT DISTINCT ON (id) id::uuid, nullif(t, ''), nullif(d, ''), r, dt, p, o, nullif(s, ''), $9
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[], $8::text[])
			WITH ORDINALITY AS u (id, t, d, r, dt, p, o, s, n)
		ORDER BY id, n DESC
		ON CONFLICT (command_id) DO UPDATE SET type = excluded.type, debit_account_id = excluded.debit_account_id,
			reason = excluded.reason, detail = excluded.detail, source_partition = excluded.source_partition,
			source_offset = excluded.source_offset, submitted_by = excluded.submitted_by, dead_lettered_at = excluded.dead_lettered_at`,
		ids, types, debit, reasons, details, partitions, offsets, by, now)
}
