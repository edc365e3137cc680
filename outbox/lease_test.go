package outbox_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// startRelay runs a relay with id until the returned stop is called.
func startRelay(t *testing.T, db *pgtest.DB, pub outbox.Publisher, id string, reg prometheus.Registerer) (stop func()) {
	t.Helper()
	relay, err := outbox.NewRelay(outbox.RelayOptions{
		Pool: db.Pool, Publisher: pub, PollInterval: 50 * time.Millisecond, LeaseTTL: 3 * time.Second, ID: id,
		Registerer: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay %s Run() = %v, want nil after cancel", id, err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// owners counts the shards each relay holds a live lease of.
func owners(t *testing.T, db *pgtest.DB) map[string]int {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT owner, count(*) FROM relay_leases
		WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner`)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]int)
	for rows.Next() {
		var o string
		var n int
		if err := rows.Scan(&o, &n); err != nil {
			t.Fatal(err)
		}
		got[o] = n
	}
	return got
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeKeys writes perKey records for each of keys keys to topic, record i
// of every key in the i-th transaction, its value "i".
func writeKeys(t *testing.T, ctx context.Context, db *pgtest.DB, topic string, keys, perKey int) {
	t.Helper()
	for i := range perKey {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			var msgs []outbox.Message
			for k := range keys {
				msgs = append(msgs, outbox.Message{Topic: topic, Key: []byte(fmt.Sprintf("key-%d", k)), Value: []byte(fmt.Sprint(i)),
					Headers: map[string]string{"event_id": fmt.Sprintf("%d-%d", k, i)}})
			}
			b := &pgx.Batch{}
			outbox.Queue(b, msgs)
			return tx.SendBatch(ctx, b).Close()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// readInKeyOrder reads what writeKeys wrote and fails unless every key's
// records arrived, in order.
func readInKeyOrder(t *testing.T, ctx context.Context, kc *kafkatest.Cluster, topic string, keys, perKey int) {
	t.Helper()
	next := make(map[string]int)
	for _, m := range kc.ReadAll(ctx, t, topic, keys*perKey) {
		if want := fmt.Sprint(next[string(m.Key)]); string(m.Value) != want {
			t.Fatalf("key %s: record %s after %d in order, want %s", m.Key, m.Value, next[string(m.Key)], want)
		}
		next[string(m.Key)]++
	}
	if len(next) != keys {
		t.Fatalf("records of %d keys, want all %d", len(next), keys)
	}
}

// metric is the value of the single-series counter or gauge name in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestRelaysShareTheShardsInKeyOrder runs two relays over one outbox: the
// shards are dealt half and half, every key's records reach Kafka in the
// order written, and when one relay stops the other takes all shards.
func TestRelaysShareTheShardsInKeyOrder(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	stopA := startRelay(t, db, kc.Writer(t), "relay-a", prometheus.NewRegistry())
	waitFor(t, "relay-a holds all 32 shards", func() bool { return owners(t, db)["relay-a"] == outbox.Shards })
	startRelay(t, db, kc.Writer(t), "relay-b", prometheus.NewRegistry())
	waitFor(t, "the shards are dealt 16 and 16", func() bool {
		o := owners(t, db)
		return o["relay-a"] == 16 && o["relay-b"] == 16
	})

	// 20 keys × 25 records, written in many small transactions while both
	// relays publish.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	writeKeys(t, ctx, db, topic, 20, 25)
	readInKeyOrder(t, ctx, kc, topic, 20, 25)

	stopA()
	waitFor(t, "relay-b holds all 32 shards once relay-a stopped", func() bool { return owners(t, db)["relay-b"] == outbox.Shards })
}

// gate is a publisher that holds its first publish until opened, so a
// test can take the relay's lease away mid-batch.
type gate struct {
	pub     outbox.Publisher
	entered chan struct{}
	open    chan struct{}
	first   bool
}

func (g *gate) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	if !g.first {
		g.first = true
		close(g.entered)
		<-g.open
	}
	return g.pub.WriteMessages(ctx, msgs...)
}

// TestRelayThatLostItsLeaseMarksNothing takes a shard's lease from a relay
// while its batch is publishing, as another relay would once the first was
// paused past its TTL. The first relay's publish goes through, but its
// commit marks nothing published (the fence), so the row stays for the new
// holder: a stale relay cannot act as the owner.
func TestRelayThatLostItsLeaseMarksNothing(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g := &gate{pub: kc.Writer(t), entered: make(chan struct{}), open: make(chan struct{})}
	reg := prometheus.NewRegistry()
	startRelay(t, db, g, "relay-a", reg)
	waitFor(t, "relay-a holds all 32 shards", func() bool { return owners(t, db)["relay-a"] == outbox.Shards })

	var id int64
	var shard int16
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		id = insert(t, tx, topic, "fenced")
		return tx.QueryRow(ctx, `SELECT shard FROM outbox WHERE id = $1`, id).Scan(&shard)
	})
	if err != nil {
		t.Fatal(err)
	}
	<-g.entered // relay-a read the row and is publishing it
	// relay-b takes the lease, as it does once relay-a's has expired.
	if _, err := db.Pool.Exec(ctx, `UPDATE relay_leases SET owner = 'relay-b', epoch = epoch + 1,
		expires_at = now() + interval '1 hour' WHERE shard = $1`, shard); err != nil {
		t.Fatal(err)
	}
	close(g.open)

	fenced := func() float64 { return metric(t, reg, "txpipe_relay_fenced_batches_total") }
	waitFor(t, "relay-a's batch is fenced", func() bool { return fenced() >= 1 })
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE id = $1`, id).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 1 {
		t.Errorf("the row was marked published by a relay that had lost its lease")
	}
	// The publish itself reached Kafka (at least once; the new holder
	// publishes it again and consumers dedupe on event_id).
	if got := kc.ReadAll(ctx, t, topic, 1); len(got) != 1 {
		t.Errorf("read %d records, want relay-a's one publish", len(got))
	}
	// Fenced once, relay-a lets the shard go instead of trying again.
	waitFor(t, "relay-a counts the 31 shards it still holds", func() bool { return metric(t, reg, "txpipe_relay_shards_owned") == outbox.Shards-1 })
	if n := fenced(); n != 1 {
		t.Errorf("relay-a was fenced %v times, want once", n)
	}
}

// unreachable is a publisher cut off from Kafka.
type unreachable struct{}

func (unreachable) WriteMessages(context.Context, ...kafka.Message) error {
	return fmt.Errorf("dial kafka: connection refused")
}

// TestRelayThatCannotPublishGivesUpItsShards runs two relays, one of which
// cannot reach Kafka. It keeps renewing its leases, but after failing for a
// whole TTL it steps down: the healthy relay takes every shard and
// publishes every key's records, in order.
func TestRelayThatCannotPublishGivesUpItsShards(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	reg := prometheus.NewRegistry()
	startRelay(t, db, unreachable{}, "relay-a", reg)
	startRelay(t, db, kc.Writer(t), "relay-b", prometheus.NewRegistry())
	waitFor(t, "the shards are dealt 16 and 16", func() bool {
		o := owners(t, db)
		return o["relay-a"] == 16 && o["relay-b"] == 16
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	writeKeys(t, ctx, db, topic, 40, 3)
	readInKeyOrder(t, ctx, kc, topic, 40, 3) // relay-a's shards too: taken over
	if metric(t, reg, "txpipe_relay_step_downs_total") < 1 {
		t.Error("relay-a did not count a step-down")
	}
}

// TestARelayAloneNeverStepsDown: a relay that cannot publish, with no other
// relay that can, keeps its shards, so it publishes the moment Kafka is
// back instead of sitting out a cooldown.
func TestARelayAloneNeverStepsDown(t *testing.T) {
	db := pgtest.New(t)
	reg := prometheus.NewRegistry()
	startRelay(t, db, unreachable{}, "relay-a", reg)
	waitFor(t, "relay-a holds all 32 shards", func() bool { return owners(t, db)["relay-a"] == outbox.Shards })
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		insert(t, tx, "events", "stuck")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A heartbeat that says "failing", then a later one: the round that
	// wrote the first has decided whether to step down.
	var first time.Time
	waitFor(t, "relay-a reports it cannot publish", func() bool {
		var failing bool
		_ = db.Pool.QueryRow(ctx, `SELECT failing, heartbeat_at FROM relay_members WHERE relay_id = 'relay-a'`).Scan(&failing, &first)
		return failing
	})
	waitFor(t, "relay-a heartbeats again", func() bool {
		var at time.Time
		_ = db.Pool.QueryRow(ctx, `SELECT heartbeat_at FROM relay_members WHERE relay_id = 'relay-a'`).Scan(&at)
		return at.After(first)
	})
	if n := owners(t, db)["relay-a"]; n != outbox.Shards {
		t.Errorf("relay-a, alone, holds %d shards, want all 32", n)
	}
	if metric(t, reg, "txpipe_relay_step_downs_total") != 0 {
		t.Error("relay-a stepped down with nobody to take its shards")
	}
}
