package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/migrations"
	"github.com/txpipe/txpipe/producers/apikey"
)

// preloadVersion changes whenever what preload writes changes, so that a
// cached template built by an older loadgen is not reused.
const preloadVersion = 4

// preloadChunk is how many commands go in one transaction of the preload.
const preloadChunk = 50000

// preload fills pool's database, migrated and otherwise empty, with the
// history of spec, as the rows a real run leaves once the relay has
// published everything: accounts (the per-currency external ones too),
// transfers, entries and processed_commands. It leaves consumer_offsets
// and the outbox empty: the history's commands topic is not the one any
// scenario reads, and a stored offset for it would halt the workers of a
// scenario that happened to use the same group and topic names. The
// commands are submitted by an API key named "preload" it creates. It
// returns how many commands it stored.
//
// It writes with COPY (ledger.ImportHistory), one transaction per
// preloadChunk commands, while the next chunk is being decided.
func preload(ctx context.Context, pool *pgxpool.Pool, spec preloadSpec, log io.Writer) (int, error) {
	_, keyID, err := apikey.Create(ctx, pool, "preload", []string{apikey.ScopeCommandsWrite})
	if err != nil {
		return 0, fmt.Errorf("create the preload's API key: %w", err)
	}
	h := newHistory(spec, keyID)
	chunks := make(chan *ledger.History, 1)
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(chunks)
		for !h.done() {
			c := h.chunk(spec.chunkSize())
			select {
			case chunks <- c:
			case <-gctx.Done():
				return
			}
		}
	}()
	stored := 0
	last := time.Now()
	for c := range chunks {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return ledger.ImportHistory(ctx, tx, c, keyID) }); err != nil {
			cancel()
			for range chunks { // let the generator finish
			}
			return stored, fmt.Errorf("store commands %d–%d: %w", stored, stored+len(c.Decisions), err)
		}
		stored += len(c.Decisions)
		if time.Since(last) > 10*time.Second {
			fmt.Fprintf(log, "bench:   preload: %d/%d commands\n", stored, h.total)
			last = time.Now()
		}
	}
	// Each account as the last command left it (they were stored as they
	// stood at the end of the chunk that opened them).
	if err := ledger.SetAccounts(ctx, pool, h.book.Accounts, h.updated); err != nil {
		return stored, err
	}
	return stored, nil
}

// templatePrefix starts the name of every preload template database.
const templatePrefix = "txpipe_preload_"

// templateName names the template of spec: it changes with the
// migrations (their names and text), the preload's version and the spec,
// so a cached template is rebuilt when any of them changes.
func templateName(spec preloadSpec) (string, error) {
	ms, err := migrations.All()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "preload %d: %d commands, %d accounts, seed %d, span %s, chunk %d\n", preloadVersion, spec.commands, spec.accounts, spec.seed, spec.span, spec.chunkSize())
	for _, m := range ms {
		fmt.Fprintf(h, "%d %s %d\n%s\n", m.Version, m.Name, len(m.SQL), m.SQL)
	}
	return templatePrefix + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// staleTemplateAge is how old another preload template (other
// migrations, another spec, or a build that died) must be before
// ensureTemplate drops it: younger ones may belong to a run of another
// work tree going on now.
const staleTemplateAge = 24 * time.Hour

// ensureTemplate returns the name of the template database holding spec's
// preload, building it if no run built it before. A build goes into a
// database of its own, renamed to the template's name only once complete,
// so a half-built template is never used and two runs building at once
// cannot collide. The template accepts no connections: it is only copied.
// built says whether this call built it.
func ensureTemplate(ctx context.Context, adminURL string, spec preloadSpec, log io.Writer) (name string, built bool, err error) {
	name, err = templateName(spec)
	if err != nil {
		return "", false, err
	}
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", false, fmt.Errorf("connect to the database server: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	dropStaleTemplates(ctx, admin, name, log)
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", false, fmt.Errorf("look for the preload template: %w", err)
	}
	if exists {
		fmt.Fprintf(log, "bench: preload: reusing template %s (%d commands)\n", name, spec.commands)
		return name, false, nil
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	building := name + "_b" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", false, fmt.Errorf("create the preload database: %w", err)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = dropDatabase(context.WithoutCancel(ctx), admin, building)
		}
	}()
	if _, err := admin.Exec(ctx, fmt.Sprintf("COMMENT ON DATABASE %s IS 'txpipe loadgen preload, started %s'", building, time.Now().UTC().Format(time.RFC3339))); err != nil {
		return "", false, err
	}
	start := time.Now()
	fmt.Fprintf(log, "bench: preload: building template %s: %d commands over %d accounts …\n", name, spec.commands, spec.accounts)
	if err := fillTemplate(ctx, databaseURL(adminURL, building), spec, log); err != nil {
		return "", false, err
	}
	err = whileInUse(ctx, func() error {
		_, err := admin.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+name)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.DuplicateDatabase { // another run finished first
		fmt.Fprintf(log, "bench: preload: another run built %s meanwhile; using it\n", name)
		return name, false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("rename the preload database: %w", err)
	}
	renamed = true
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"); err != nil {
		return "", false, fmt.Errorf("mark the preload a template: %w", err)
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("COMMENT ON DATABASE %s IS 'txpipe loadgen preload, built %s'", name, time.Now().UTC().Format(time.RFC3339))); err != nil {
		return "", false, err
	}
	fmt.Fprintf(log, "bench: preload: built %s in %.0f s\n", name, time.Since(start).Seconds())
	return name, true, nil
}

// fillTemplate migrates the database at dbURL, preloads it and vacuums it:
// a database that has run for months has been vacuumed (hint bits set,
// statistics gathered) many times, and every copy then starts from that.
func fillTemplate(ctx context.Context, dbURL string, spec preloadSpec, log io.Writer) error {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return fmt.Errorf("migrate the preload database: %w", err)
	}
	if _, err := preload(ctx, pool, spec, log); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, "VACUUM (FREEZE, ANALYZE)"); err != nil {
		return fmt.Errorf("vacuum the preload: %w", err)
	}
	return nil
}

// dropStaleTemplates drops the preload templates other than keep (and
// builds that died) older than staleTemplateAge, by the time in their
// comment. It only reports what it could not drop.
func dropStaleTemplates(ctx context.Context, admin *pgx.Conn, keep string, log io.Writer) {
	rows, err := admin.Query(ctx, `SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '')
		FROM pg_database WHERE starts_with(datname, $1) AND datname <> $2`, templatePrefix, keep)
	if err != nil {
		return
	}
	var stale []string
	for rows.Next() {
		var name, comment string
		if rows.Scan(&name, &comment) != nil {
			continue
		}
		f := strings.Fields(comment)
		if len(f) == 0 {
			continue
		}
		at, err := time.Parse(time.RFC3339, f[len(f)-1])
		if err == nil && time.Since(at) > staleTemplateAge {
			stale = append(stale, name)
		}
	}
	rows.Close()
	for _, name := range stale {
		_, _ = admin.Exec(ctx, "ALTER DATABASE "+name+" WITH IS_TEMPLATE false")
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
			fmt.Fprintf(log, "bench: preload: could not drop the stale template %s: %v\n", name, err)
		} else {
			fmt.Fprintf(log, "bench: preload: dropped the stale template %s\n", name)
		}
	}
}

// cloneDatabase creates name as a copy of template. FILE_COPY copies the
// files instead of writing every page to the WAL (PostgreSQL 15's
// default), several times faster for a template of a gigabyte. The copy
// waits for a moment when no one else is copying or touching the
// template. It then syncs this host's disks: the copy leaves a gigabyte
// of dirty pages that the kernel would otherwise write back in one burst
// some 30 s later, inside the measured run, stalling every commit behind
// it (a cost of the benchmark's method, not of txpipe; with PostgreSQL on
// another host it syncs nothing of its).
func cloneDatabase(ctx context.Context, admin *pgx.Conn, template, name string) error {
	err := whileInUse(ctx, func() error {
		_, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s STRATEGY FILE_COPY", name, template))
		return err
	})
	if err != nil {
		return fmt.Errorf("copy the preload template: %w", err)
	}
	syncDisks()
	return nil
}

// whileInUse runs f again while it fails because another session is
// connected to the database it needs alone (object_in_use: a copy of the
// same template going on, an autovacuum worker), for up to 30 s.
func whileInUse(ctx context.Context, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.ObjectInUse || attempt == 60 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// databaseURL is server URL u with its database set to name.
func databaseURL(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.Path = "/" + name
	return p.String()
}
