package ledger

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/outbox"
)

// Closing is what the caller of CloseDays decides: the accounts whose
// statement period it closed (changed in the book) and the messages that
// announce the statements.
type Closing struct {
	Closed []*domain.Account
	Outbox []outbox.Message
}

// CloseDays runs one transaction that locks up to limit accounts whose
// statement period is of a day before now's (as clock tells it), skipping
// any a worker holds (that worker closes the period itself if it posts to
// the account on a later day, or a next pass does); calls decide with them;
// and writes the accounts and messages it decided. It returns how many
// periods were closed. Every worker runs a closer; they share the work
// through SKIP LOCKED, and a day closes once per account because the
// period ends under the account's row lock, in the same transaction as its
// statement.
func CloseDays(ctx context.Context, pool *pgxpool.Pool, clock Clock, limit int,
	decide func(book *domain.Book, now time.Time) Closing) (int, error) {
	closed := 0
	err := pgx.BeginTxFunc(ctx, pool, readCommitted, func(tx pgx.Tx) error {
		now, err := readClock(ctx, tx, clock)
		if err != nil {
			return err
		}
		book := domain.NewBook()
		b := &pgx.Batch{}
		// In the partial index's order, so that a pass reads its rows and
		// stops, whatever the statistics say of how many match; SKIP
		// LOCKED never waits, so this order of locks cannot deadlock with
		// the workers'.
		b.Queue(selectAccounts+`WHERE period_day < $1::date ORDER BY period_day, account_id LIMIT $2 FOR UPDATE SKIP LOCKED`,
			domain.DayOf(now), limit).Query(func(rows pgx.Rows) error { return scanAccounts(rows, book, nil) })
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("find accounts whose day is over: %w", err)
		}
		if len(book.Accounts) == 0 {
			return nil
		}
		if err := recount(ctx, tx, book); err != nil {
			return err
		}
		c := decide(book, now)
		if len(c.Closed) == 0 {
			return nil
		}
		b = &pgx.Batch{}
		if err := (Source{}).queueWrites(b, &Writes{Changed: c.Closed, Outbox: c.Outbox, Now: now}); err != nil {
			return err
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write closed statements: %w", err)
		}
		closed = len(c.Closed)
		return nil
	})
	return closed, err
}

// PublishBalances runs one transaction that reads the limit accounts whose
// ids follow after in byte order (as Go sorts them), sharing their row
// locks, taken in the workers' order (a batch that changes one of them
// waits, so its own record follows this one), and writes msg's message for
// each to the outbox. It returns the last id read ("" when none was left)
// and how many it wrote.
func PublishBalances(ctx context.Context, pool *pgxpool.Pool, after string, limit int,
	msg func(a *domain.Account, now time.Time) outbox.Message) (last string, n int, err error) {
	err = pgx.BeginTxFunc(ctx, pool, readCommitted, func(tx pgx.Tx) error {
		now, err := readClock(ctx, tx, nil)
		if err != nil {
			return err
		}
		book := domain.NewBook()
		b := &pgx.Batch{}
		b.Queue(selectAccounts+`WHERE account_id = ANY(ARRAY(SELECT account_id FROM accounts
			WHERE (account_id COLLATE "C") > $1 ORDER BY (account_id COLLATE "C") LIMIT $2))
		ORDER BY account_id FOR SHARE`, after, limit).Query(func(rows pgx.Rows) error {
			return scanAccounts(rows, book, nil)
		})
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("read accounts: %w", err)
		}
		ids := slices.Sorted(maps.Keys(book.Accounts))
		if len(ids) == 0 {
			return nil
		}
		msgs := make([]outbox.Message, len(ids))
		for i, id := range ids {
			msgs[i] = msg(book.Accounts[id], now)
		}
		b = &pgx.Batch{}
		outbox.Queue(b, msgs)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write balance records: %w", err)
		}
		last, n = ids[len(ids)-1], len(ids)
		return nil
	})
	return last, n, err
}
