package migrations_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
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
