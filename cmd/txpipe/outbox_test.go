package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestOutboxParkedAndUnpark lists parked rows and moves them back into the
// outbox, with their ids, by reason or by id; unpark refuses to run
// without saying which rows.
func TestOutboxParkedAndUnpark(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox_parked (id, topic, key, value, headers, created_at, reason) VALUES
		(7, 'ledger.events.v1', 'acct-1', 'secret-value', '{"event_id": "e7"}', now(), 'topic_missing'),
		(8, 'ledger.postings.v1', 'acct-1', 'v8', '{}', now(), 'not_authorized'),
		(9, 'ledger.events.v1', NULL, 'v9', '{}', now(), 'invalid_record')`); err != nil {
		t.Fatal(err)
	}
	txpipe := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, append(args, "--database-url", db.URL), &env{stdout: &out, stderr: io.Discard, lookup: testLookup})
		return out.String(), err
	}
	outboxIDs := func() []int64 {
		rows, err := db.Pool.Query(ctx, `SELECT id FROM outbox ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var ids []int64
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		return ids
	}

	out, err := txpipe("outbox", "parked")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"7  ", "topic_missing", "not_authorized", "invalid_record", "3 parked rows listed"} {
		if !strings.Contains(out, want) {
			t.Errorf("outbox parked printed:\n%s\nwant %q in it", out, want)
		}
	}
	if strings.Contains(out, "secret-value") || strings.Contains(out, "acct-1") {
		t.Errorf("outbox parked printed a key or value:\n%s", out)
	}

	for _, args := range [][]string{
		{"outbox", "unpark"},
		{"outbox", "unpark", "--reason", "no_such_reason"},
		{"outbox", "unpark", "--ids", "7,x"},
	} {
		var uerr usageError
		if _, err := txpipe(args...); !errors.As(err, &uerr) {
			t.Errorf("txpipe %v = %v, want a usage error", args, err)
		}
	}
	if ids := outboxIDs(); len(ids) != 0 {
		t.Fatalf("outbox holds %v after refused unparks, want nothing", ids)
	}

	cases := []struct {
		args []string
		want []int64
	}{
		{[]string{"--reason", "topic_missing"}, []int64{7}},
		{[]string{"--ids", "9"}, []int64{7, 9}},
		{[]string{"--all"}, []int64{7, 8, 9}},
	}
	for _, c := range cases {
		if _, err := txpipe(append([]string{"outbox", "unpark"}, c.args...)...); err != nil {
			t.Fatalf("unpark %v: %v", c.args, err)
		}
		if ids := outboxIDs(); !slices.Equal(ids, c.want) {
			t.Errorf("after unpark %v the outbox holds ids %v, want %v", c.args, ids, c.want)
		}
	}
	if out, _ := txpipe("outbox", "parked"); !strings.Contains(out, "0 parked rows listed") {
		t.Errorf("outbox parked after unparking all printed:\n%s", out)
	}
}
