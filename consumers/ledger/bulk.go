package ledger

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
)

// Bulk writes posted transfers as fast as PostgreSQL takes them, for the
// benchmark's ceiling (loadgen's pg-ceiling): set-based, one transaction
// per call, entries by COPY, and no rules, no locks read, no outbox. It is
// never the workers' path; it measures what that path could at best
// approach. It keeps each internal account's version and balance, read once
// by NewBulk, so that the entries continue each account's statement.
type Bulk struct {
	version, balance map[string]int64
	digest           map[string]string // the latest posting's, hex
}

// NewBulk reads every internal account's version and balance.
func NewBulk(ctx context.Context, pool *pgxpool.Pool) (*Bulk, error) {
	b := &Bulk{version: map[string]int64{}, balance: map[string]int64{}, digest: map[string]string{}}
	rows, err := pool.Query(ctx, `SELECT account_id, version, balance, coalesce(encode(digest, 'hex'), '') FROM accounts WHERE NOT external`)
	if err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	var id, digest string
	var v, bal int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &v, &bal, &digest}, func() error {
		b.version[id], b.balance[id], b.digest[id] = v, bal, digest
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	return b, nil
}

// Post writes transfers (EUR transfer commands between accounts NewBulk
// read) as posted, in one transaction.
func (b *Bulk) Post(ctx context.Context, pool *pgxpool.Pool, transfers []domain.Command) error {
	now := time.Now()
	var entries [][]any
	delta := make(map[string]int64)
	n := len(transfers)
	ids, froms, tos, amounts := make([]string, n), make([]string, n), make([]string, n), make([]int64, n)
	for j, c := range transfers {
		ids[j], froms[j], tos[j], amounts[j] = c.CommandID, c.FromAccountID, c.ToAccountID, c.Amount
		for _, leg := range []struct {
			acct string
			amt  int64
		}{{c.FromAccountID, -c.Amount}, {c.ToAccountID, c.Amount}} {
			b.version[leg.acct]++
			b.balance[leg.acct] += leg.amt
			delta[leg.acct] += leg.amt
			p := domain.Posting{AccountID: leg.acct, Currency: "EUR", Amount: leg.amt, BalanceAfter: b.balance[leg.acct], AccountVersion: b.version[leg.acct]}
			b.digest[leg.acct] = domain.PostingDigest(b.digest[leg.acct], p, c.CommandID)
			sum, _ := hex.DecodeString(b.digest[leg.acct])
			entries = append(entries, []any{leg.acct, b.version[leg.acct], c.CommandID, "transfer", "EUR", leg.amt, b.balance[leg.acct], now, sum})
		}
	}
	accts, deltas, versions, digests := make([]string, 0, len(delta)), make([]int64, 0, len(delta)), make([]int64, 0, len(delta)), make([]string, 0, len(delta))
	for a, d := range delta {
		accts, deltas, versions, digests = append(accts, a), append(deltas, d), append(versions, b.version[a]), append(digests, b.digest[a])
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		batch := &pgx.Batch{}
		batch.Queue(`UPDATE accounts a SET balance = a.balance + u.d, version = u.v, updated_at = now(), digest = decode(u.dg, 'hex')
			FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) AS u (id, d, v, dg) WHERE a.account_id = u.id`, accts, deltas, versions, digests)
		batch.Queue(`INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount, status, created_at, updated_at)
			SELECT id::uuid, 'transfer', f, t, 'EUR', a, 'posted', now(), now() FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[]) AS u (id, f, t, a)`,
			ids, froms, tos, amounts)
		batch.Queue(`INSERT INTO processed_commands (command_id, type, fingerprint, status, debit_account_id, processed_at, source_partition, source_offset)
			SELECT id::uuid, 'transfer', '\x00', 'applied', f, now(), 0, 0 FROM unnest($1::text[], $2::text[]) AS u (id, f)`, ids, froms)
		if err := tx.SendBatch(ctx, batch).Close(); err != nil {
			return err
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"entries"},
			[]string{"account_id", "account_version", "command_id", "command_type", "currency", "amount", "balance_after", "created_at", "digest"},
			pgx.CopyFromRows(entries))
		return err
	})
}

// QuerySample is what loadgen's query benchmark draws its requests'
// parameters from: how many transfers there are, a random sample of
// internal accounts of one currency that have postings (with their
// versions), and the span of the transfers' times.
type QuerySample struct {
	Transfers   int64
	Accounts    []string
	Versions    []int64
	First, Last time.Time
}

// SampleForQueries reads a QuerySample of up to n accounts of currency.
func SampleForQueries(ctx context.Context, pool *pgxpool.Pool, currency string, n int) (QuerySample, error) {
	var s QuerySample
	if err := pool.QueryRow(ctx, `SELECT count(*), coalesce(min(created_at), now()), coalesce(max(created_at), now()) FROM transfers`).
		Scan(&s.Transfers, &s.First, &s.Last); err != nil {
		return s, fmt.Errorf("read the transfers' span: %w", err)
	}
	rows, err := pool.Query(ctx, `SELECT account_id, version FROM accounts
		WHERE NOT external AND currency = $1 AND version > 0 ORDER BY random() LIMIT $2`, currency, n)
	if err != nil {
		return s, fmt.Errorf("sample accounts: %w", err)
	}
	var id string
	var version int64
	_, err = pgx.ForEachRow(rows, []any{&id, &version}, func() error {
		s.Accounts, s.Versions = append(s.Accounts, id), append(s.Versions, version)
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("sample accounts: %w", err)
	}
	return s, nil
}
