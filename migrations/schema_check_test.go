package migrations_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/migrations"
)

// TestDatabaseAheadOfTheBinaryIsRefused records a migration the binary
// does not know, as a newer txpipe would have: Check and Up refuse with a
// message naming it, and Up applies nothing.
func TestDatabaseAheadOfTheBinaryIsRefused(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if err := migrations.Check(ctx, db.Pool); err != nil {
		t.Fatalf("Check on a migrated database: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_from_the_future.sql')`); err != nil {
		t.Fatal(err)
	}
	err := migrations.Check(ctx, db.Pool)
	if !errors.Is(err, migrations.ErrSchemaAhead) || !strings.Contains(err.Error(), "9999_from_the_future.sql") {
		t.Fatalf("Check = %v, want migrations.ErrSchemaAhead naming the migration", err)
	}
	n, err := migrations.Up(ctx, db.Pool, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !errors.Is(err, migrations.ErrSchemaAhead) || n != 0 {
		t.Fatalf("Up = %d, %v, want 0 and migrations.ErrSchemaAhead", n, err)
	}

	if _, err := db.Pool.Exec(ctx, `DELETE FROM schema_migrations WHERE version IN (9999, 11)`); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, db.Pool); !errors.Is(err, migrations.ErrSchemaBehind) || !strings.Contains(err.Error(), "0011_hot_tables.sql") {
		t.Fatalf("Check = %v, want migrations.ErrSchemaBehind naming 0011", err)
	}
}
