package outbox_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// reclaimingRelay runs a relay (relayWith's) that looks for slots to
// truncate every 20 ms (instead of 1.5 s), so truncations race the test's
// writers, until the test ends or stop is called.
func reclaimingRelay(t *testing.T, db *pgtest.DB, pub outbox.Publisher, id string) (reg *prometheus.Registry, stop func()) {
	t.Helper()
	reg, _, stop = relayWith(t, db, outbox.ReclaimEvery(outbox.RelayOptions{Publisher: pub, ID: id}, 20*time.Millisecond))
	return reg, stop
}

// truncations is how many truncation attempts of the relay ended in outcome.
func truncations(t *testing.T, reg *prometheus.Registry, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "txpipe_relay_outbox_truncations_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no txpipe_relay_outbox_truncations_total{outcome=%q}", outcome)
	return 0
}

// oldSlot returns a slot s such that s, s+1 and s+2 are neither the
// current window's slot nor the previous or next one's for at least two
// more windows: slots the relay may truncate, as a transaction that began
// a while ago may write them.
func oldSlot(t *testing.T, ctx context.Context, db *pgtest.DB) int16 {
	t.Helper()
	var s int16
	if err := db.Pool.QueryRow(ctx, `SELECT mod(outbox_slot(now()) + 4, $1)::int2`, outbox.Slots).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// insertInSlot writes a row into slot s, as a transaction that began in
// that slot's window does, and returns its id.
func insertInSlot(t *testing.T, ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, s int16, topic, key, value string) int64 {
	t.Helper()
	var id int64
	err := q.QueryRow(ctx, `INSERT INTO outbox (slot, topic, key, value, headers) VALUES ($1, $2, $3, $4, jsonb_build_object('event_id', $5::text))
		RETURNING id`, s, topic, []byte(key), []byte(value), value).Scan(&id)
	if err != nil {
		t.Fatalf("insert into slot %d: %v", s, err)
	}
	return id
}

func slotBytes(t *testing.T, ctx context.Context, db *pgtest.DB, s int16) int64 {
	t.Helper()
	var n int64
	if err := db.Pool.QueryRow(ctx, `SELECT pg_relation_size(format('outbox_slot_%s', $1::int)::regclass)`, s).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSlotsMatchTheSchema: the relay's ring is the schema's: Slots
// partitions, one a SlotWindow, each window's slot the one after the last.
func TestSlotsMatchTheSchema(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	var partitions int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'outbox'::regclass`).Scan(&partitions); err != nil {
		t.Fatal(err)
	}
	if partitions != outbox.Slots {
		t.Errorf("the outbox has %d partitions, want outbox.Slots = %d", partitions, outbox.Slots)
	}
	window := outbox.SlotWindow.Seconds()
	for _, at := range []string{"2026-01-01 00:00:00+00", "2026-01-01 00:00:02.999+00", "2031-07-04 13:37:55.5+02"} {
		var s, next, later int16
		if err := db.Pool.QueryRow(ctx, `SELECT outbox_slot($1::timestamptz), outbox_slot($1::timestamptz + make_interval(secs => $2)),
			outbox_slot($1::timestamptz + make_interval(secs => $2 * $3))`, at, window, outbox.Slots).Scan(&s, &next, &later); err != nil {
			t.Fatal(err)
		}
		if next != (s+1)%outbox.Slots || later != s {
			t.Errorf("outbox_slot(%s) = %d, a window later %d, %d windows later %d; want %d, %d",
				at, s, next, outbox.Slots, later, (s+1)%outbox.Slots, s)
		}
	}
	var same, after int16
	if err := db.Pool.QueryRow(ctx, `SELECT count(DISTINCT outbox_slot(t)), outbox_slot(max(t) + interval '1 ms') - outbox_slot(max(t))
		FROM generate_series('2026-01-01 00:00:00+00'::timestamptz, '2026-01-01 00:00:00+00'::timestamptz + make_interval(secs => $1) - interval '1 ms',
			interval '1 ms') AS t`, window).Scan(&same, &after); err != nil {
		t.Fatal(err)
	}
	if same != 1 || (after != 1 && after != 1-outbox.Slots) {
		t.Errorf("one window of outbox_slot spans %d slots and the next instant moves by %d; want one slot, then the next: the window is not outbox.SlotWindow", same, after)
	}
	var def, now int16
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		outbox.Queue(b, []outbox.Message{{Topic: "t", Value: []byte("v")}})
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT slot, outbox_slot(now()) FROM outbox`).Scan(&def, &now)
	})
	if err != nil {
		t.Fatal(err)
	}
	if def != now {
		t.Errorf("Queue wrote slot %d, want the slot of its transaction's start, %d", def, now)
	}
}

// TestTruncationWaitsForALateCommit: a transaction that began in an old
// slot's window writes a row there and commits only after the relay tried
// to truncate that slot. The row must be published, never truncated away:
// the truncation takes the slot's lock (which waits for, or gives up on,
// the writer) and only then checks that the slot is empty.
func TestTruncationWaitsForALateCommit(t *testing.T) {
	t.Run("server default", func(t *testing.T) { truncationWaitsForALateCommit(t, "") })
	// Under a stricter default the truncation's snapshot would be taken by
	// its first statement, before the lock wait, and its emptiness check
	// would miss the row committed meanwhile: the relay's transactions say
	// READ COMMITTED themselves.
	t.Run("repeatable read by default", func(t *testing.T) { truncationWaitsForALateCommit(t, "repeatable read") })
}

func truncationWaitsForALateCommit(t *testing.T, isolation string) {
	db := pgtest.New(t)
	if isolation != "" {
		if _, err := db.Pool.Exec(context.Background(), fmt.Sprintf(
			`DO $$ BEGIN EXECUTE format('ALTER DATABASE %%I SET default_transaction_isolation = %%L', current_database(), %s); END $$`,
			quoteLiteral(isolation))); err != nil {
			t.Fatal(err)
		}
		db.Pool.Reset() // new connections take the default
	}
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := oldSlot(t, ctx, db)

	late, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	insertInSlot(t, ctx, late, s, topic, "k", "late")
	insertInSlot(t, ctx, db.Pool, s, topic, "k", "early") // committed at once

	reg, _ := reclaimingRelay(t, db, kc.Writer(t), "relay-a")
	if got := kc.ReadAll(ctx, t, topic, 1); len(got) != 1 || string(got[0].Value) != "early" {
		t.Fatalf("first records %v, want early", got)
	}
	waitFor(t, "the relay tries to truncate the slot the open transaction wrote", func() bool {
		var waiting bool
		_ = db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted
			AND relation = format('outbox_slot_%s', $1::int)::regclass)`, s).Scan(&waiting)
		return waiting || truncations(t, reg, "busy") >= 1
	})
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := kc.ReadAll(ctx, t, topic, 2)
	if len(got) != 2 || string(got[1].Value) != "late" {
		t.Fatalf("published %d records, want early and late: the late commit was lost", len(got))
	}
	waitFor(t, "the slot is truncated once its rows are published", func() bool { return slotBytes(t, ctx, db, s) == 0 })
}

// TestOccupiedSlotIsNotTruncated: rows of an old slot that Kafka has not
// taken yet stay, however often the relay looks; a relay that can publish
// them later does.
func TestOccupiedSlotIsNotTruncated(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := oldSlot(t, ctx, db)
	for i := range 10 {
		insertInSlot(t, ctx, db.Pool, s, topic, "k", strconv.Itoa(i))
	}
	reg, stop := reclaimingRelay(t, db, unreachable{}, "relay-a")
	waitFor(t, "the relay looks at the slot three times, or truncates it", func() bool {
		return truncations(t, reg, "occupied")+truncations(t, reg, "busy") >= 3 || slotBytes(t, ctx, db, s) == 0
	})
	stop()
	if n := truncations(t, reg, "truncated"); n != 0 {
		t.Errorf("the relay truncated %v slots, want none: every row was unpublished", n)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE slot = $1`, s).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 10 {
		t.Fatalf("slot %d holds %d rows, want the 10 unpublished ones", s, left)
	}
	reclaimingRelay(t, db, kc.Writer(t), "relay-b")
	if got := kc.ReadAll(ctx, t, topic, 10); len(got) != 10 {
		t.Fatalf("published %d records, want 10", len(got))
	}
	waitFor(t, "the slot is truncated once its rows are published", func() bool { return slotBytes(t, ctx, db, s) == 0 })
}

// TestTruncationNeverDropsAnUnpublishedRow races slow writers against a
// relay that truncates old slots every 20 ms: one writer per old slot keeps
// a transaction open on it nearly all the time (a row written, 40–80 ms
// before the commit, 0–10 ms between two), so the relay keeps finding the
// slot without a committed row left to publish while a row is about to be
// committed into it. Every row must reach Kafka. A truncation that checked
// the slot before taking its lock would truncate rows committed while it
// waited for the lock.
func TestTruncationNeverDropsAnUnpublishedRow(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := oldSlot(t, ctx, db)
	reg, _ := reclaimingRelay(t, db, kc.Writer(t), "relay-a")

	const writers, each = 3, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			slot := (s + int16(w)) % outbox.Slots
			for i := range each {
				err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO outbox (slot, topic, key, value, headers) VALUES ($1, $2, $3, $4, '{}')`,
						slot, topic, []byte(fmt.Sprintf("key-%d", w)), []byte(fmt.Sprintf("%d-%d", w, i)))
					time.Sleep(time.Duration(40+rng.IntN(40)) * time.Millisecond)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("write: %v", err)
	}
	t.Logf("truncation attempts while the writers wrote: %v truncated, %v busy, %v occupied",
		truncations(t, reg, "truncated"), truncations(t, reg, "busy"), truncations(t, reg, "occupied"))
	seen := make(map[string]bool)
	for _, m := range kc.ReadAll(ctx, t, topic, writers*each) {
		seen[string(m.Value)] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d of the %d rows reached Kafka: truncations dropped the others", len(seen), writers*each)
	}
	waitFor(t, "the relay truncates a slot", func() bool { return truncations(t, reg, "truncated") >= 1 })
}

// TestKeyOrderAcrossSlots writes one key's records into three slots in
// turn (old ones and the current one, as transactions that began in
// different windows do) while the relay truncates: they reach Kafka in the
// order written, because the relay reads every slot in id order.
func TestKeyOrderAcrossSlots(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := oldSlot(t, ctx, db)
	var current int16
	if err := db.Pool.QueryRow(ctx, `SELECT outbox_slot(now())`).Scan(&current); err != nil {
		t.Fatal(err)
	}
	reg, _ := reclaimingRelay(t, db, kc.Writer(t), "relay-a")
	const n = 60
	for i := range n {
		slot := []int16{s, current, (s + 1) % outbox.Slots}[i%3]
		insertInSlot(t, ctx, db.Pool, slot, topic, "k", strconv.Itoa(i))
		if i%10 == 9 {
			time.Sleep(30 * time.Millisecond) // let the relay publish and truncate in between
		}
	}
	for i, m := range kc.ReadAll(ctx, t, topic, n) {
		if string(m.Value) != strconv.Itoa(i) {
			t.Fatalf("record %d is %s, want %d: the key's order was lost across slots", i, m.Value, i)
		}
	}
	waitFor(t, "a slot is truncated", func() bool { return truncations(t, reg, "truncated") >= 1 })
}

// TestRelaysShareTheShardsThroughTruncations runs two relays that share the
// shards and both truncate old slots, while keys' records are written
// across slots: every key's records arrive in order, and slots are
// truncated.
func TestRelaysShareTheShardsThroughTruncations(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := oldSlot(t, ctx, db)
	regA, _ := reclaimingRelay(t, db, kc.Writer(t), "relay-a")
	regB, _ := reclaimingRelay(t, db, kc.Writer(t), "relay-b")
	waitFor(t, "the shards are dealt 16 and 16", func() bool {
		o := owners(t, db)
		return o["relay-a"] == 16 && o["relay-b"] == 16
	})
	const keys, perKey = 20, 30
	for i := range perKey {
		slot := (s + int16(i%3)) % outbox.Slots
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for k := range keys {
				if _, err := tx.Exec(ctx, `INSERT INTO outbox (slot, topic, key, value, headers) VALUES ($1, $2, $3, $4, '{}')`,
					slot, topic, []byte(fmt.Sprintf("key-%d", k)), []byte(strconv.Itoa(i))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			time.Sleep(30 * time.Millisecond)
		}
	}
	readInKeyOrder(t, ctx, kc, topic, keys, perKey)
	waitFor(t, "the relays truncate slots", func() bool {
		return truncations(t, regA, "truncated")+truncations(t, regB, "truncated") >= 1
	})
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
