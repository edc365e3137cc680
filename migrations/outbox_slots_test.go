package migrations_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// TestOutboxSlotsKeepUnpublishedRows applies the migrations before 0011 in
// a schema of their own, leaves rows in the outbox as a relay would find
// them mid-traffic, and applies 0011: every row is still there to publish,
// with its id, its shard and its content, and new rows take ids after them.
func TestOutboxSlotsKeepUnpublishedRows(t *testing.T) {
	ctx := context.Background()
	conn, slots := before(t, "before_slots", 11)
	type row struct {
		ID    int64
		Shard int16
		Topic string
		Key   []byte
		Value []byte
	}
	read := func() []row {
		rows, err := conn.Query(ctx, `SELECT id, shard, topic, key, value FROM outbox ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (topic, key, value) SELECT 'events', ('acct-' || i)::bytea, ('v' || i)::bytea
		FROM generate_series(1, 50) AS i; DELETE FROM outbox WHERE id % 7 = 0`); err != nil {
		t.Fatal(err)
	}
	before := read()
	if _, err := conn.Exec(ctx, slots.SQL); err != nil {
		t.Fatalf("migration %s: %v", slots.Name, err)
	}
	after := read()
	if !slices.EqualFunc(before, after, func(a, b row) bool {
		return a.ID == b.ID && a.Shard == b.Shard && a.Topic == b.Topic && string(a.Key) == string(b.Key) && string(a.Value) == string(b.Value)
	}) {
		t.Fatalf("after migration 11 the outbox holds %d rows, want the %d from before, unchanged", len(after), len(before))
	}
	var next int64
	if err := conn.QueryRow(ctx, `INSERT INTO outbox (topic, value) VALUES ('events', 'new') RETURNING id`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	if last := before[len(before)-1].ID; next <= last {
		t.Errorf("a new row took id %d, want one after %d", next, last)
	}
}

// TestOutboxSlotsLeaveCleaningToTheRelay reads the storage parameters of
// every partition of the outbox: each must keep autovacuum away from the
// rows the relay truncates (0020), or the passes come back every naptime
// and hold up the relay's truncation and reads.
func TestOutboxSlotsLeaveCleaningToTheRelay(t *testing.T) {
	db := pgtest.New(t)
	rows, err := db.Pool.Query(context.Background(), `SELECT c.relname, coalesce(c.reloptions, '{}')
		FROM pg_partition_tree('outbox') AS p JOIN pg_class AS c ON c.oid = p.relid
		WHERE p.isleaf ORDER BY c.relname`)
	if err != nil {
		t.Fatal(err)
	}
	type slot struct {
		Name    string
		Options []string
	}
	slots, err := pgx.CollectRows(rows, pgx.RowToStructByPos[slot])
	if err != nil {
		t.Fatal(err)
	}
	if len(slots) != outbox.Slots {
		t.Fatalf("the outbox has %d partitions, want outbox.Slots = %d", len(slots), outbox.Slots)
	}
	want := []string{"autovacuum_vacuum_insert_threshold=-1", "autovacuum_analyze_threshold=2147483647",
		"autovacuum_analyze_scale_factor=0", "vacuum_truncate=false",
		"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=200000"}
	for _, s := range slots {
		for _, o := range want {
			if !slices.Contains(s.Options, o) {
				t.Errorf("%s has storage parameters %v, want %s among them", s.Name, s.Options, o)
			}
		}
	}
}
