package ledger

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
)

// History is a run of commands decided elsewhere (loadgen's preload, by
// the same domain rules the workers run), as the rows a worker would have
// left: ImportHistory writes it wholesale, so that a benchmark starts on a
// database holding months of history without taking months to make it.
type History struct {
	Accounts  []HistoryAccount // opened in the run, as they stood at its end
	Transfers []*HistoryTransfer
	Entries   []HistoryEntry
	Decisions []HistoryDecision // in decision order
}

// HistoryAccount is an account opened at Created.
type HistoryAccount struct {
	Account *domain.Account
	Created time.Time
}

// HistoryTransfer is a transfer as its last command left it.
type HistoryTransfer struct {
	ID, Kind, From, To, Currency, Status string
	Amount, Captured, Reversed           int64
	Created, Updated                     time.Time
	// Legs are a transaction's; nil for the other kinds.
	Legs []domain.TransferLeg
}

// HistoryEntry is one posting.
type HistoryEntry struct {
	Account, CommandID, CommandType, Currency string
	Version, Amount, BalanceAfter             int64
	At                                        time.Time
	Digest                                    string // hex
}

// HistoryDecision is a command's stored decision.
type HistoryDecision struct {
	ID, Type, Status, Reason, Debit string
	Fingerprint                     []byte
	Accepted, At                    time.Time
	Partition                       int
	Offset                          int64
}

// ImportHistory writes h in tx with COPY, as submitted by the API key by:
// the accounts first (the others refer to them), processed_commands in
// decision order, so that its seq numbers them as the workers would.
func ImportHistory(ctx context.Context, tx pgx.Tx, h *History, by string) error {
	type leg struct {
		id string
		n  int
		at time.Time
		domain.TransferLeg
	}
	var legs []leg
	for _, t := range h.Transfers {
		for n, l := range t.Legs {
			legs = append(legs, leg{t.ID, n, t.Created, l})
		}
	}
	steps := []struct {
		table string
		cols  []string
		n     int
		row   func(i int) ([]any, error)
	}{
		{"accounts", []string{"account_id", "currency", "status", "external", "balance", "held", "overdraft_limit",
			"daily_debit_limit", "daily_debit_day", "daily_debited", "version", "created_at", "updated_at"}, len(h.Accounts),
			func(i int) ([]any, error) {
				r := h.Accounts[i]
				a := r.Account
				return []any{a.ID, a.Currency, string(a.Status), a.External, a.Balance, a.Held, a.OverdraftLimit,
					a.DailyDebitLimit, dateOrNil(a.DailyDebitDay), a.DailyDebited, a.Version, r.Created, r.Created}, nil
			}},
		{"transfers", []string{"transfer_id", "kind", "from_account_id", "to_account_id", "currency", "amount",
			"captured_amount", "reversed_amount", "status", "expires_at", "created_at", "updated_at", "settled_at"}, len(h.Transfers),
			func(i int) ([]any, error) {
				t := h.Transfers[i]
				var settled any // a hold that left pending, at its last change
				if t.Kind == string(domain.KindHold) && t.Status != string(domain.TransferPending) {
					settled = t.Updated
				}
				return []any{t.ID, t.Kind, t.From, t.To, t.Currency, t.Amount, t.Captured, t.Reversed, t.Status, nil, t.Created, t.Updated, settled}, nil
			}},
		{"transfer_legs", []string{"transfer_id", "leg", "from_account_id", "to_account_id", "currency", "amount",
			"reversed_amount", "fee", "created_at"}, len(legs),
			func(i int) ([]any, error) {
				l := legs[i]
				return []any{l.id, int16(l.n), l.FromAccountID, l.ToAccountID, l.Currency, l.Amount, l.ReversedAmount, l.Fee, l.at}, nil
			}},
		{"entries", []string{"account_id", "account_version", "command_id", "command_type", "currency", "amount",
			"balance_after", "created_at", "submitted_by", "digest"}, len(h.Entries),
			func(i int) ([]any, error) {
				e := h.Entries[i]
				sum, err := hex.DecodeString(e.Digest)
				return []any{e.Account, e.Version, e.CommandID, e.CommandType, e.Currency, e.Amount, e.BalanceAfter, e.At, by, sum}, err
			}},
		{"processed_commands", []string{"command_id", "type", "fingerprint", "status", "reason", "debit_account_id",
			"accepted_at", "processed_at", "source_partition", "source_offset", "submitted_by"}, len(h.Decisions),
			func(i int) ([]any, error) {
				p := h.Decisions[i]
				var reason any
				if p.Reason != "" {
					reason = p.Reason
				}
				return []any{p.ID, p.Type, p.Fingerprint, p.Status, reason, p.Debit, p.Accepted, p.At, int32(p.Partition), p.Offset, by}, nil
			}},
	}
	for _, st := range steps {
		if st.n == 0 {
			continue
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{st.table}, st.cols, pgx.CopyFromSlice(st.n, st.row)); err != nil {
			return fmt.Errorf("copy %s: %w", st.table, err)
		}
	}
	return nil
}

func dateOrNil(day string) any {
	if day == "" {
		return nil
	}
	t, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return nil
	}
	return t
}

// SetAccounts writes the state of every account of accounts, each last
// changed at updated[id]; every one must exist.
func SetAccounts(ctx context.Context, pool *pgxpool.Pool, accounts map[string]*domain.Account, updated map[string]time.Time) error {
	if len(accounts) == 0 {
		return nil
	}
	var ids, statuses, days, digests []string
	var balance, held, debited, versions []int64
	var at []time.Time
	for id, a := range accounts {
		ids, statuses, days, digests = append(ids, id), append(statuses, string(a.Status)), append(days, a.DailyDebitDay), append(digests, a.Digest)
		balance, held, debited, versions = append(balance, a.Balance), append(held, a.Held), append(debited, a.DailyDebited), append(versions, a.Version)
		at = append(at, updated[id])
	}
	// Checked in the statement: a count read after it would come after
	// its commit.
	if _, err := pool.Exec(ctx, `WITH changed AS (
			UPDATE accounts AS a SET status = u.st, balance = u.bal, held = u.hld,
				daily_debit_day = nullif(u.dd, '')::date, daily_debited = u.deb, version = u.ver, updated_at = u.upd,
				digest = decode(nullif(u.dg, ''), 'hex')
			FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], $7::int8[], $8::timestamptz[], $9::text[])
				AS u (id, st, bal, hld, dd, deb, ver, upd, dg)
			WHERE a.account_id = u.id
			RETURNING 1)
		SELECT txpipe_expect_rows(count(*), cardinality($1::text[]), 'update accounts') FROM changed`,
		ids, statuses, balance, held, days, debited, versions, at, digests); err != nil {
		return fmt.Errorf("update accounts: %w", err)
	}
	return nil
}

// SeedFunded creates n EUR accounts named prefix0 … prefix(n-1), each with
// balance, and the EUR external account that funded them — rows only, no
// entries or decisions: a benchmark's starting point, which verify would
// not pass (balances without entries).
func SeedFunded(ctx context.Context, pool *pgxpool.Pool, prefix string, n int, balance int64) error {
	if _, err := pool.Exec(ctx, `INSERT INTO accounts (account_id, currency, status, balance, external)
		VALUES ($1, 'EUR', 'active', -$2::bigint * $3, true)`, domain.ExternalAccountID("EUR"), balance, n); err != nil {
		return fmt.Errorf("seed external account: %w", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO accounts (account_id, currency, status, balance)
		SELECT $1 || g, 'EUR', 'active', $2 FROM generate_series(0, $3 - 1) AS g`, prefix, balance, n); err != nil {
		return fmt.Errorf("seed accounts: %w", err)
	}
	return nil
}

// SetFeePlans opens revenue (in EUR, if missing) and gives every internal
// account whose id starts with prefix the fee plan: a benchmark's fixture,
// as SeedFunded is.
func SetFeePlans(ctx context.Context, pool *pgxpool.Pool, prefix, revenue string, plan domain.FeePlan) error {
	js, err := json.Marshal(plan)
	if err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `INSERT INTO accounts (account_id, currency, status) VALUES ($1, 'EUR', 'active')
		ON CONFLICT (account_id) DO NOTHING`, revenue); err != nil {
		return fmt.Errorf("open the revenue account: %w", err)
	}
	if _, err := pool.Exec(ctx, `UPDATE accounts SET fee_plan = $2::jsonb WHERE starts_with(account_id, $1) AND NOT external`, prefix, string(js)); err != nil {
		return fmt.Errorf("set fee plans: %w", err)
	}
	return nil
}
