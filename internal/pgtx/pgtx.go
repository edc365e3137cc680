// Package pgtx runs transactions whose BEGIN and COMMIT travel inside the
// first and last batches of their statements.
//
// pgx.BeginFunc sends BEGIN and COMMIT as round trips of their own. A
// worker's batch or a relay's publish needs only two batches of statements,
// so queuing "BEGIN" ahead of the first batch and "COMMIT" after the last
// halves the round trips, which on a busy machine is a good part of a small
// transaction's time.
//
// The statements of a batch that carries COMMIT all run before pgx calls
// any of their callbacks: a check made in a callback (a row count, a value
// scanned) comes after the commit, and cannot stop it. What must hold for
// the transaction to commit is checked in the statements themselves, so
// that the server fails the transaction (ledger.CodeRowMissing, the
// relay's fenced settle).
package pgtx

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Run acquires a connection and calls fn with it. fn queues "BEGIN" first in
// its first batch and "COMMIT" last in its last one. When fn fails, Run
// rolls back whatever transaction is open; a connection that cannot roll
// back is closed, so the pool never hands out one inside a transaction.
func Run(ctx context.Context, pool *pgxpool.Pool, fn func(conn *pgxpool.Conn) error) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	err = fn(conn)
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, rerr := conn.Exec(rctx, "ROLLBACK"); rerr != nil {
			_ = conn.Conn().Close(rctx)
		}
	}
	return err
}
