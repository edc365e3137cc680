package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// queuePages is how many 8 KiB pages of PostgreSQL's notification queue
// are in use: pg_notification_queue_usage() is a share of 1 Mi pages (8 GiB).
func queuePages(t *testing.T, ctx context.Context, db *pgtest.DB) float64 {
	t.Helper()
	var usage float64
	if err := db.Pool.QueryRow(ctx, `SELECT pg_notification_queue_usage()`).Scan(&usage); err != nil {
		t.Fatal(err)
	}
	return usage * (1 << 20)
}

// TestNotifyQueueStaysBoundedWhileAListenerIsStuck holds a LISTEN session
// that never takes its notifications (inside an open transaction, as a
// paused relay's session is in effect), runs 40 000 small transactions
// that queue outbox rows, and requires the notification queue to stay near
// NotifyQueueMaxUsage instead of growing with every commit. While it is
// held, a relay still publishes (its poll interval wakes it); once the
// session goes, the queue empties.
//
// The numbers: one notification on "txpipe_outbox" with an empty payload
// takes 32 bytes (16 of header, the channel and two NULs, aligned to 4),
// so a page holds 256 and 40 000 commits that each notify fill 156 pages.
// Bounded, the workers stop notifying at 64 pages (NotifyQueueMaxUsage),
// plus what commits racing the check add (a page at most). The queue is
// the server's, shared with every database on it: the allowance of 100
// pages leaves room for other tests' notifications during the run without
// letting the unbounded 156 pass.
func TestNotifyQueueStaysBoundedWhileAListenerIsStuck(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	stuck, err := pgx.Connect(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close(context.Background())
	if _, err := stuck.Exec(ctx, "LISTEN "+outbox.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	held, err := stuck.Begin(ctx) // a backend inside a transaction takes no notifications
	if err != nil {
		t.Fatal(err)
	}
	before := queuePages(t, ctx, db)

	const commits, conns = 40000, 8
	errs := make(chan error, conns)
	for c := range conns {
		go func() {
			var err error
			for i := range commits / conns {
				b := &pgx.Batch{}
				b.Queue("BEGIN")
				outbox.Queue(b, []outbox.Message{{Topic: topic, Key: []byte("k"), Value: fmt.Appendf(nil, "%d-%d", c, i)}})
				b.Queue("COMMIT")
				if err = db.Pool.SendBatch(ctx, b).Close(); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Fatalf("commit: %v", err)
		}
	}
	grew := queuePages(t, ctx, db) - before
	t.Logf("%d commits with a stuck listener: the notification queue grew by %.0f pages", commits, grew)
	if grew > 100 {
		t.Fatalf("the notification queue grew by %.0f pages for %d commits, want at most 100 (it stops at %.0f)", grew, commits, outbox.NotifyQueueMaxUsage*(1<<20))
	}
	if pages := queuePages(t, ctx, db); pages < outbox.NotifyQueueMaxUsage*(1<<20) {
		t.Fatalf("the queue holds %.0f pages, want it at the bound for the rest of the test", pages)
	}

	// The queue is held: a commit now notifies nobody, yet the relay
	// publishes its row, woken by its poll interval.
	if _, err := db.Pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	stop := startRelay(t, db, kc.Writer(t), "relay-a", reg)
	defer stop()
	write(t, ctx, db, msg(topic, "k", "while-held"))
	if got := kc.ReadAll(ctx, t, topic, 1); len(got) != 1 || string(got[0].Value) != "while-held" {
		t.Fatalf("published %d records while the queue was held, want the row written then", len(got))
	}
	if u := metric(t, reg, "txpipe_postgres_notify_queue_usage_ratio"); u < outbox.NotifyQueueMaxUsage {
		t.Errorf("txpipe_postgres_notify_queue_usage_ratio = %v, want at least %v while held", u, outbox.NotifyQueueMaxUsage)
	}

	// The stuck session goes: the queue's tail moves past its entries.
	_ = held.Rollback(ctx)
	if err := stuck.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the notification queue is free again", func() bool { return queuePages(t, ctx, db) < outbox.NotifyQueueMaxUsage*(1<<20) })
}
