// Package pgtest gives each test its own PostgreSQL database, migrated to the
// current schema and dropped when the test ends. The server comes from
// TXPIPE_DATABASE_URL (what scripts/services.sh prints), or from a container
// when that is unset and a Docker engine answers (see internal/containertest).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/migrations"
)

// EnvVar names the server every test database is created on.
const EnvVar = "TXPIPE_DATABASE_URL"

// DB is one test's database.
type DB struct {
	Pool *pgxpool.Pool
	// URL connects to this database (for a txpipe process under test).
	URL string
}

// New creates a fresh database, applies the migrations, and drops the
// database (forcing out connections) when the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	return NewOn(t, containertest.Address(t, EnvVar, containertest.PostgresURL))
}

// NewOn is New on the server of base, a URL that may name several hosts
// (a primary and its standby, with target_session_attrs=read-write).
func NewOn(t testing.TB, base string) *DB {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to %s: %v", EnvVar, err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "txpipe_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", EnvVar, err)
	}
	u.Path = "/" + name
	db := &DB{URL: u.String()}
	t.Cleanup(func() {
		if db.Pool != nil {
			db.Pool.Close()
		}
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop test database: %v", err)
			return
		}
		defer c.Close(ctx)
		// FORCE cannot terminate a session it may not signal (an
		// autovacuum worker caught in the database, say: SQLSTATE 42501),
		// and such a session leaves on its own; try again for a while.
		for attempt := 1; ; attempt++ {
			_, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			if err == nil {
				return
			}
			if attempt == 50 {
				t.Errorf("drop test database: %v", err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	db.Pool, err = pgxpool.New(ctx, db.URL)
	if err != nil {
		t.Fatalf("open test database: %v", err)
	}
	if _, err := migrations.Up(ctx, db.Pool, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("migrate test database: %v", err)
	}
	return db
}
