package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestServingRefusesADatabaseThatIsNotItsSchema starts a worker against a
// database a newer txpipe migrated, then against one missing a migration:
// each time it refuses to start, saying why, before touching Kafka.
func TestServingRefusesADatabaseThatIsNotItsSchema(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	start := func() error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		e := &env{stdout: io.Discard, stderr: io.Discard, lookup: testLookup}
		return run(ctx, []string{"worker", "--database-url", db.URL, "--kafka-brokers", "127.0.0.1:1",
			"--admin-addr", "127.0.0.1:0", "--group-id", "schema-test"}, e)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_from_the_future.sql')`); err != nil {
		t.Fatal(err)
	}
	if err := start(); err == nil || !strings.Contains(err.Error(), "newer than this txpipe") || !strings.Contains(err.Error(), "9999_from_the_future.sql") {
		t.Errorf("worker on a newer schema: run() = %v, want a refusal naming the migration", err)
	}
	if _, err := db.Pool.Exec(ctx, `DELETE FROM schema_migrations WHERE version IN (9999, 11)`); err != nil {
		t.Fatal(err)
	}
	if err := start(); err == nil || !strings.Contains(err.Error(), "run txpipe migrate") {
		t.Errorf("worker on an older schema: run() = %v, want a refusal saying to migrate", err)
	}
	if _, err := db.Pool.Exec(ctx, `DROP TABLE schema_migrations`); err != nil {
		t.Fatal(err)
	}
	if err := start(); err == nil || !strings.Contains(err.Error(), "no txpipe schema") {
		t.Errorf("worker on an empty database: run() = %v, want a refusal saying to migrate", err)
	}
}
