package pgtx_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/pgtx"
)

func TestRunCommitsOrRollsBack(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE t (n int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	insert := func(n int, fail error) error {
		return pgtx.Run(ctx, db.Pool, func(conn *pgxpool.Conn) error {
			b := &pgx.Batch{}
			b.Queue("BEGIN")
			b.Queue(`INSERT INTO t VALUES ($1)`, n)
			if err := conn.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
			if fail != nil {
				return fail // the transaction is still open here
			}
			b = &pgx.Batch{}
			b.Queue("COMMIT")
			return conn.SendBatch(ctx, b).Close()
		})
	}
	boom := errors.New("boom")
	if err := insert(1, boom); !errors.Is(err, boom) {
		t.Fatalf("Run() = %v, want boom", err)
	}
	if err := insert(2, nil); err != nil {
		t.Fatal(err)
	}
	// A statement error inside the batch aborts the transaction: rolled back.
	if err := insert(2, nil); err == nil {
		t.Fatal("duplicate key committed")
	}
	rows, _ := db.Pool.Query(ctx, `SELECT n FROM t ORDER BY n`)
	ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 1 || ns[0] != 2 {
		t.Errorf("rows = %v, want only 2 (1 rolled back)", ns)
	}
	// Every connection back in the pool is outside any transaction.
	for _, c := range db.Pool.AcquireAllIdle(ctx) {
		if st := c.Conn().PgConn().TxStatus(); st != 'I' {
			t.Errorf("pooled connection in transaction state %q", st)
		}
		c.Release()
	}
}
