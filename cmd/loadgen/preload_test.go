package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// smallSpec is a preload small enough for a test, over two days so that
// the USD accounts meet their daily limit, in several transactions.
func smallSpec(seed uint64) preloadSpec {
	return preloadSpec{commands: 20000, accounts: 200, seed: seed, end: time.Now().Add(-time.Hour), span: 48 * time.Hour, chunk: 3000}
}

// TestPreloadKeepsTheLedgerInvariants checks the preloaded rows as the
// ledger's own checks would a real run's: each query counts violations.
func TestPreloadKeepsTheLedgerInvariants(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	spec := smallSpec(5)
	n, err := preload(ctx, db.Pool, spec, io.Discard)
	if err != nil {
		t.Fatalf("preload: %v", err)
	}
	if n != spec.commands {
		t.Errorf("preload stored %d commands, want %d", n, spec.commands)
	}
	for _, c := range []struct{ name, query string }{
		{"processed commands", `SELECT $1 - count(*) FROM processed_commands`},
		{"money conserved per currency", `SELECT count(*) FROM (SELECT currency FROM accounts GROUP BY currency HAVING sum(balance) <> 0) x`},
		{"one external account per currency", `SELECT count(*) FROM (SELECT currency FROM accounts GROUP BY currency
			HAVING count(*) FILTER (WHERE external AND account_id = '@external:' || currency) <> 1 OR count(*) FILTER (WHERE external) <> 1) x`},
		{"balance and version are the entries' sum and count, versions contiguous from 1", `SELECT count(*) FROM accounts a
			LEFT JOIN (SELECT account_id, sum(amount) s, count(*) n, min(account_version) lo, max(account_version) hi FROM entries GROUP BY account_id) e USING (account_id)
			WHERE a.balance <> coalesce(e.s, 0) OR a.version <> coalesce(e.n, 0) OR coalesce(e.hi, 0) <> coalesce(e.n, 0) OR coalesce(e.lo, 1) <> 1`},
		{"balance_after is the running balance", `SELECT count(*) FROM (SELECT balance_after,
			sum(amount) OVER (PARTITION BY account_id ORDER BY account_version) AS running FROM entries) x WHERE balance_after <> running`},
		{"entries of each command sum to zero and belong to an applied command", `SELECT count(*) FROM
			(SELECT command_id, sum(amount) s, min(command_type) t FROM entries GROUP BY command_id) e LEFT JOIN processed_commands p USING (command_id)
			WHERE e.s <> 0 OR p.status IS DISTINCT FROM 'applied' OR p.type <> e.t`},
		{"a rejection has a reason and left no entries or transfer", `SELECT count(*) FROM processed_commands p WHERE status = 'rejected'
			AND (reason IS NULL OR EXISTS (SELECT 1 FROM entries e WHERE e.command_id = p.command_id)
				OR EXISTS (SELECT 1 FROM transfers t WHERE t.transfer_id = p.command_id))`},
		{"an application has no reason", `SELECT count(*) FROM processed_commands WHERE status = 'applied' AND reason IS NOT NULL`},
		{"every applied movement made its transfer", `SELECT count(*) FROM processed_commands p WHERE status = 'applied'
			AND type IN ('transfer', 'deposit', 'withdraw', 'hold') AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.transfer_id = p.command_id)`},
		{"every transfer was made by an applied command of its kind", `SELECT count(*) FROM transfers t LEFT JOIN processed_commands p ON p.command_id = t.transfer_id
			WHERE p.status IS DISTINCT FROM 'applied' OR p.type <> CASE t.kind WHEN 'withdrawal' THEN 'withdraw' ELSE t.kind END`},
		{"held is the sum of pending holds", `SELECT count(*) FROM accounts a WHERE held <> coalesce((SELECT sum(amount) FROM transfers t
			WHERE t.kind = 'hold' AND t.status = 'pending' AND t.from_account_id = a.account_id), 0)`},
		{"daily debits are that day's transfers, withdrawals and holds", `SELECT count(*) FROM accounts a WHERE NOT external AND
			(daily_debit_day IS NULL AND daily_debited <> 0 OR daily_debit_day IS NOT NULL AND daily_debited <> (
				SELECT coalesce(sum(t.amount), 0) FROM transfers t JOIN processed_commands p ON p.command_id = t.transfer_id
				WHERE t.from_account_id = a.account_id AND t.kind IN ('transfer', 'withdrawal', 'hold')
					AND (p.processed_at AT TIME ZONE 'UTC')::date = a.daily_debit_day) + (
				SELECT coalesce(sum(l.amount + l.fee), 0) FROM transfer_legs l JOIN processed_commands p ON p.command_id = l.transfer_id
				WHERE l.from_account_id = a.account_id AND (p.processed_at AT TIME ZONE 'UTC')::date = a.daily_debit_day))`},
		{"external accounts keep no daily debits", `SELECT count(*) FROM accounts WHERE external AND (daily_debit_day IS NOT NULL OR daily_debited <> 0)`},
		{"seq numbers the decisions in order", `SELECT count(*) FROM (SELECT processed_at, lag(processed_at) OVER (ORDER BY seq) AS prev
			FROM processed_commands) x WHERE processed_at < prev`},
		{"source offsets contiguous from 0 per partition", `SELECT count(*) FROM (SELECT source_partition p, count(*) n, min(source_offset) lo, max(source_offset) hi
			FROM processed_commands GROUP BY 1) x WHERE lo <> 0 OR hi <> n - 1 OR p < 0 OR p >= 12`},
		{"accepted before processed", `SELECT count(*) FROM processed_commands WHERE accepted_at IS NULL OR accepted_at > processed_at`},
		{"submitted by the preload's key", `SELECT count(*) FROM processed_commands p WHERE NOT EXISTS
			(SELECT 1 FROM api_keys k WHERE k.key_id = p.submitted_by AND k.name = 'preload')`},
		{"entries submitted by their command's key", `SELECT count(*) FROM entries e JOIN processed_commands p USING (command_id) WHERE e.submitted_by <> p.submitted_by`},
		{"no stored offsets, nothing in the outbox", `SELECT (SELECT count(*) FROM consumer_offsets) + (SELECT count(*) FROM outbox)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var bad int64
			args := []any{}
			if c.name == "processed commands" {
				args = append(args, spec.commands)
			}
			if err := db.Pool.QueryRow(ctx, c.query, args...).Scan(&bad); err != nil {
				t.Fatal(err)
			}
			if bad != 0 {
				t.Errorf("%d violations", bad)
			}
		})
	}
	t.Run("the history is varied", func(t *testing.T) {
		for _, q := range []string{
			`SELECT count(*) FROM processed_commands WHERE reason = 'insufficient_funds'`,
			`SELECT count(*) FROM processed_commands WHERE reason = 'daily_limit_exceeded'`,
			`SELECT count(*) FROM transfers WHERE kind = 'hold' AND status = 'pending'`,
			`SELECT count(*) FROM transfers WHERE kind = 'hold' AND status = 'captured'`,
			`SELECT count(*) FROM transfers WHERE kind = 'hold' AND status = 'released'`,
			`SELECT count(*) FROM transfers WHERE status = 'reversed'`,
			`SELECT count(*) FROM transfers WHERE status = 'posted' AND reversed_amount > 0`,
			`SELECT count(*) FROM entries WHERE command_type = 'withdraw'`,
			`SELECT count(DISTINCT transfer_id) FROM transfer_legs`,
			`SELECT count(*) FROM accounts WHERE currency = 'USD' AND balance < 0`,
		} {
			var n int
			if err := db.Pool.QueryRow(ctx, q).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				t.Errorf("%s = 0, want some", q)
			}
		}
	})
	t.Run("fingerprints are the workers'", func(t *testing.T) {
		checkFingerprints(t, db.Pool)
	})
}

// checkFingerprints rebuilds the command of every applied transfer,
// deposit and withdrawal from its transfer row and checks that the stored
// fingerprint is the one a worker computes for it, so that a redelivery
// of the command would be a duplicate, not a conflict.
func checkFingerprints(t *testing.T, pool *pgxpool.Pool) {
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT t.transfer_id::text, t.kind, t.from_account_id, t.to_account_id, t.amount, t.currency, p.fingerprint,
			(SELECT jsonb_agg(jsonb_build_object('from_account_id', l.from_account_id, 'to_account_id', l.to_account_id,
				'amount', l.amount, 'currency', l.currency) ORDER BY l.leg) FROM transfer_legs l WHERE l.transfer_id = t.transfer_id)
		FROM transfers t JOIN processed_commands p ON p.command_id = t.transfer_id WHERE t.kind <> 'hold'`)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for rows.Next() {
		var id, kind, from, to, currency string
		var amount int64
		var fp, legs []byte
		if err := rows.Scan(&id, &kind, &from, &to, &amount, &currency, &fp, &legs); err != nil {
			t.Fatal(err)
		}
		cmd := domain.Command{CommandID: id, Amount: amount, Currency: currency}
		switch kind {
		case "transfer":
			cmd.Type, cmd.FromAccountID, cmd.ToAccountID = domain.TypeTransfer, from, to
		case "deposit":
			cmd.Type, cmd.AccountID = domain.TypeDeposit, to
		case "withdrawal":
			cmd.Type, cmd.AccountID = domain.TypeWithdraw, from
		case "transaction":
			cmd = domain.Command{CommandID: id, Type: domain.TypeTransaction}
			if err := json.Unmarshal(legs, &cmd.Legs); err != nil {
				t.Fatal(err)
			}
		}
		if want := cmd.Fingerprint(); !slices.Equal(fp, want) {
			t.Errorf("command %s: fingerprint %x, want %x", id, fp, want)
		}
		checked++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if checked < 1000 {
		t.Errorf("checked %d fingerprints, want at least 1000", checked)
	}
}

// TestPreloadIsDeterministic: the same spec gives the same commands, so a
// template is what its name says.
func TestPreloadIsDeterministic(t *testing.T) {
	spec := smallSpec(9)
	spec.commands = 3000
	ids := func() []string {
		h := newHistory(spec, "k")
		var out []string
		for !h.done() {
			for _, p := range h.chunk(700).Decisions {
				out = append(out, p.ID+string(p.Fingerprint))
			}
		}
		return out
	}
	a, b := ids(), ids()
	if len(a) != spec.commands || !slices.Equal(a, b) {
		t.Errorf("two histories of one spec: %d and %d commands, equal %v; want %d, equal", len(a), len(b), slices.Equal(a, b), spec.commands)
	}
}

// TestTemplateIsBuiltOnceAndCopied builds a small template, finds it built
// the second time, and copies it.
func TestTemplateIsBuiltOnceAndCopied(t *testing.T) {
	adminURL := containertest.Address(t, pgtest.EnvVar, containertest.PostgresURL)
	ctx := context.Background()
	var b [8]byte
	_, _ = rand.Read(b[:])
	spec := smallSpec(binary.LittleEndian.Uint64(b[:])) // a template of its own
	spec.commands = 2000
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(ctx) })
	name, built, err := ensureTemplate(ctx, adminURL, spec, io.Discard)
	t.Cleanup(func() {
		if name == "" {
			return
		}
		_, _ = admin.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE false")
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop template: %v", err)
		}
	})
	if err != nil || !built {
		t.Fatalf("ensureTemplate = %s, built %v, %v; want built", name, built, err)
	}
	again, built, err := ensureTemplate(ctx, adminURL, spec, io.Discard)
	if err != nil || built || again != name {
		t.Fatalf("ensureTemplate again = %s, built %v, %v; want %s, not built", again, built, err, name)
	}
	var allow, isTemplate bool
	if err := admin.QueryRow(ctx, `SELECT datallowconn, datistemplate FROM pg_database WHERE datname = $1`, name).Scan(&allow, &isTemplate); err != nil {
		t.Fatal(err)
	}
	if allow || !isTemplate {
		t.Errorf("template allows connections %v, is a template %v; want false, true", allow, isTemplate)
	}
	copyName := "txpipe_bench_test_" + name[len(templatePrefix):]
	if err := cloneDatabase(ctx, admin, name, copyName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+copyName+" WITH (FORCE)"); err != nil {
			t.Errorf("drop copy: %v", err)
		}
	})
	c, err := pgx.Connect(ctx, databaseURL(adminURL, copyName))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM processed_commands`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != spec.commands {
		t.Errorf("the copy holds %d processed commands, want %d", n, spec.commands)
	}
}

// TestOutboxBytes measures the outbox plain and partitioned, as the
// redesigned outbox may be.
func TestOutboxBytes(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	plain, err := outboxBytes(ctx, db.Pool)
	if err != nil || plain <= 0 {
		t.Fatalf("outboxBytes of the plain outbox = %d, %v; want its size", plain, err)
	}
	for _, q := range []string{
		`ALTER TABLE outbox RENAME TO outbox_plain`,
		`CREATE TABLE outbox (id bigint, v text) PARTITION BY RANGE (id)`,
		`CREATE TABLE outbox_1 PARTITION OF outbox FOR VALUES FROM (0) TO (1000)`,
		`CREATE TABLE outbox_2 PARTITION OF outbox FOR VALUES FROM (1000) TO (2000)`,
		`INSERT INTO outbox SELECT g, repeat('x', 100) FROM generate_series(0, 1999) g`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var want int64
	if err := db.Pool.QueryRow(ctx, `SELECT pg_total_relation_size('outbox_1') + pg_total_relation_size('outbox_2')`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	got, err := outboxBytes(ctx, db.Pool)
	if err != nil || got != want || want == 0 {
		t.Errorf("outboxBytes of a partitioned outbox = %d, %v; want %d, its partitions' sum", got, err, want)
	}
}
