package migrations_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestAccountsAreKeptWithoutForeignKeys applies the migrations before 0022
// in a schema of their own, leaves an account with an entry and a transfer
// as a worker would (one foreign key under another name, as a restore may
// leave it), and applies 0022: every foreign key to accounts is gone, and every way of removing or renaming an account, which they
// refused for a named one, is now refused for any one, while the updates a
// worker makes still go through.
func TestAccountsAreKeptWithoutForeignKeys(t *testing.T) {
	ctx := context.Background()
	conn, kept := before(t, "before_kept", 22)
	if _, err := conn.Exec(ctx, `
		INSERT INTO accounts (account_id, currency, status) VALUES ('alice', 'EUR', 'active'), ('bob', 'EUR', 'active'), ('idle', 'EUR', 'active');
		INSERT INTO entries (account_id, account_version, command_id, command_type, currency, amount, balance_after, created_at)
			VALUES ('alice', 1, gen_random_uuid(), 'deposit', 'EUR', 5, 5, now());
		INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount, status, created_at, updated_at)
			VALUES (gen_random_uuid(), 'transfer', 'alice', 'bob', 'EUR', 5, 'posted', now(), now());
		-- as a restore might have named it
		ALTER TABLE entries RENAME CONSTRAINT entries_account_id_fkey TO restored_entries_fk`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, kept.SQL); err != nil {
		t.Fatalf("migration %s: %v", kept.Name, err)
	}
	var fks int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'accounts'::regclass`).Scan(&fks); err != nil || fks != 0 {
		t.Fatalf("foreign keys to accounts after 0022: %d, %v; want none", fks, err)
	}
	for _, stmt := range []string{
		`DELETE FROM accounts WHERE account_id = 'alice'`,
		`DELETE FROM accounts WHERE account_id = 'idle'`, // named by no row: refused all the same
		`DELETE FROM accounts WHERE false`,
		`TRUNCATE accounts CASCADE`,
		`UPDATE accounts SET account_id = 'alice2' WHERE account_id = 'alice'`,
		`UPDATE accounts SET account_id = account_id WHERE account_id = 'idle'`,
	} {
		_, err := conn.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.RestrictViolation {
			t.Errorf("%s: %v; want %s (restrict_violation)", stmt, err, pgerrcode.RestrictViolation)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM accounts`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("accounts after the refused statements: %d, %v; want 3", n, err)
	}
	// What a worker's batch does still works: update balances and
	// versions, insert accounts.
	if _, err := conn.Exec(ctx, `UPDATE accounts SET balance = balance + 5, version = version + 1 WHERE account_id = 'alice';
		INSERT INTO accounts (account_id, currency, status) VALUES ('carol', 'EUR', 'active')`); err != nil {
		t.Fatalf("a worker's update after 0022: %v", err)
	}
}
