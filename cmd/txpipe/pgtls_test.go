package main

import (
	"bytes"
	"context"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestPostgresOverVerifiedTLS connects to the real PostgreSQL (ssl=on, from
// scripts/postgres.sh) as a role that pg_hba admits only over TLS, with
// sslmode=verify-full through the database URL: txpipe works over it, a
// plaintext connection is refused, and a server certificate from another CA
// fails verification.
func TestPostgresOverVerifiedTLS(t *testing.T) {
	base := containertest.Env(t, "TXPIPE_DATABASE_TLS_URL")
	db := pgtest.New(t) // a fresh database owned by the app role
	tlsURL := tlsDatabaseURL(t, base, db)
	u, _ := url.Parse(tlsURL)
	ctx := context.Background()

	conn, err := pgx.Connect(ctx, tlsURL)
	if err != nil {
		t.Fatalf("connect with sslmode=verify-full: %v", err)
	}
	var ssl bool
	if err := conn.QueryRow(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl); err != nil || !ssl {
		t.Errorf("connection encrypted = %v (%v), want true", ssl, err)
	}
	conn.Close(ctx)

	// txpipe itself over it: migrations and a key, through --database-url.
	var out bytes.Buffer
	e := &env{stdout: &out, stderr: io.Discard, lookup: testLookup}
	if err := run(ctx, []string{"apikey", "create", "--database-url", tlsURL, "--name", "tls", "--scopes", "ledger:read"}, e); err != nil {
		t.Fatalf("txpipe apikey create over TLS: %v", err)
	}
	if !strings.Contains(out.String(), "api key: txp_") {
		t.Errorf("apikey create printed %q", out.String())
	}

	plain := *u
	q := plain.Query()
	q.Set("sslmode", "disable")
	plain.RawQuery = q.Encode()
	if c, err := pgx.Connect(ctx, plain.String()); err == nil {
		c.Close(ctx)
		t.Error("a plaintext connection of the TLS-only role was accepted")
	}

	_, _, otherCA, _ := testCA(t, t.TempDir())
	wrong := *u
	q = wrong.Query()
	q.Set("sslrootcert", otherCA)
	wrong.RawQuery = q.Encode()
	if c, err := pgx.Connect(ctx, wrong.String()); err == nil {
		c.Close(ctx)
		t.Error("a server certificate from another CA passed verify-full")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA failed for another reason: %v", err)
	}
}

// tlsDatabaseURL is base (TXPIPE_DATABASE_TLS_URL) pointed at db's database.
func tlsDatabaseURL(t *testing.T, base string, db *pgtest.DB) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	dbu, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = dbu.Path
	return u.String()
}
