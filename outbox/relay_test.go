package outbox_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// insert queues one message in tx and returns the outbox id it got.
func insert(t *testing.T, tx pgx.Tx, topic, value string) int64 {
	t.Helper()
	ctx := context.Background()
	b := &pgx.Batch{}
	outbox.Queue(b, []outbox.Message{{Topic: topic, Key: []byte("k"), Value: []byte(value), Headers: map[string]string{"event_id": value}}})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		t.Fatalf("insert outbox row: %v", err)
	}
	var id int64
	if err := tx.QueryRow(ctx, `SELECT max(id) FROM outbox`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// runRelay runs a relay on db until the returned stop is called.
func runRelay(t *testing.T, ctx context.Context, db *pgtest.DB, kc *kafkatest.Cluster) (stop func()) {
	t.Helper()
	relay, err := outbox.NewRelay(outbox.RelayOptions{
		Pool: db.Pool, Publisher: kc.Writer(t), PollInterval: 50 * time.Millisecond,
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay.Run() = %v, want nil after cancel", err)
		}
	}
}

// TestRelayPublishesRowThatCommitsLate is the BIGSERIAL trap: T1 takes the
// lower id but commits after T2, and after the relay has already published
// T2's row. A relay that kept a high-water mark would skip T1's row forever.
func TestRelayPublishesRowThatCommitsLate(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t1, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Rollback(ctx)
	id1 := insert(t, t1, topic, "late")
	t2, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id2 := insert(t, t2, topic, "early")
	if err := t2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if id1 >= id2 {
		t.Fatalf("ids %d (late) and %d (early): the test needs the late row to have the lower id", id1, id2)
	}

	defer runRelay(t, ctx, db, kc)()

	first := kc.ReadAll(ctx, t, topic, 1)
	if len(first) != 1 || string(first[0].Value) != "early" {
		t.Fatalf("first published record = %v, want the early-committing row", first)
	}
	if err := t1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	all := kc.ReadAll(ctx, t, topic, 2)
	var values []string
	for _, m := range all {
		values = append(values, string(m.Value))
	}
	if len(values) != 2 || values[1] != "late" {
		t.Fatalf("published records = %q, want [early late]: the late-committing row was skipped", values)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_records`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		// The delete commits right after Kafka acknowledges; ReadAll can see
		// the record a moment before that, so wait for the outbox to drain.
		for left != 0 && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			_ = db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_records`).Scan(&left)
		}
		if left != 0 {
			t.Errorf("outbox still holds %d rows after both were published", left)
		}
	}
}

// TestRelayParksRowTooLargeToPublish: a row Kafka would refuse must not
// block the rows behind it.
func TestRelayParksRowTooLargeToPublish(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		insert(t, tx, topic, strings.Repeat("x", 2<<20))
		insert(t, tx, topic, "small")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer runRelay(t, ctx, db, kc)()
	got := kc.ReadAll(ctx, t, topic, 1)
	if len(got) != 1 || string(got[0].Value) != "small" {
		t.Fatalf("published %d records, want the small one", len(got))
	}
	drained(t, ctx, db) // the batch that published it has settled: the big row is parked by now
	var parked int
	var reason string
	if err := db.Pool.QueryRow(ctx, `SELECT count(*), min(reason) FROM outbox_parked`).Scan(&parked, &reason); err != nil {
		t.Fatal(err)
	}
	if parked != 1 || reason != "too_large" {
		t.Errorf("outbox_parked holds %d rows (reason %q), want 1 too_large", parked, reason)
	}
}
