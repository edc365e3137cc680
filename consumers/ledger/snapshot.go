package ledger

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Snapshot is the whole ledger as one transaction sees it: what the
// auditor (txpipe verify) checks the invariants against.
type Snapshot struct {
	Decided map[string]Decided // command_id → its stored decision
	Offsets Positions          // the source's stored offsets
	Totals  map[string]Totals  // account_id → its row
	// Entries holds each account's entries in version order; ByCommand
	// the same entries by command_id.
	Entries, ByCommand map[string][]SnapshotEntry
	PendingHeld        map[string]int64 // account_id → sum of its pending holds
	Legs               map[string]int   // transaction (transfer_id) → its number of legs
	// FeePairs counts, per transfer, the fees it paid: 1 for a transfer or
	// withdrawal with a fee, one per leg with a fee for a transaction.
	FeePairs map[string]int
	// Unnamed lists transfers and legs naming an account that does not
	// exist, "transfer <id> names <account>" (no foreign key refuses them
	// since migration 0022: only a bug could write one).
	Unnamed []string
}

// Decided is a stored decision.
type Decided struct{ Type, Status, Reason string }

// Totals are an account's figures.
type Totals struct {
	Currency                          string
	External                          bool
	Balance, Held, Overdraft, Version int64
	// Digest is the digest of the account's latest posting, hex ("" for
	// none).
	Digest string
	// ClosedThrough is the day of the account's last statement ("" for
	// none).
	ClosedThrough string
}

// SnapshotEntry is an entry as the auditor reads it.
type SnapshotEntry struct {
	Account                  string
	Version, Amount, Balance int64
	CommandID, Currency      string
	Digest                   string // hex
	Day                      string // of created_at, UTC, 2006-01-02
}

// ReadSnapshot reads the ledger in tx, which the caller begins read-only
// and REPEATABLE READ so that every table is seen at the same instant: a
// worker committing meanwhile cannot show a balance without its entries.
// Any error, mid-result included, is returned: a query cut short must not
// read as missing rows, which an auditor would report as violations.
func (s Source) ReadSnapshot(ctx context.Context, tx pgx.Tx) (*Snapshot, error) {
	snap := &Snapshot{Decided: map[string]Decided{}, Offsets: Positions{}, Totals: map[string]Totals{},
		Entries: map[string][]SnapshotEntry{}, ByCommand: map[string][]SnapshotEntry{}, PendingHeld: map[string]int64{}, Legs: map[string]int{}, FeePairs: map[string]int{}}
	each := func(what, sql string, args []any, scans []any, fn func() error) error {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		if _, err := pgx.ForEachRow(rows, scans, fn); err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		return nil
	}
	var id string
	var d Decided
	if err := each("processed commands", `SELECT command_id::text, type, status, coalesce(reason, '') FROM processed_commands`, nil,
		[]any{&id, &d.Type, &d.Status, &d.Reason}, func() error { snap.Decided[id] = d; return nil }); err != nil {
		return nil, err
	}
	var partition int
	var next int64
	if err := each("stored offsets", `SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2`,
		[]any{s.Group, s.Topic}, []any{&partition, &next}, func() error { snap.Offsets[partition] = next; return nil }); err != nil {
		return nil, err
	}
	var a Totals
	if err := each("accounts", `SELECT account_id, currency, external, balance, held, overdraft_limit, version,
			coalesce(encode(digest, 'hex'), ''), coalesce(to_char(closed_through, 'YYYY-MM-DD'), '') FROM accounts`, nil,
		[]any{&id, &a.Currency, &a.External, &a.Balance, &a.Held, &a.Overdraft, &a.Version, &a.Digest, &a.ClosedThrough},
		func() error { snap.Totals[id] = a; return nil }); err != nil {
		return nil, err
	}
	var e SnapshotEntry
	if err := each("entries", `SELECT account_id, account_version, amount, balance_after, command_id::text, currency, encode(digest, 'hex'),
			to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
		FROM entries ORDER BY account_id, account_version`, nil,
		[]any{&e.Account, &e.Version, &e.Amount, &e.Balance, &e.CommandID, &e.Currency, &e.Digest, &e.Day}, func() error {
			snap.Entries[e.Account] = append(snap.Entries[e.Account], e)
			snap.ByCommand[e.CommandID] = append(snap.ByCommand[e.CommandID], e)
			return nil
		}); err != nil {
		return nil, err
	}
	var legs int
	if err := each("transaction legs", `SELECT transfer_id::text, count(*) FROM transfer_legs GROUP BY transfer_id`, nil,
		[]any{&id, &legs}, func() error { snap.Legs[id] = legs; return nil }); err != nil {
		return nil, err
	}
	var pairs int
	if err := each("fees", `SELECT transfer_id::text, 1 FROM transfers WHERE fee > 0 AND kind <> 'transaction'
		UNION ALL SELECT transfer_id::text, count(*)::int FROM transfer_legs WHERE fee > 0 GROUP BY transfer_id`, nil,
		[]any{&id, &pairs}, func() error { snap.FeePairs[id] = pairs; return nil }); err != nil {
		return nil, err
	}
	var named string
	if err := each("accounts of transfers", `SELECT x.id, x.account FROM (
			SELECT transfer_id::text AS id, unnest(ARRAY[from_account_id, to_account_id]) AS account FROM transfers
			UNION ALL SELECT transfer_id::text, unnest(ARRAY[from_account_id, to_account_id]) FROM transfer_legs) AS x
		WHERE NOT EXISTS (SELECT 1 FROM accounts AS a WHERE a.account_id = x.account)`, nil,
		[]any{&id, &named}, func() error {
			snap.Unnamed = append(snap.Unnamed, fmt.Sprintf("transfer %s names %s", id, named))
			return nil
		}); err != nil {
		return nil, err
	}
	var held int64
	if err := each("holds", `SELECT from_account_id, sum(amount) FROM transfers WHERE status = 'pending' GROUP BY from_account_id`, nil,
		[]any{&id, &held}, func() error { snap.PendingHeld[id] = held; return nil }); err != nil {
		return nil, err
	}
	return snap, nil
}
