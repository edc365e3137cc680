package main

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestPipelineOverKafkaSASLSSL runs ingest, worker and relay against the
// broker's SASL_SSL listener (SCRAM-SHA-512 over TLS, scripts/kafka.sh) with
// a user made for the test, and against PostgreSQL over verify-full TLS as a
// role refused without it, and checks that commands go through end to end;
// then that a wrong password, a client without TLS, and a client that does
// not trust the broker's CA are all refused.
func TestPipelineOverKafkaSASLSSL(t *testing.T) {
	sasl, ca, pgTLS := saslServices(t)
	// The user and its grants, made over the plaintext listener (an
	// operator's job): the three roles' ACLs, and creating the topics, for
	// the control below.
	p := &pipeline{db: pgtest.New(t), kc: kafkatest.New(t)}
	p.topics = p.kc.Topics(t, 3)
	user, password, pwFile := scramUser(t, p.kc, "txpipe-test")
	grant(t, p, "--ingest-user", user, "--worker-user", user, "--relay-user", user, "--group-id", "test-"+p.topics.Commands)
	var creates []kafka.ACLEntry
	for _, name := range []string{p.topics.Commands, p.topics.Events, p.topics.Postings, p.topics.Balances, p.topics.DLQ} {
		creates = append(creates, kafka.ACLEntry{ResourceType: kafka.ResourceTypeTopic, ResourceName: name, ResourcePatternType: kafka.PatternTypeLiteral,
			Principal: "User:" + user, Host: "*", Operation: kafka.ACLOperationTypeCreate, PermissionType: kafka.ACLPermissionTypeAllow})
	}
	if err := kafkaadmin.CreateACLs(context.Background(), p.kc.Client, creates); err != nil {
		t.Fatal(err)
	}
	key, _ := createKey(t, p.db.URL, "sasl", "commands:write,ledger:read")

	// The whole pipeline over SASL_SSL; the password from a _FILE.
	bin := buildTxpipe(t)
	api := freeAddr(t)
	dir := t.TempDir()
	common := []string{"--database-url", tlsDatabaseURL(t, pgTLS, p.db), "--kafka-brokers", sasl, "--kafka-tls-ca", ca, "--kafka-sasl-user", user,
		"--commands-topic", p.topics.Commands, "--events-topic", p.topics.Events, "--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ}
	proc := &process{t: t, bin: bin, role: "all", log: filepath.Join(dir, "all.log"),
		args: append([]string{"--http-addr", api, "--group-id", "test-" + p.topics.Commands}, common...)}
	t.Setenv("TXPIPE_KAFKA_SASL_PASSWORD_FILE", pwFile) // inherited by the process
	proc.start()
	defer func() {
		proc.stop()
		if t.Failed() {
			b, _ := os.ReadFile(proc.log)
			t.Logf("log:\n%s", tail(string(b), 4000))
		}
	}()
	eventually(t, "the pipeline over SASL_SSL is ready", proc.ready)
	p.api, p.key = "http://"+api, key
	id := uuid.Must(uuid.NewV7()).String()
	if status, body := p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"sasl","currency":"EUR"}`, id)); status != 202 {
		t.Fatalf("POST = %d %v", status, body)
	}
	if status, _ := p.awaitOutcome(t, id); status != "applied" {
		t.Fatalf("outcome = %s, want applied", status)
	}
	if evs := p.events(t, p.topics.Events, 1); len(evs) != 1 || evs[0].CommandID != id {
		t.Errorf("events topic = %v, want the outcome of %s", evs, id)
	}
	if b, _ := os.ReadFile(proc.log); strings.Contains(string(b), password) {
		t.Error("the SASL password reached the log")
	}

	// Refusals at the protocol level, beside a control that succeeds with
	// the right settings (so each refusal is the changed setting's doing).
	topics := func(args ...string) error {
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		return run(cctx, append([]string{"topics", "--log-level", "error", "--commands-topic", p.topics.Commands,
			"--events-topic", p.topics.Events, "--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ}, args...),
			&env{stdout: devNull{}, stderr: devNull{}, lookup: testLookup})
	}
	if err := topics("--kafka-brokers", sasl, "--kafka-tls-ca", ca, "--kafka-sasl-user", user, "--kafka-sasl-password", password); err != nil {
		t.Fatalf("control: txpipe topics with the right settings: %v", err)
	}
	for name, args := range map[string][]string{
		"wrong password": {"--kafka-brokers", sasl, "--kafka-tls-ca", ca, "--kafka-sasl-user", user, "--kafka-sasl-password", "wrong"},
		"no TLS":         {"--kafka-brokers", sasl, "--kafka-sasl-user", user, "--kafka-sasl-password", password},
		"untrusted CA":   {"--kafka-brokers", sasl, "--kafka-tls-ca", otherCA(t), "--kafka-sasl-user", user, "--kafka-sasl-password", password},
		"no SASL":        {"--kafka-brokers", sasl, "--kafka-tls-ca", ca},
	} {
		if err := topics(args...); err == nil {
			t.Errorf("%s: txpipe topics succeeded against the SASL_SSL listener", name)
		}
	}
}

// saslServices returns the SASL_SSL listener, its CA and the TLS database
// URL that scripts/services.sh env exports (containertest.Env).
func saslServices(t *testing.T) (sasl, ca, pgTLS string) {
	t.Helper()
	return containertest.Env(t, "TXPIPE_KAFKA_SASL_BROKERS"), containertest.Env(t, "TXPIPE_KAFKA_CA"),
		containertest.Env(t, "TXPIPE_DATABASE_TLS_URL")
}

// grant runs txpipe kafka-acls over the plaintext listener (whose
// ANONYMOUS clients are the development broker's super users) for p's
// topics, with args naming the users, and returns what it printed.
func grant(t *testing.T, p *pipeline, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"kafka-acls", "--kafka-brokers", strings.Join(p.kc.Brokers, ","),
		"--commands-topic", p.topics.Commands, "--events-topic", p.topics.Events,
		"--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ}, args...),
		&env{stdout: &out, stderr: io.Discard, lookup: testLookup})
	if err != nil {
		t.Fatalf("txpipe kafka-acls: %v\n%s", err, out.String())
	}
	return out.String()
}

// buildTxpipe builds the binary for tests that run it as processes.
func buildTxpipe(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "txpipe")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// scramUser makes a SCRAM-SHA-512 user with a random name starting with
// prefix, over the plaintext listener (an operator's job), and returns its
// name, its password and a file holding the password.
func scramUser(t *testing.T, kc *kafkatest.Cluster, prefix string) (user, password, file string) {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	user, password = prefix+"-"+hex.EncodeToString(b[:4]), hex.EncodeToString(b[:])
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	salted, err := pbkdf2.Key(sha512.New, password, salt, 4096, sha512.Size)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := kc.Client.AlterUserScramCredentials(ctx, &kafka.AlterUserScramCredentialsRequest{
		Upsertions: []kafka.UserScramCredentialsUpsertion{{Name: user, Mechanism: kafka.ScramMechanismSha512, Iterations: 4096, Salt: salt, SaltedPassword: salted}}})
	if err != nil || len(res.Results) != 1 || res.Results[0].Error != nil {
		t.Fatalf("create SCRAM user: %v %+v", err, res)
	}
	file = filepath.Join(t.TempDir(), "sasl-password")
	if err := os.WriteFile(file, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	return user, password, file
}

type devNull struct{}

func (devNull) Write(b []byte) (int, error) { return len(b), nil }

func otherCA(t *testing.T) string {
	_, _, ca, _ := testCA(t, t.TempDir())
	return ca
}
