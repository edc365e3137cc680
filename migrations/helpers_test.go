package migrations_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/migrations"
)

// before applies, in a schema of its own on a connection of its own, the
// migrations before version, and returns the connection and that
// migration, for a test to leave rows as they stood then and apply it.
func before(t *testing.T, schema string, version int) (*pgx.Conn, migrations.Migration) {
	t.Helper()
	db := pgtest.New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, `CREATE SCHEMA `+schema+`; SET search_path = `+schema); err != nil {
		t.Fatal(err)
	}
	ms, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m migrations.Migration) bool { return m.Version == version })
	if i < 0 {
		t.Fatalf("no migration %d", version)
	}
	for _, m := range ms[:i] {
		if _, err := conn.Exec(ctx, m.SQL); err != nil {
			t.Fatalf("migration %s: %v", m.Name, err)
		}
	}
	return conn, ms[i]
}
