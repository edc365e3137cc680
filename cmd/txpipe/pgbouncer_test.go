package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/ledgertest"
)

// TestPipelineThroughPgBouncer runs the pipeline through PgBouncer (Debian's,
// scripts/pgbouncer.sh) in transaction pooling mode, as production runs it:
// the database URL goes through it with default_query_exec_mode=cache_describe
// (PgBouncer 1.18 keeps no prepared statement across transactions), and the
// relay LISTENs on PostgreSQL itself. A thousand generated commands over the
// API must all be applied as the domain model says, txpipe verify must pass,
// and PgBouncer's own statistics must show the transactions went through it.
func TestPipelineThroughPgBouncer(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err != nil {
		t.Skip("pgbouncer is not installed (scripts/install-tools.sh installs it)")
	}
	p := newPipeline(t, 3)
	script(t, "pgbouncer.sh", "start")
	direct, err := url.Parse(p.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(direct.Path, "/")
	pooled := fmt.Sprintf("postgres://txpipe:txpipe@127.0.0.1:6432/%s?sslmode=disable&default_query_exec_mode=cache_describe", db)
	p.start(t, nil, "--database-url", pooled, "--relay-listen-url", p.db.URL)

	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := hex.EncodeToString(b[:])
	byID := map[string]domain.Command{}
	var accts []ledgertest.Account
	var setup []domain.Command
	for i := range 6 {
		a := ledgertest.Account{ID: fmt.Sprintf("pgb%d", i+1), Currency: "EUR"}
		accts = append(accts, a)
		setup = append(setup,
			domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-9000-%012d", prefix, i), Type: domain.TypeOpenAccount, AccountID: a.ID, Currency: a.Currency},
			domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-a000-%012d", prefix, i), Type: domain.TypeDeposit, AccountID: a.ID, Currency: a.Currency, Amount: 5000})
	}
	client := &retryingClient{t: t, base: p.api, key: p.key}
	if err := client.send(setup); err != nil {
		t.Fatal(err)
	}
	for _, c := range setup {
		byID[c.CommandID] = c
	}
	eventually(t, "the accounts are open and funded", func() bool {
		var n int
		_ = p.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM processed_commands`).Scan(&n)
		return n == len(setup)
	})
	gen := ledgertest.Generator{Accounts: accts, Base: time.Now().Add(24 * time.Hour), IDPrefix: prefix}
	cmds := gen.Commands(uint64(b[0])<<8|uint64(b[1]), 1000)
	for _, c := range cmds {
		byID[c.CommandID] = c
	}
	if err := client.send(cmds); err != nil {
		t.Fatal(err)
	}
	out := p.verify(t)
	replayModel(t, p, byID)

	// PgBouncer's admin console: the pipeline's connections are its
	// clients (its statistics lag by a minute; its client list does not).
	admin, err := pgx.Connect(context.Background(), "postgres://txpipe:txpipe@127.0.0.1:6432/pgbouncer?sslmode=disable&default_query_exec_mode=simple_protocol")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	rows, err := admin.Query(context.Background(), "SHOW CLIENTS")
	if err != nil {
		t.Fatal(err)
	}
	clients := 0
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range rows.FieldDescriptions() {
			if f.Name == "database" && fmt.Sprint(vals[i]) == db {
				clients++
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if clients == 0 {
		t.Errorf("PgBouncer has no client on %s: the pipeline did not go through it", db)
	}
	t.Logf("%d commands through PgBouncer (%d of its clients are the pipeline's)\n%s", len(byID), clients, out)
}
