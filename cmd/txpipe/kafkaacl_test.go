package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestKafkaACLsGiveEachRoleOnlyWhatItNeeds grants ingest, worker, relay and
// an analysts' reader their ACLs with txpipe kafka-acls, runs the pipeline
// as three processes over SASL_SSL, each as its own user, and shows that the
// grants are enough (commands go through end to end) and no more: an
// authenticated user without grants, and each role outside its grants, is
// refused, each refusal beside a control that the same probe succeeds with.
func TestKafkaACLsGiveEachRoleOnlyWhatItNeeds(t *testing.T) {
	sasl, ca, _ := saslServices(t)
	p := &pipeline{db: pgtest.New(t), kc: kafkatest.New(t)}
	p.topics = p.kc.Topics(t, 3)
	type cred struct{ user, password, file string }
	creds := make(map[string]cred)
	for _, role := range []string{"ingest", "worker", "relay", "reader", "intruder"} {
		u, pw, f := scramUser(t, p.kc, "txpipe-"+role)
		creds[role] = cred{u, pw, f}
	}
	group := "test-" + p.topics.Commands
	readerGroups := "analytics-" + p.topics.Commands + "."
	out := grant(t, p, "--ingest-user", creds["ingest"].user, "--worker-user", creds["worker"].user,
		"--relay-user", creds["relay"].user, "--reader-user", creds["reader"].user,
		"--reader-group-prefix", readerGroups, "--group-id", group)
	if !strings.Contains(out, "11 ACLs in place") {
		t.Errorf("kafka-acls printed:\n%s", out)
	}
	// A reader prefix that covers the workers' group is refused: the reader
	// could join it and be dealt command partitions it cannot fetch.
	err := run(context.Background(), []string{"kafka-acls", "--dry-run", "--reader-user", "r", "--group-id", group, "--reader-group-prefix", "test-"},
		&env{stdout: io.Discard, stderr: io.Discard, lookup: testLookup})
	var uerr usageError
	if !errors.As(err, &uerr) || !strings.Contains(err.Error(), "covers the workers' group") {
		t.Errorf("kafka-acls with a prefix covering the workers' group = %v, want a usage error", err)
	}

	// The pipeline, one process per role, each as its own user.
	bin := buildTxpipe(t)
	dir := t.TempDir()
	api := freeAddr(t)
	common := []string{"--database-url", p.db.URL, "--kafka-brokers", sasl, "--kafka-tls-ca", ca,
		"--commands-topic", p.topics.Commands, "--events-topic", p.topics.Events, "--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ}
	roles := map[string][]string{
		"ingest": {"--http-addr", api},
		"worker": {"--group-id", group, "--session-timeout", "6s"},
		"relay":  {"--relay-poll-interval", "200ms"},
	}
	for role, args := range roles {
		proc := &process{t: t, bin: bin, role: role, log: filepath.Join(dir, role+".log"),
			args: append(append(args, "--kafka-sasl-user", creds[role].user), common...),
			env:  []string{"TXPIPE_KAFKA_SASL_PASSWORD_FILE=" + creds[role].file}}
		proc.start()
		defer func() {
			proc.stop()
			if t.Failed() {
				b, _ := os.ReadFile(proc.log)
				t.Logf("%s log:\n%s", role, tail(string(b), 3000))
			}
		}()
		eventually(t, role+" is ready as its own Kafka user", proc.ready)
	}
	p.api, p.key = "http://"+api, mustKey(t, p)
	open, deposit := uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String()
	for _, body := range []string{
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"acl","currency":"EUR"}`, open),
		fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"acl","amount":500,"currency":"EUR"}`, deposit),
	} {
		if code, resp := p.post(t, "/v1/commands", body); code != 202 {
			t.Fatalf("POST = %d %v", code, resp)
		}
	}
	if status, reason := p.awaitOutcome(t, deposit); status != "applied" {
		t.Fatalf("deposit = %s %s, want applied", status, reason)
	}
	if evs := p.events(t, p.topics.Events, 2); evs[1].CommandID != deposit {
		t.Errorf("events topic = %v, want the two outcomes", evs)
	}

	// Probes, as each user over SASL_SSL.
	as := func(role string) *saslUser { return newSASLUser(t, sasl, ca, creds[role].user, creds[role].password) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	valid := fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"acl-probe","currency":"EUR"}`, uuid.Must(uuid.NewV7()).String())
	for _, c := range []struct {
		what   string
		err    error
		refuse bool
	}{
		{"control: ingest produces a command", produce(ctx, as("ingest"), p.topics.Commands, valid), false},
		{"control: the reader fetches outcomes", fetch(ctx, as("reader"), p.topics.Events), false},
		{"control: the reader fetches postings", fetch(ctx, as("reader"), p.topics.Postings), false},
		{"control: the reader fetches balances", fetch(ctx, as("reader"), p.topics.Balances), false},
		{"control: a worker fetches commands", fetch(ctx, as("worker"), p.topics.Commands), false},
		{"control: a worker reads its group's offsets", groupOffsets(ctx, as("worker"), group, p.topics.Commands), false},
		{"an authenticated user without grants produces a command", produce(ctx, as("intruder"), p.topics.Commands, valid), true},
		{"an authenticated user without grants fetches postings", fetch(ctx, as("intruder"), p.topics.Postings), true},
		{"the reader produces a command", produce(ctx, as("reader"), p.topics.Commands, valid), true},
		{"the reader publishes an outcome to a topic it reads", produce(ctx, as("reader"), p.topics.Events, "{}"), true},
		{"a worker produces a command to the topic it reads", produce(ctx, as("worker"), p.topics.Commands, valid), true},
		{"the reader reads the workers' group", groupOffsets(ctx, as("reader"), group, p.topics.Commands), true},
		{"the reader fetches commands", fetch(ctx, as("reader"), p.topics.Commands), true},
		{"a worker publishes an outcome, bypassing the outbox", produce(ctx, as("worker"), p.topics.Events, "{}"), true},
		{"the relay produces a command", produce(ctx, as("relay"), p.topics.Commands, valid), true},
		{"the relay fetches commands", fetch(ctx, as("relay"), p.topics.Commands), true},
		{"ingest fetches outcomes", fetch(ctx, as("ingest"), p.topics.Events), true},
		{"ingest publishes a posting", produce(ctx, as("ingest"), p.topics.Postings, "{}"), true},
		{"a worker publishes a balance, bypassing the outbox", produce(ctx, as("worker"), p.topics.Balances, "{}"), true},
	} {
		switch {
		case !c.refuse && c.err != nil:
			t.Errorf("%s: %v", c.what, c.err)
		case c.refuse && !refused(c.err):
			t.Errorf("%s: got %v, want an authorization failure", c.what, c.err)
		}
	}
}

// saslUser is a Kafka client that authenticates as a user over TLS, and
// the dialer of its raw connections.
type saslUser struct {
	client *kafka.Client
	dialer *kafka.Dialer
	broker string
}

func newSASLUser(t *testing.T, broker, caFile, user, password string) *saslUser {
	t.Helper()
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
	tr := &kafka.Transport{TLS: tlsConfig, SASL: mech}
	t.Cleanup(tr.CloseIdleConnections)
	return &saslUser{
		client: &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second, Transport: tr},
		dialer: &kafka.Dialer{Timeout: 10 * time.Second, TLS: tlsConfig, SASLMechanism: mech},
		broker: broker,
	}
}

// described asks the broker itself for topic's metadata: a user granted
// nothing on a topic is told so there, while kafka-go's Client answers
// from the metadata it has cached (the topics the user may see) and says
// only "unknown topic".
func described(ctx context.Context, u *saslUser, topic string) error {
	conn, err := u.dialer.DialContext(ctx, "tcp", u.broker)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.ReadPartitions(topic)
	return err
}

func produce(ctx context.Context, u *saslUser, topic, value string) error {
	if err := described(ctx, u, topic); err != nil {
		return err
	}
	resp, err := u.client.Produce(ctx, &kafka.ProduceRequest{Topic: topic, Partition: 0, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes([]byte("acl-probe")), Value: kafka.NewBytes([]byte(value))})})
	if err != nil {
		return err
	}
	return resp.Error
}

func fetch(ctx context.Context, u *saslUser, topic string) error {
	if err := described(ctx, u, topic); err != nil {
		return err
	}
	resp, err := u.client.Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: 0, Offset: 0, MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	return resp.Error
}

func groupOffsets(ctx context.Context, u *saslUser, group, topic string) error {
	resp, err := u.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0}}})
	if err != nil {
		return err
	}
	if resp.Error != nil {
		return resp.Error
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return p.Error
			}
		}
	}
	return nil
}

// refused reports whether err is Kafka refusing an authenticated user.
func refused(err error) bool {
	return errors.Is(err, kafka.TopicAuthorizationFailed) || errors.Is(err, kafka.GroupAuthorizationFailed)
}

// mustKey is an API key with every scope on p's database.
func mustKey(t *testing.T, p *pipeline) string {
	key, _ := createKey(t, p.db.URL, "acl", "commands:write,ledger:read")
	return key
}
