// Package migrations holds txpipe's SQL schema as numbered files embedded in
// the binary, and applies the pending ones in order.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql
var files embed.FS

// lockKey is the advisory lock that serializes concurrent migrate runs (e.g.
// several containers starting at once).
const lockKey = 0x7478706970650001

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) { return parse(files) }

// parse reads the numbered .sql files of fsys. Two files with one number
// are refused: which one ran would depend on the order they were listed
// in, and the other would be recorded as applied without running.
func parse(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var ms []Migration
	byVersion := make(map[int]string)
	for _, name := range names {
		prefix, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(prefix)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and '_'", name)
		}
		if other, dup := byVersion[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s share the number %d: renumber one", other, name, v)
		}
		byVersion[v] = name
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(body)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	return ms, nil
}

// ErrSchemaAhead says the database holds migrations this binary does not
// know: a newer txpipe migrated it. Running older code against it could
// write rows the newer schema does not expect, so processes refuse to start.
var ErrSchemaAhead = errors.New("the database schema is newer than this txpipe")

// ErrSchemaDiverged says the database recorded, under one of this binary's
// numbers, a migration of another name: two lines of development each
// added their own. Neither binary's schema is the database's.
var ErrSchemaDiverged = errors.New("the database schema has diverged from this txpipe's")

// ErrSchemaBehind says migrations of this binary are not applied yet.
var ErrSchemaBehind = errors.New("the database schema is older than this txpipe")

// Check compares the migrations recorded in the database with the
// binary's: it returns an error wrapping ErrSchemaAhead when the database
// holds one the binary does not know, ErrSchemaBehind when one of the
// binary's is missing (txpipe migrate applies it), nil when they match.
func Check(ctx context.Context, db querier) error {
	ms, err := All()
	if err != nil {
		return err
	}
	done, err := recorded(ctx, db)
	if err != nil {
		return fmt.Errorf("%w (has txpipe migrate run?)", err)
	}
	return compare(ms, done)
}

type querier interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}

// recorded returns the migrations schema_migrations says were applied.
func recorded(ctx context.Context, db querier) ([]Migration, error) {
	rows, err := db.Query(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	ms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Migration, error) {
		var m Migration
		err := r.Scan(&m.Version, &m.Name)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	return ms, nil
}

// compare says how the applied migrations stand against the known ones.
func compare(known, applied []Migration) error {
	names := make(map[int]string, len(known))
	for _, m := range known {
		names[m.Version] = m.Name
	}
	var unknown, diverged []string
	done := make(map[int]bool, len(applied))
	for _, m := range applied {
		done[m.Version] = true
		name, ok := names[m.Version]
		switch {
		case !ok:
			unknown = append(unknown, m.Name)
		case name != m.Name:
			diverged = append(diverged, fmt.Sprintf("%s where this binary has %s", m.Name, name))
		}
	}
	if len(diverged) > 0 {
		return fmt.Errorf("%w: the database has %s; reconcile the migrations", ErrSchemaDiverged, strings.Join(diverged, ", "))
	}
	if len(unknown) > 0 {
		newest := "none"
		if len(known) > 0 {
			newest = known[len(known)-1].Name
		}
		return fmt.Errorf("%w: it has migration(s) %s, this binary knows up to %s; run a txpipe at least as new",
			ErrSchemaAhead, strings.Join(unknown, ", "), newest)
	}
	var missing []string
	for _, m := range known {
		if !done[m.Version] {
			missing = append(missing, m.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: migration(s) %s not applied; run txpipe migrate", ErrSchemaBehind, strings.Join(missing, ", "))
	}
	return nil
}

// Up applies every migration not yet recorded in schema_migrations, each in
// its own transaction, holding a transaction-level advisory lock so that
// concurrent runs apply each migration once. It returns how many it applied.
// A database holding a migration this binary does not know is refused
// (ErrSchemaAhead) before anything is applied.
func Up(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (int, error) {
	ms, err := All()
	if err != nil {
		return 0, err
	}
	applied := 0
	for _, m := range ms {
		did := false
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(lockKey)); err != nil {
				return fmt.Errorf("lock: %w", err)
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
				version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				return fmt.Errorf("create schema_migrations: %w", err)
			}
			done, err := recorded(ctx, tx)
			if err != nil {
				return err
			}
			if err := compare(ms, done); errors.Is(err, ErrSchemaAhead) || errors.Is(err, ErrSchemaDiverged) {
				return err
			}
			if slices.ContainsFunc(done, func(r Migration) bool { return r.Version == m.Version }) {
				return nil
			}
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return fmt.Errorf("run: %w", err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
				return fmt.Errorf("record: %w", err)
			}
			did = true
			return nil
		})
		if errors.Is(err, ErrSchemaAhead) || errors.Is(err, ErrSchemaDiverged) {
			return applied, err
		}
		if err != nil {
			return applied, fmt.Errorf("migration %s: %w", m.Name, err)
		}
		if did {
			applied++
			log.Info("migration applied", "version", m.Version, "name", m.Name)
		}
	}
	return applied, nil
}
