package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// TestQueueWritesEachShardsRecordsInRows: one transaction's records are
// written as rows of records, each row holding records of its own shard
// only (the one its generated column computes), under the size that keeps
// it uncompressed in its page unless one record alone is larger; every
// record is there once, each key's in the order queued.
func TestQueueWritesEachShardsRecordsInRows(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	var msgs []outbox.Message
	want := make(map[string][]string)
	for i := range 400 {
		key := fmt.Sprintf("acct-%d", i%37)
		value := fmt.Sprintf("%s/%d/", key, i) + strings.Repeat("v", (i*97)%1500)
		if i == 123 {
			value += strings.Repeat("w", 9000) // larger than a row of records
		}
		msgs = append(msgs, msg("events", key, value))
		want[key] = append(want[key], value)
	}
	msgs = append(msgs, msg("dlq", "", "keyless"))
	write(t, ctx, db, msgs...)

	var rows, records, strays, oversized int
	err := db.Pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM outbox),
			(SELECT count(*) FROM outbox_records),
			(SELECT count(*) FROM outbox_records WHERE outbox_shard(key) <> shard),
			(SELECT count(*) FROM outbox WHERE record_count > 1 AND pg_column_size(outbox.*) > 8160)`).
		Scan(&rows, &records, &strays, &oversized)
	if err != nil {
		t.Fatal(err)
	}
	if records != len(msgs) {
		t.Errorf("the outbox holds %d records, want the %d queued", records, len(msgs))
	}
	if rows >= records/2 {
		t.Errorf("%d records took %d rows, want several records a row", records, rows)
	}
	if strays != 0 {
		t.Errorf("%d records are in a row of another shard than their key's", strays)
	}
	if oversized != 0 {
		t.Errorf("%d rows of several records are larger than 8160 bytes", oversized)
	}
	got := make(map[string][]string)
	rs, err := db.Pool.Query(ctx, `SELECT convert_from(key, 'UTF8'), convert_from(value, 'UTF8') FROM outbox_records
		WHERE topic = 'events' ORDER BY id, ord`)
	if err != nil {
		t.Fatal(err)
	}
	var key, value string
	if _, err := pgx.ForEachRow(rs, []any{&key, &value}, func() error {
		got[key] = append(got[key], value)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for k, vs := range want {
		if !slices.Equal(got[k], vs) {
			t.Errorf("key %s: the outbox holds %d records in order %.40q…, want %d in the order queued", k, len(got[k]), got[k], len(vs))
		}
	}
}

// sameShard returns a key other than key that hashes to key's shard.
func sameShard(t *testing.T, ctx context.Context, db *pgtest.DB, key string) string {
	t.Helper()
	var other string
	err := db.Pool.QueryRow(ctx, `SELECT k FROM generate_series(1, 10000) AS i, LATERAL (SELECT 'key-' || i AS k) AS x
		WHERE outbox_shard(convert_to(k, 'UTF8')) = outbox_shard(convert_to($1, 'UTF8')) LIMIT 1`, key).Scan(&other)
	if err != nil {
		t.Fatal(err)
	}
	return other
}

// recorder keeps the values of each call before passing it on.
type recorder struct {
	pub   outbox.Publisher
	mu    sync.Mutex
	calls [][]string
}

// note keeps the values of msgs as the next call and returns its number,
// from 1.
func (r *recorder) note(msgs []kafka.Message) int {
	var values []string
	for _, m := range msgs {
		values = append(values, string(m.Value))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, values)
	return len(r.calls)
}

func (r *recorder) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	r.note(msgs)
	return r.pub.WriteMessages(ctx, msgs...)
}

// TestRelayRewritesARowKafkaTookInPart: two keys of one shard share a row;
// Kafka fails one key's records twice. The other key's records are
// published once and leave the row; the row keeps the failed ones, in
// order, and they alone are sent on the next rounds.
func TestRelayRewritesARowKafkaTookInPart(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := sameShard(t, ctx, db, "a")
	write(t, ctx, db, msg(topic, "a", "a1"), msg(topic, b, "b1"), msg(topic, "a", "a2"), msg(topic, b, "b2"), msg(topic, "a", "a3"))
	var rows int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("the five records take %d rows (%v), want one", rows, err)
	}
	pub := &recorder{pub: &flaky{pub: kc.Writer(t), key: b, fails: 2}}
	relayWith(t, db, outbox.RelayOptions{Publisher: pub})
	drained(t, ctx, db)
	wantParked(t, ctx, db, nil)
	wantOnTopic(t, ctx, kc, topic, "a1", "b1", "a2", "b2", "a3")
	pub.mu.Lock()
	defer pub.mu.Unlock()
	want := [][]string{{"a1", "b1", "a2", "b2", "a3"}, {"b1", "b2"}, {"b1", "b2"}}
	if !slices.EqualFunc(pub.calls, want, slices.Equal) {
		t.Errorf("publishes = %q, want %q: the row rewritten to b's records alone", pub.calls, want)
	}
}

// holdSecond passes its first call on and holds the next until released.
type holdSecond struct {
	pub      outbox.Publisher
	mu       sync.Mutex
	calls    int
	first    chan struct{} // closed once the first call returned
	released chan struct{}
}

func (g *holdSecond) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	g.mu.Lock()
	g.calls++
	call := g.calls
	g.mu.Unlock()
	if call == 2 {
		select {
		case <-g.released:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := g.pub.WriteMessages(ctx, msgs...)
	if call == 1 {
		close(g.first)
	}
	return err
}

// TestRelayBatchFullMidRow: the relay's batch fills up (maxBatchBytes) in
// the middle of a row. The records published leave the row, the row keeps
// the rest, and they go out next, in order, once each.
func TestRelayBatchFullMidRow(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var msgs []outbox.Message
	var values []string
	for i := range 1500 {
		v := fmt.Sprintf("k%04d-", i) + strings.Repeat("x", 1000)
		msgs, values = append(msgs, msg(topic, "k", v)), append(values, v)
	}
	write(t, ctx, db, msgs...)
	type size struct{ ID, Records int64 }
	sizes := func() map[int64]int64 {
		rs, err := db.Pool.Query(ctx, `SELECT id, record_count FROM outbox`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rs, pgx.RowToStructByPos[size])
		if err != nil {
			t.Fatal(err)
		}
		m := make(map[int64]int64)
		for _, s := range got {
			m[s.ID] = s.Records
		}
		return m
	}
	before := sizes()
	g := &holdSecond{pub: kc.Writer(t), first: make(chan struct{}), released: make(chan struct{})}
	relayWith(t, db, outbox.RelayOptions{Publisher: g})
	select {
	case <-g.first:
	case <-ctx.Done():
		t.Fatal("the relay published nothing")
	}
	// The first batch settles before the second is sent, and the second is
	// held: wait for the first's rows to go.
	var rewritten int
	waitFor(t, "the first batch settled", func() bool {
		after := sizes()
		rewritten = 0
		for id, n := range after {
			if n < before[id] {
				rewritten++
			}
		}
		return len(after) < len(before)
	})
	close(g.released)
	if rewritten != 1 {
		t.Errorf("%d rows were rewritten after the first batch, want the one it filled up in", rewritten)
	}
	drained(t, ctx, db)
	wantOnTopic(t, ctx, kc, topic, values...)
}

// TestRelayParksUndecodableRecordsOfARow: rows of records written by
// hand. A record whose headers are not JSON is parked undecodable, its
// headers kept as they were, and the records around it are published; a
// row whose records cannot be read, or hold a NUL or a byte that is not
// UTF-8 where parking needs text, is parked whole, its bytes as the value
// (outbox_records shows it as one line without position). Rows of neither
// layout, or both, are refused when written.
func TestRelayParksUndecodableRecordsOfARow(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for name, insert := range map[string]string{
		"both layouts":        `INSERT INTO outbox (topic, key, value, records, record_count) VALUES ('t', 'k', 'v', '\x01', 1)`,
		"records uncounted":   `INSERT INTO outbox (key, records) VALUES ('k', '\x01')`,
		"no record, no value": `INSERT INTO outbox (topic, key) VALUES ('t', 'k')`,
	} {
		if _, err := db.Pool.Exec(ctx, insert); err == nil {
			t.Errorf("a row with %s was written", name)
		}
	}
	packed := outbox.Packed([4]string{topic, "k", "k1", `{"event_id": "k1"}`}, [4]string{topic, "k", "bad", `not JSON {`},
		[4]string{topic, "k", "k2", `{"event_id": "k2"}`})
	// PostgreSQL's text takes neither NUL nor invalid UTF-8: a row holding
	// either could not be parked record by record.
	nul := outbox.Packed([4]string{topic, "k", "n1", "{\"event_id\": \"\x00\"}"})
	latin1 := outbox.Packed([4]string{topic + "\xe9", "k", "l1", "{}"})
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox (key, records, record_count)
		VALUES ('k', $1, 3), ('k', '\x01ffff', 1), ('k', $2, 1), ('k', $3, 1)`, packed, nul, latin1); err != nil {
		t.Fatal(err)
	}
	var unreadable int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_records WHERE ord IS NULL`).Scan(&unreadable); err != nil || unreadable != 3 {
		t.Errorf("outbox_records shows %d rows as unreadable (%v), want 3", unreadable, err)
	}
	relayWith(t, db, outbox.RelayOptions{Publisher: kc.Writer(t)})
	drained(t, ctx, db)
	wantParked(t, ctx, db, map[string]string{"bad": outbox.ReasonUndecodable, "\x01\xff\xff": outbox.ReasonUndecodable,
		string(nul): outbox.ReasonUndecodable, string(latin1): outbox.ReasonUndecodable})
	wantOnTopic(t, ctx, kc, topic, "k1", "k2")
	var headers string
	if err := db.Pool.QueryRow(ctx, `SELECT headers FROM outbox_parked WHERE value = 'bad'`).Scan(&headers); err != nil || headers != "not JSON {" {
		t.Errorf("the parked record's headers = %q (%v), want them as written", headers, err)
	}
}

// TestUnparkKeepsQueueOrder: records parked out of their queue order (the
// later one first, so with the lower id) go back in the order they were
// queued in: their row, then their position there.
func TestUnparkKeepsQueueOrder(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO outbox_parked (id, row_id, ord, topic, key, value, headers, created_at, reason) VALUES
		(101, 50, 3, 't', 'k', 'x3', '{}', now(), 'topic_missing'),
		(102, 40, 1, 'u', 'k', 'x1', '{}', now(), 'topic_missing'),
		(103, 50, 1, 'u', 'k', 'x2', '{}', now(), 'not_authorized'),
		(7, NULL, NULL, 't', 'k', 'x0', '{}', now(), 'too_large')`); err != nil {
		t.Fatal(err)
	}
	if n, err := outbox.Unpark(ctx, db.Pool, outbox.ParkedFilter{}); err != nil || n != 4 {
		t.Fatalf("Unpark = %d, %v; want 4", n, err)
	}
	rs, err := db.Pool.Query(ctx, `SELECT convert_from(value, 'UTF8') FROM outbox_records ORDER BY id, ord`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rs, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"x0", "x1", "x2", "x3"}; !slices.Equal(got, want) {
		t.Errorf("unparked in the order %q, want %q", got, want)
	}
}
