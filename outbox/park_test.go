package outbox_test

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/kafkawriter"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// relayWith runs a relay over db with o's publisher and grace (other
// options as startRelay's) until the test ends or stop is called, and
// returns its registry and its log.
func relayWith(t *testing.T, db *pgtest.DB, o outbox.RelayOptions) (reg *prometheus.Registry, logs *syncBuffer, stop func()) {
	t.Helper()
	reg = prometheus.NewRegistry()
	logs = &syncBuffer{}
	o.Pool, o.PollInterval, o.LeaseTTL = db.Pool, 50*time.Millisecond, 3*time.Second
	o.Registerer, o.Log = reg, slog.New(slog.NewJSONHandler(logs, nil))
	relay, err := outbox.NewRelay(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay Run() = %v, want nil after cancel", err)
			}
			if t.Failed() {
				t.Logf("relay log:\n%s", logs.String())
			}
		})
	}
	t.Cleanup(stop)
	return reg, logs, stop
}

// syncBuffer is a log sink safe for the relay's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// count is how many log lines carry msg.
func (s *syncBuffer) count(msg string) int {
	return strings.Count(s.String(), fmt.Sprintf(`"msg":%q`, msg))
}

// quickWriter is txpipe's writer with a short round: a topic the brokers do
// not list fails after 4 metadata attempts (under a second) rather than 20
// (about 16 s). The relay's handling of a refused round is the same.
func quickWriter(t *testing.T, brokers []string, tr kafka.RoundTripper) *kafkawriter.Writer {
	w := kafkawriter.New(kafkawriter.Options{Brokers: brokers, Transport: tr, MaxAttempts: 4})
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// msg is a record for the outbox; a nil key is written as SQL NULL.
func msg(topic, key, value string) outbox.Message {
	m := outbox.Message{Topic: topic, Value: []byte(value), Headers: map[string]string{"event_id": value}}
	if key != "" {
		m.Key = []byte(key)
	}
	return m
}

// write queues msgs in one transaction.
func write(t *testing.T, ctx context.Context, db *pgtest.DB, msgs ...outbox.Message) {
	t.Helper()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		outbox.Queue(b, msgs)
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		t.Fatalf("write outbox rows: %v", err)
	}
}

// parked returns outbox_parked's reason of each value.
func parked(t *testing.T, ctx context.Context, db *pgtest.DB) map[string]string {
	t.Helper()
	rows, err := db.Pool.Query(ctx, `SELECT value, reason FROM outbox_parked`)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]string)
	for rows.Next() {
		var value []byte
		var reason string
		if err := rows.Scan(&value, &reason); err != nil {
			t.Fatal(err)
		}
		got[string(value)] = reason
	}
	return got
}

// drained waits until the outbox is empty: every row published or parked.
func drained(t *testing.T, ctx context.Context, db *pgtest.DB) {
	t.Helper()
	waitFor(t, "the outbox is drained", func() bool {
		var n int
		return db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n) == nil && n == 0
	})
}

// wantParked fails unless outbox_parked holds exactly want.
func wantParked(t *testing.T, ctx context.Context, db *pgtest.DB, want map[string]string) {
	t.Helper()
	got := parked(t, ctx, db)
	if len(got) != len(want) {
		t.Errorf("outbox_parked = %v, want %v", got, want)
		return
	}
	for value, reason := range want {
		if got[value] != reason {
			t.Errorf("outbox_parked = %v, want %v", got, want)
			return
		}
	}
}

// wantOnTopic fails unless topic holds exactly the values want, each once
// (a record published again on a retry is counted), and each key's values
// in the order of want.
func wantOnTopic(t *testing.T, ctx context.Context, kc *kafkatest.Cluster, topic string, want ...string) {
	t.Helper()
	if n := kc.Count(ctx, t, topic); n != int64(len(want)) {
		t.Errorf("%s holds %d records, want %d (%q), each once", topic, n, len(want), want)
	}
	got := kc.ReadAll(ctx, t, topic, len(want))
	byKey := make(map[string][]string)
	var values []string
	for _, m := range got {
		byKey[string(m.Key)] = append(byKey[string(m.Key)], string(m.Value))
		values = append(values, string(m.Value))
	}
	slices.Sort(values)
	sorted := slices.Sorted(slices.Values(want))
	if !slices.Equal(values, sorted) {
		t.Errorf("%s holds %q, want %q", topic, values, sorted)
	}
	for key, vs := range byKey {
		var inOrder []string
		for _, w := range want {
			if slices.Contains(vs, w) {
				inOrder = append(inOrder, w)
			}
		}
		if !slices.Equal(vs, inOrder) {
			t.Errorf("key %q: records %q, want them in the order %q", key, vs, inOrder)
		}
	}
}

// parkedMetric is txpipe_relay_parked_total{reason}.
func parkedMetric(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "txpipe_relay_parked_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no txpipe_relay_parked_total{reason=%q}", reason)
	return 0
}

// createTopic makes a topic with configs for this test only.
func createTopic(t *testing.T, kc *kafkatest.Cluster, partitions int, configs map[string]string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "test." + hex.EncodeToString(b[:]) + ".special"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafkaadmin.EnsureTopics(ctx, kc.Client, []kafkaadmin.Topic{{Name: name, Partitions: partitions, ReplicationFactor: 1, Configs: configs}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = kc.Client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{name}})
	})
	return name
}

// TestRelayParksRowsOfAMissingTopic: rows for a topic that does not exist
// are parked topic_missing once the brokers have not listed it for a whole
// round and the grace; the rows of the same batch for an existing topic are
// published once (not once per retry) and the shard keeps flowing. Once the
// topic exists, unparking publishes the parked rows.
func TestRelayParksRowsOfAMissingTopic(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	missing := topic + ".missing"
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	write(t, ctx, db, msg(topic, "a", "a1"), msg(missing, "a", "m1"), msg(topic, "b", "b1"), msg(missing, "b", "m2"))
	func() {
		reg, logs, stop := relayWith(t, db, outbox.RelayOptions{Publisher: quickWriter(t, kc.Brokers, kc.Transport), TopicRefusalGrace: time.Millisecond})
		defer stop() // a new relay has no memory of the refusal
		drained(t, ctx, db)
		wantParked(t, ctx, db, map[string]string{"m1": outbox.ReasonTopicMissing, "m2": outbox.ReasonTopicMissing})
		write(t, ctx, db, msg(topic, "a", "a2"))
		drained(t, ctx, db)
		wantOnTopic(t, ctx, kc, topic, "a1", "b1", "a2")
		if n := parkedMetric(t, reg, outbox.ReasonTopicMissing); n != 2 {
			t.Errorf("txpipe_relay_parked_total{reason=topic_missing} = %v, want 2", n)
		}
		if n := logs.count("outbox record parked: it cannot be published as it is; its consumers see a gap until it is unparked"); n != 2 {
			t.Errorf("%d parked rows logged, want each of the 2 once", n)
		}
		if strings.Contains(logs.String(), `"m1"`) {
			t.Error("the log shows a parked row's value")
		}
	}()

	if err := kafkaadmin.EnsureTopics(ctx, kc.Client, []kafkaadmin.Topic{{Name: missing, Partitions: 1, ReplicationFactor: 1}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = kc.Client.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{missing}})
	})
	n, err := outbox.Unpark(ctx, db.Pool, outbox.ParkedFilter{Reason: outbox.ReasonTopicMissing})
	if err != nil || n != 2 {
		t.Fatalf("Unpark = %d, %v; want 2 rows", n, err)
	}
	relayWith(t, db, outbox.RelayOptions{Publisher: quickWriter(t, kc.Brokers, kc.Transport), TopicRefusalGrace: time.Millisecond})
	drained(t, ctx, db)
	wantParked(t, ctx, db, nil)
	wantOnTopic(t, ctx, kc, missing, "m1", "m2")
}

// TestRelayParksRowsOfATopicItMayNotWrite runs the relay as a SASL user
// allowed to write one topic, to describe (not write) another, and granted
// nothing on a third: the rows of the two it may not write are parked
// not_authorized (the broker, asked, says so even of the topic the user may
// not see, which its metadata cache lists as unknown), the others are
// published once.
func TestRelayParksRowsOfATopicItMayNotWrite(t *testing.T) {
	broker := containertest.Env(t, "TXPIPE_KAFKA_SASL_BROKERS")
	caFile := containertest.Env(t, "TXPIPE_KAFKA_CA")
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	ts := kc.Topics(t, 3)
	allowed, describeOnly, hidden := ts.Events, ts.Postings, ts.DLQ
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	user, password := scramUser(t, ctx, kc)
	acl := func(topic string, op kafka.ACLOperationType) kafka.ACLEntry {
		return kafka.ACLEntry{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ResourcePatternType: kafka.PatternTypeLiteral,
			Principal: "User:" + user, Host: "*", Operation: op, PermissionType: kafka.ACLPermissionTypeAllow}
	}
	if err := kafkaadmin.CreateACLs(ctx, kc.Client, []kafka.ACLEntry{acl(allowed, kafka.ACLOperationTypeWrite), acl(describeOnly, kafka.ACLOperationTypeDescribe)}); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	mech, err := scram.Mechanism(scram.SHA512, user, password)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	// The grants are in force once the broker shows the user both topics.
	dialer := &kafka.Dialer{Timeout: 10 * time.Second, TLS: tlsConfig, SASLMechanism: mech}
	waitFor(t, "the broker applies the ACLs", func() bool {
		for _, topic := range []string{allowed, describeOnly} {
			conn, err := dialer.DialContext(ctx, "tcp", broker)
			if err != nil {
				return false
			}
			_, err = conn.ReadPartitions(topic)
			conn.Close()
			if err != nil {
				return false
			}
		}
		return true
	})
	tr := &kafka.Transport{TLS: tlsConfig, SASL: mech, MetadataTTL: time.Second}
	t.Cleanup(tr.CloseIdleConnections)

	write(t, ctx, db, msg(allowed, "a", "a1"), msg(describeOnly, "a", "d1"), msg(hidden, "a", "h1"), msg(allowed, "b", "b1"), msg(allowed, "a", "a2"))
	reg, _, _ := relayWith(t, db, outbox.RelayOptions{Publisher: quickWriter(t, []string{broker}, tr), TopicRefusalGrace: time.Millisecond})
	drained(t, ctx, db)
	wantParked(t, ctx, db, map[string]string{"d1": outbox.ReasonNotAuthorized, "h1": outbox.ReasonNotAuthorized})
	wantOnTopic(t, ctx, kc, allowed, "a1", "b1", "a2")
	if n := parkedMetric(t, reg, outbox.ReasonNotAuthorized); n != 2 {
		t.Errorf("txpipe_relay_parked_total{reason=not_authorized} = %v, want 2", n)
	}
}

// scramUser makes a SCRAM-SHA-512 user over the plaintext listener (whose
// clients are the development broker's super users) and returns its name
// and password.
func scramUser(t *testing.T, ctx context.Context, kc *kafkatest.Cluster) (user, password string) {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	user, password = "txpipe-relay-"+hex.EncodeToString(b[:4]), hex.EncodeToString(b[:])
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	salted, err := pbkdf2.Key(sha512.New, password, salt, 4096, sha512.Size)
	if err != nil {
		t.Fatal(err)
	}
	res, err := kc.Client.AlterUserScramCredentials(ctx, &kafka.AlterUserScramCredentialsRequest{
		Upsertions: []kafka.UserScramCredentialsUpsertion{{Name: user, Mechanism: kafka.ScramMechanismSha512, Iterations: 4096, Salt: salt, SaltedPassword: salted}}})
	if err != nil || len(res.Results) != 1 || res.Results[0].Error != nil {
		t.Fatalf("create SCRAM user: %v %+v", err, res)
	}
	return user, password
}

// TestRelayParksRowTooLargeForItsTopic: a row larger than its topic's
// max.message.bytes (but within a relay batch) is refused with its
// partition's whole batch; sent alone, it is refused again and parked
// too_large, while its neighbours, of its key and others, are published
// once and in order.
func TestRelayParksRowTooLargeForItsTopic(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := createTopic(t, kc, 3, map[string]string{"max.message.bytes": "10000"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	big := strings.Repeat("x", 20000)
	write(t, ctx, db, msg(topic, "k", "k1"), msg(topic, "o", "o1"), msg(topic, "k", big), msg(topic, "k", "k2"), msg(topic, "p", "p1"))
	reg, _, _ := relayWith(t, db, outbox.RelayOptions{Publisher: kc.Writer(t)})
	drained(t, ctx, db)
	wantParked(t, ctx, db, map[string]string{big: outbox.ReasonTooLarge})
	wantOnTopic(t, ctx, kc, topic, "k1", "o1", "k2", "p1")
	if n := parkedMetric(t, reg, outbox.ReasonTooLarge); n != 1 {
		t.Errorf("txpipe_relay_parked_total{reason=too_large} = %v, want 1", n)
	}
}

// TestRelayParksInvalidRecord: a log-compacted topic refuses a record
// without key (INVALID_RECORD) with its partition's whole batch; the row is
// parked invalid_record and its neighbours are published once.
func TestRelayParksInvalidRecord(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := createTopic(t, kc, 1, map[string]string{"cleanup.policy": "compact"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write(t, ctx, db, msg(topic, "a", "a1"), msg(topic, "", "keyless"), msg(topic, "a", "a2"), msg(topic, "b", "b1"))
	reg, _, _ := relayWith(t, db, outbox.RelayOptions{Publisher: kc.Writer(t)})
	drained(t, ctx, db)
	wantParked(t, ctx, db, map[string]string{"keyless": outbox.ReasonInvalidRecord})
	wantOnTopic(t, ctx, kc, topic, "a1", "a2", "b1")
	if n := parkedMetric(t, reg, outbox.ReasonInvalidRecord); n != 1 {
		t.Errorf("txpipe_relay_parked_total{reason=invalid_record} = %v, want 1", n)
	}
}

// TestRelayParksUndecodableRows: rows written by hand that cannot be made
// records (headers that are not a JSON object of strings, no topic) are
// parked undecodable; the rows around them are published.
func TestRelayParksUndecodableRows(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := db.Pool.Exec(ctx, `INSERT INTO outbox (topic, key, value, headers) VALUES
		($1, 'k', 'k1', '{"event_id": "k1"}'),
		($1, 'k', 'number', '{"event_id": 7}'),
		($1, 'k', 'array', '["event_id"]'),
		('', 'k', 'no-topic', '{}'),
		($1, 'k', 'k2', '{}')
		`, topic)
	if err != nil {
		t.Fatal(err)
	}
	reg, _, _ := relayWith(t, db, outbox.RelayOptions{Publisher: kc.Writer(t)})
	drained(t, ctx, db)
	wantParked(t, ctx, db, map[string]string{"number": outbox.ReasonUndecodable, "array": outbox.ReasonUndecodable, "no-topic": outbox.ReasonUndecodable})
	wantOnTopic(t, ctx, kc, topic, "k1", "k2")
	if n := parkedMetric(t, reg, outbox.ReasonUndecodable); n != 3 {
		t.Errorf("txpipe_relay_parked_total{reason=undecodable} = %v, want 3", n)
	}
}

// panicky panics when asked to publish a record whose value is poison, or
// any record when always is set, as a bug in a publisher would.
type panicky struct {
	pub    outbox.Publisher
	poison string
	always bool
}

func (p panicky) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	for _, m := range msgs {
		if p.always || string(m.Value) == p.poison {
			panic("publisher bug on " + string(m.Value))
		}
	}
	return p.pub.WriteMessages(ctx, msgs...)
}

// TestRelaySurvivesPanics: a panic while publishing a batch does not kill
// the relay; it is logged once with its stack and counted. When one row
// alone makes it panic while the others go through, that row is parked
// internal_error; when every publish panics, nothing is parked and the
// rows wait.
func TestRelaySurvivesPanics(t *testing.T) {
	const logged = "relay recovered from a panic; the batch is retried or the row that caused it parked"
	t.Run("a row that panics is parked", func(t *testing.T) {
		db := pgtest.New(t)
		kc := kafkatest.New(t)
		topic := kc.Topics(t, 1).Events
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		write(t, ctx, db, msg(topic, "k", "k1"), msg(topic, "k", "poison"), msg(topic, "k", "k2"))
		reg, logs, _ := relayWith(t, db, outbox.RelayOptions{Publisher: panicky{pub: kc.Writer(t), poison: "poison"}})
		drained(t, ctx, db)
		wantParked(t, ctx, db, map[string]string{"poison": outbox.ReasonInternalError})
		wantOnTopic(t, ctx, kc, topic, "k1", "k2")
		// The batch's publish panicked, then the poison row's alone.
		panics := metric(t, reg, "txpipe_relay_recovered_panics_total")
		if panics != 2 {
			t.Errorf("txpipe_relay_recovered_panics_total = %v, want 2", panics)
		}
		if n := logs.count(logged); float64(n) != panics || !strings.Contains(logs.String(), "goroutine") {
			t.Errorf("%d panics logged (with a stack: %v), want each of the %v once", n, strings.Contains(logs.String(), "goroutine"), panics)
		}
	})
	t.Run("a publisher that always panics parks nothing", func(t *testing.T) {
		db := pgtest.New(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		write(t, ctx, db, msg("events", "k", "k1"), msg("events", "k", "k2"), msg("events", "k", "k3"), msg("events", "k", "k4"), msg("events", "k", "k5"))
		reg, logs, _ := relayWith(t, db, outbox.RelayOptions{Publisher: panicky{always: true}})
		waitFor(t, "the relay retried the batch", func() bool { return metric(t, reg, "txpipe_relay_recovered_panics_total") >= 6 })
		// Each failed batch panics at most three times (the batch, then two
		// rows alone), not once per row: read the panics first, so the
		// batch in progress adds at most three.
		panics := metric(t, reg, "txpipe_relay_recovered_panics_total")
		if failed := metric(t, reg, "txpipe_relay_failures_total"); panics > 3*(failed+1) {
			t.Errorf("%v panics over %v failed batches, want at most 3 a batch", panics, failed)
		}
		var left int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_records`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left != 5 {
			t.Errorf("the outbox holds %d rows, want all 5 still waiting", left)
		}
		wantParked(t, ctx, db, nil)
		if logs.count(logged) < 6 {
			t.Errorf("panics not logged:\n%s", logs.String())
		}
	})
}

// flaky fails the records of one key the first fails times it is called,
// as a partition whose leader is moving would (retriable: the writer gives
// up on it at the end of its round), and publishes the others.
type flaky struct {
	pub   outbox.Publisher
	key   string
	mu    sync.Mutex
	fails int
}

func (f *flaky) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	failing := f.fails > 0
	f.fails--
	f.mu.Unlock()
	if !failing {
		return f.pub.WriteMessages(ctx, msgs...)
	}
	errs := make(kafka.WriteErrors, len(msgs))
	var pass []kafka.Message
	var at []int
	for i, m := range msgs {
		if string(m.Key) == f.key {
			errs[i] = fmt.Errorf("partition x/0: gave up: %w", kafka.NotEnoughReplicas)
		} else {
			pass, at = append(pass, m), append(at, i)
		}
	}
	if err := f.pub.WriteMessages(ctx, pass...); err != nil {
		for _, i := range at {
			errs[i] = err
		}
	}
	return errs
}

// TestRelayDeletesWhatKafkaTookAndRetriesTheRest: when some records of a
// batch fail for a passing reason, the others, which Kafka took, are
// deleted at once (not published again on the retry), and the failed ones
// go on the next rounds: every record once, each key in order.
func TestRelayDeletesWhatKafkaTookAndRetriesTheRest(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 3).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write(t, ctx, db, msg(topic, "a", "a1"), msg(topic, "b", "b1"), msg(topic, "a", "a2"), msg(topic, "b", "b2"), msg(topic, "a", "a3"), msg(topic, "b", "b3"))
	reg, _, _ := relayWith(t, db, outbox.RelayOptions{Publisher: &flaky{pub: kc.Writer(t), key: "b", fails: 2}})
	drained(t, ctx, db)
	wantParked(t, ctx, db, nil)
	wantOnTopic(t, ctx, kc, topic, "a1", "b1", "a2", "b2", "a3", "b3")
	if metric(t, reg, "txpipe_relay_failures_total") < 2 {
		t.Error("the failed rounds were not counted")
	}
}

// refusedThenFlaky refuses a whole batch as invalid records (as a broker
// refuses a partition's record batch for one bad record), then fails the
// first record sent alone with a passing error, then publishes; it keeps
// the values of each call.
type refusedThenFlaky struct{ recorder }

func (p *refusedThenFlaky) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	errs := make(kafka.WriteErrors, len(msgs))
	switch p.note(msgs) {
	case 1:
		for i := range errs {
			errs[i] = fmt.Errorf("%w: one record of the batch is invalid", kafka.InvalidRecord)
		}
		return errs
	case 2:
		errs[0] = fmt.Errorf("partition x/0: gave up: %w", kafka.NotLeaderForPartition)
		return errs
	}
	return p.pub.WriteMessages(ctx, msgs...)
}

// TestRelayIsolatingRowsKeepsKeyOrder: when a refused batch is published
// again one row at a time and a row fails only for a passing reason, the
// rows after it are not sent alone ahead of it: they wait with it for the
// next batch, and nothing is parked.
func TestRelayIsolatingRowsKeepsKeyOrder(t *testing.T) {
	db := pgtest.New(t)
	kc := kafkatest.New(t)
	topic := kc.Topics(t, 1).Events
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	write(t, ctx, db, msg(topic, "k", "k1"), msg(topic, "k", "k2"), msg(topic, "k", "k3"))
	pub := &refusedThenFlaky{recorder{pub: kc.Writer(t)}}
	relayWith(t, db, outbox.RelayOptions{Publisher: pub})
	drained(t, ctx, db)
	wantParked(t, ctx, db, nil)
	wantOnTopic(t, ctx, kc, topic, "k1", "k2", "k3")
	pub.mu.Lock()
	defer pub.mu.Unlock()
	want := [][]string{{"k1", "k2", "k3"}, {"k1"}, {"k1", "k2", "k3"}}
	if len(pub.calls) < 3 || !slices.EqualFunc(pub.calls[:3], want, slices.Equal) {
		t.Errorf("publishes = %q, want %q first: k1 alone, failing, stops the isolation", pub.calls, want)
	}
}
