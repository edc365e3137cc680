package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/openapitest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/schematest"
)

// pipeline is "txpipe all" running in this test process against the real
// Kafka and PostgreSQL, on its own database and topics.
type pipeline struct {
	api, admin string
	key, keyID string        // an API key with every scope, and its id
	logs       func() string // what the pipeline logged so far
	db         *pgtest.DB
	kc         *kafkatest.Cluster
	topics     kafkatest.Topics
}

func startPipeline(t *testing.T) *pipeline { return startPipelineWith(t, 3) }

// startPipelineWith runs the pipeline on topics of the given partition
// count, with extra flags for "txpipe all".
func startPipelineWith(t *testing.T, partitions int, extra ...string) *pipeline {
	t.Helper()
	p := newPipeline(t, partitions)
	p.start(t, nil, extra...)
	return p
}

// newPipeline makes a pipeline's database, topics and API key, and starts
// nothing.
func newPipeline(t *testing.T, partitions int) *pipeline {
	t.Helper()
	p := &pipeline{db: pgtest.New(t), kc: kafkatest.New(t)}
	p.topics = p.kc.Topics(t, partitions)
	p.key, p.keyID = createKey(t, p.db.URL, "e2e", "commands:write,ledger:read")
	return p
}

// start runs "txpipe all" on p's database and topics, with the workers'
// clock (nil: PostgreSQL's) and extra flags, until the returned stop is
// called or the test ends, and waits until it is ready.
func (p *pipeline) start(t *testing.T, clock ledger.Clock, extra ...string) (stop func()) {
	t.Helper()
	args := []string{"all",
		"--database-url", p.db.URL,
		"--kafka-brokers", strings.Join(p.kc.Brokers, ","),
		"--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--commands-topic", p.topics.Commands, "--events-topic", p.topics.Events,
		"--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ,
		"--group-id", "test-" + p.topics.Commands,
		"--relay-poll-interval", "100ms",
		"--shutdown-timeout", "5s",
		"--log-level", "debug",
	}
	api, admin, logs, stop := startServing(t, append(args, extra...), clock)
	t.Cleanup(stop)
	p.api, p.admin, p.logs = "http://"+api, "http://"+admin, logs
	eventually(t, "the pipeline is ready", func() bool {
		resp, err := http.Get(p.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return stop
}

// runServing runs txpipe with args (a serving subcommand, listening on
// 127.0.0.1:0) in this process until the test ends, and returns the API and
// admin addresses and a reader of what it logged (printed if the test fails).
func runServing(t *testing.T, args []string) (api, admin string, logs func() string) {
	t.Helper()
	api, admin, logs, stop := startServing(t, args, nil)
	t.Cleanup(stop)
	return api, admin, logs
}

// startServing is runServing with the workers' clock (nil: PostgreSQL's),
// returning also stop, which ends the process (as an operator's SIGTERM
// would) and waits for it; it is for the caller to call.
func startServing(t *testing.T, args []string, clock ledger.Clock) (api, admin string, logs func() string, stop func()) {
	t.Helper()
	var mu sync.Mutex
	addrs := make(map[string]string)
	listening := make(chan struct{}, 2)
	var buf bytes.Buffer
	lw := &lockedWriter{w: &buf}
	logs = func() string {
		lw.mu.Lock()
		defer lw.mu.Unlock()
		return buf.String()
	}
	e := &env{
		stderr: lw,
		lookup: testLookup,
		onListen: func(server, addr string) {
			mu.Lock()
			addrs[server] = addr
			mu.Unlock()
			listening <- struct{}{}
		},
		clock: clock,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, e) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run() = %v, want nil after cancel", err)
			}
			if t.Failed() {
				t.Logf("txpipe log:\n%s", logs())
			}
		})
	}
	for range 2 {
		select {
		case <-listening:
		case err := <-done:
			t.Fatalf("run() ended early: %v\n%s", err, logs())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return addrs["api"], addrs["admin"], logs, stop
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// eventually polls cond until it holds, failing the test after 60 s. It
// waits for asynchronous work to finish; no assertion depends on how fast.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createKey runs "txpipe apikey create" and returns the key and its id.
func createKey(t *testing.T, dbURL, name, scopes string) (key, id string) {
	t.Helper()
	return createScopedKey(t, dbURL, name, scopes, "")
}

// createScopedKey makes a key scoped to the accounts patterns match (every
// account when accounts is "").
func createScopedKey(t *testing.T, dbURL, name, scopes, accounts string) (key, id string) {
	t.Helper()
	args := []string{"apikey", "create", "--database-url", dbURL, "--name", name, "--scopes", scopes}
	if accounts != "" {
		args = append(args, "--accounts", accounts)
	}
	var out bytes.Buffer
	if err := run(context.Background(), args, &env{stdout: &out, stderr: io.Discard, lookup: testLookup}); err != nil {
		t.Fatalf("apikey create: %v", err)
	}
	for _, l := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "api key: "); ok {
			key = v
		}
		if v, ok := strings.CutPrefix(l, "key id: "); ok {
			id = v
		}
	}
	if key == "" || id == "" {
		t.Fatalf("apikey create printed no key:\n%s", out.String())
	}
	return key, id
}

// exchange sends req with body and returns the response, its body read:
// every exchange of the end-to-end tests with the API is checked against
// docs/openapi.yaml.
func exchange(t *testing.T, req *http.Request, body string) (*http.Response, []byte) {
	t.Helper()
	if body != "" {
		req.Body = io.NopCloser(strings.NewReader(body))
		req.ContentLength = int64(len(body))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the response: %v", req.Method, req.URL.Path, err)
	}
	openapitest.Check(t, req, []byte(body), resp, b)
	return resp, b
}

// request sends a request with key (none when empty) and returns the status
// and the decoded body.
func (p *pipeline) request(t *testing.T, method, path, body, key string) (int, map[string]any, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, p.api+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, b := exchange(t, req, body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out, resp.Header
}

func (p *pipeline) post(t *testing.T, path, body string) (int, map[string]any) {
	t.Helper()
	code, out, _ := p.request(t, http.MethodPost, path, body, p.key)
	if out == nil {
		t.Fatalf("POST %s = %d: undecodable response", path, code)
	}
	return code, out
}

func (p *pipeline) get(t *testing.T, path string, v any) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.api+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.key)
	resp, b := exchange(t, req, "")
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: undecodable response: %v", path, err)
		}
	}
	return resp.StatusCode
}

// submit posts one command and returns its outcome once it has one.
func (p *pipeline) submit(t *testing.T, body string) (status, reason string) {
	t.Helper()
	var c struct {
		CommandID string `json:"command_id"`
	}
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatalf("command %s: %v", body, err)
	}
	if code, resp := p.post(t, "/v1/commands", body); code != http.StatusAccepted {
		t.Fatalf("POST %s = %d %v", body, code, resp)
	}
	return p.awaitOutcome(t, c.CommandID)
}

// awaitOutcome waits until command id has an outcome and returns its status.
func (p *pipeline) awaitOutcome(t *testing.T, id string) (status, reason string) {
	t.Helper()
	var c struct{ Status, Reason string }
	eventually(t, "command "+id+" is processed", func() bool { return p.get(t, "/v1/commands/"+id, &c) == http.StatusOK })
	return c.Status, c.Reason
}

// events reads n records of topic and decodes them.
func (p *pipeline) events(t *testing.T, topic string, n int) []domain.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msgs := p.kc.ReadAll(ctx, t, topic, n)
	if len(msgs) != n {
		t.Fatalf("read %d records from %s, want %d", len(msgs), topic, n)
	}
	evs := make([]domain.Event, n)
	for i, m := range msgs {
		if err := json.Unmarshal(m.Value, &evs[i]); err != nil {
			t.Fatalf("record on %s is not an event: %v", topic, err)
		}
		if got := kafkatest.Header(m, "event_id"); got != evs[i].EventID {
			t.Errorf("event_id header = %q, want the event's %q", got, evs[i].EventID)
		}
	}
	return evs
}

func TestEndToEndOverHTTP(t *testing.T) {
	p := startPipeline(t)
	ids := map[string]string{"open_alice": uuid.Must(uuid.NewV7()).String(), "open_bob": uuid.Must(uuid.NewV7()).String(), "deposit": uuid.Must(uuid.NewV7()).String(), "transfer": uuid.Must(uuid.NewV7()).String()}
	for _, body := range []string{
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"alice","currency":"EUR"}`, ids["open_alice"]),
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"bob","currency":"EUR"}`, ids["open_bob"]),
	} {
		if code, resp := p.post(t, "/v1/commands", body); code != http.StatusAccepted || resp["status"] != "accepted" {
			t.Fatalf("POST open_account = %d %v, want 202 accepted", code, resp)
		}
	}
	p.awaitOutcome(t, ids["open_alice"])
	p.awaitOutcome(t, ids["open_bob"])
	batch := fmt.Sprintf(`{"commands":[
		{"command_id":%q,"type":"deposit","account_id":"alice","amount":1000,"currency":"EUR"},
		{"command_id":%q,"type":"transfer","from_account_id":"alice","to_account_id":"bob","amount":250,"currency":"EUR"}]}`,
		ids["deposit"], ids["transfer"])
	code, resp := p.post(t, "/v1/commands/batch", batch)
	if code != http.StatusAccepted {
		t.Fatalf("POST batch = %d %v, want 202", code, resp)
	}
	if results, _ := resp["results"].([]any); len(results) != 2 {
		t.Fatalf("batch results = %v, want 2 items", resp["results"])
	}
	if status, reason := p.awaitOutcome(t, ids["transfer"]); status != "applied" {
		t.Fatalf("transfer outcome = %s %s, want applied", status, reason)
	}

	// A malformed command is refused and never reaches Kafka.
	code, prob := p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"alice","amount":1.5,"currency":"EUR"}`, uuid.Must(uuid.NewV7()).String()))
	if code != http.StatusBadRequest || !strings.HasPrefix(fmt.Sprint(prob["type"]), "urn:txpipe:problem:") {
		t.Errorf("POST bad amount = %d %v, want 400 problem+json", code, prob)
	}

	for account, want := range map[string]int64{"alice": 750, "bob": 250} {
		var acct struct {
			Balance, Available, Version int64
			Currency                    string
		}
		if code := p.get(t, "/v1/accounts/"+account, &acct); code != http.StatusOK {
			t.Fatalf("GET account %s = %d", account, code)
		}
		if acct.Balance != want || acct.Available != want || acct.Currency != "EUR" {
			t.Errorf("account %s = %+v, want balance and available %d EUR", account, acct, want)
		}
	}

	var types []string
	for _, ev := range p.events(t, p.topics.Events, 4) {
		types = append(types, ev.Type)
	}
	slices.Sort(types)
	if diff := cmp.Diff([]string{"deposit.applied", "open_account.applied", "open_account.applied", "transfer.applied"}, types); diff != "" {
		t.Errorf("outcome events mismatch (-want +got):\n%s", diff)
	}

	// Postings: per account, versions from 1 with no gap, and each
	// balance_after follows from the one before.
	byAccount := make(map[string][]domain.PostingData)
	commandOf := make(map[string]string) // by digest
	for _, ev := range p.events(t, p.topics.Postings, 4) {
		var pd domain.PostingData
		if err := json.Unmarshal(ev.Data, &pd); err != nil {
			t.Fatal(err)
		}
		byAccount[pd.AccountID] = append(byAccount[pd.AccountID], pd)
		commandOf[pd.Digest] = ev.CommandID
	}
	// Each posting chains to its account's previous one (docs/events.md).
	for acct, ps := range byAccount {
		prev := ""
		for _, pd := range ps {
			p := domain.Posting{AccountID: pd.AccountID, AccountVersion: pd.AccountVersion, Currency: pd.Currency, Amount: pd.Amount, BalanceAfter: pd.BalanceAfter}
			if want := domain.PostingDigest(prev, p, commandOf[pd.Digest]); pd.Digest != want {
				t.Errorf("account %s version %d: digest %q, want %s", acct, pd.AccountVersion, pd.Digest, want)
			}
			prev = pd.Digest
		}
	}
	want := map[string][]domain.PostingData{
		"alice": {
			{AccountID: "alice", AccountVersion: 1, Currency: "EUR", Amount: 1000, BalanceAfter: 1000, CommandType: domain.TypeDeposit},
			{AccountID: "alice", AccountVersion: 2, Currency: "EUR", Amount: -250, BalanceAfter: 750, CommandType: domain.TypeTransfer},
		},
		"bob":                           {{AccountID: "bob", AccountVersion: 1, Currency: "EUR", Amount: 250, BalanceAfter: 250, CommandType: domain.TypeTransfer}},
		domain.ExternalAccountID("EUR"): {{AccountID: domain.ExternalAccountID("EUR"), AccountVersion: 1, Currency: "EUR", Amount: -1000, BalanceAfter: -1000, CommandType: domain.TypeDeposit}},
	}
	if diff := cmp.Diff(want, byAccount, cmpopts.IgnoreFields(domain.PostingData{}, "Digest")); diff != "" {
		t.Errorf("postings mismatch (-want +got):\n%s", diff)
	}

	var tr domain.TransferData
	if code := p.get(t, "/v1/transfers/"+ids["transfer"], &tr); code != http.StatusOK {
		t.Fatalf("GET transfer = %d", code)
	}
	wantTransfer := domain.TransferData{TransferID: ids["transfer"], Kind: domain.KindTransfer, FromAccountID: "alice", ToAccountID: "bob",
		Currency: "EUR", Amount: 250, Status: domain.TransferPosted}
	if diff := cmp.Diff(wantTransfer, tr); diff != "" {
		t.Errorf("GET transfer mismatch (-want +got):\n%s", diff)
	}
	// The statement, newest first, one entry per page.
	type page struct {
		Entries []struct {
			AccountVersion int64  `json:"account_version"`
			BalanceAfter   int64  `json:"balance_after"`
			CommandID      string `json:"command_id"`
		}
		NextAfter *int64 `json:"next_after"`
	}
	var first, second page
	p.get(t, "/v1/accounts/alice/entries?limit=1", &first)
	if len(first.Entries) != 1 || first.Entries[0].AccountVersion != 2 || first.Entries[0].CommandID != ids["transfer"] || first.NextAfter == nil {
		t.Fatalf("first statement page = %+v, want version 2 (the transfer) and a cursor", first)
	}
	p.get(t, fmt.Sprintf("/v1/accounts/alice/entries?limit=1&after=%d", *first.NextAfter), &second)
	if len(second.Entries) != 1 || second.Entries[0].AccountVersion != 1 || second.Entries[0].BalanceAfter != 1000 || second.NextAfter != nil {
		t.Errorf("second statement page = %+v, want version 1 (the deposit) and no cursor", second)
	}

	ctx := context.Background()
	if n := p.kc.Count(ctx, t, p.topics.Commands); n != 4 {
		t.Errorf("commands topic holds %d records, want 4 (the malformed command must not be produced)", n)
	}
	if out := p.verify(t); !strings.Contains(out, "all invariants hold") {
		t.Errorf("verify output lacks its verdict:\n%s", out)
	}

	// Who moved what: every command came through the API with p's key, so
	// its id is on the command record, the ledger rows and the events.
	var commands, entries, unattributed int
	err := p.db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM processed_commands WHERE submitted_by = $1),
		(SELECT count(*) FROM entries WHERE submitted_by = $1),
		(SELECT count(*) FROM processed_commands WHERE submitted_by <> $1) + (SELECT count(*) FROM entries WHERE submitted_by <> $1)`, p.keyID).
		Scan(&commands, &entries, &unattributed)
	if err != nil || commands != 4 || entries == 0 || unattributed != 0 {
		t.Errorf("rows submitted by the key: %d commands, %d entries, %d others (%v); want 4, some, 0", commands, entries, unattributed, err)
	}
	for _, topic := range []string{p.topics.Events, p.topics.Postings} {
		for _, ev := range p.events(t, topic, 4) {
			if ev.SubmittedBy != p.keyID {
				t.Errorf("event %s on %s: submitted_by %q, want %q", ev.EventID, topic, ev.SubmittedBy, p.keyID)
			}
		}
	}
}

// verify drains the pipeline, then runs "txpipe verify" and fails the test
// on any violation.
func (p *pipeline) verify(t *testing.T) string {
	t.Helper()
	p.drain(t)
	out, err := p.runVerify()
	if err != nil {
		t.Fatalf("txpipe verify = %v:\n%s", err, out)
	}
	p.validateSchemas(t)
	return out
}

// drain waits until every command record is processed and the outbox is
// empty.
func (p *pipeline) drain(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	eventually(t, "the pipeline drains", func() bool {
		var processed, pending int64
		_ = p.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&processed)
		_ = p.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&pending)
		return processed == p.kc.Count(ctx, t, p.topics.Commands) && pending == 0
	})
}

// validateSchemas checks every record of the events, postings and
// balances topics, and every valid command, against docs/schemas, and the
// CloudEvents headers of the records of the three result topics.
func (p *pipeline) validateSchemas(t *testing.T) {
	t.Helper()
	schemas := schematest.Load(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, topic := range []string{p.topics.Events, p.topics.Postings, p.topics.Balances, p.topics.Commands} {
		n := p.kc.Count(ctx, t, topic)
		for _, m := range p.kc.ReadAll(ctx, t, topic, int(n)) {
			var err error
			if topic == p.topics.Commands {
				if _, derr := domain.DecodeCommand(m.Value); derr != nil {
					continue // dead-lettered, not a command
				}
				err = schemas.Command(m.Value)
			} else if topic == p.topics.Balances {
				err = schemas.Balance(m.Value)
				if cerr := balanceCloudEvent(m); cerr != nil {
					t.Errorf("record %s/%d@%d is not a CloudEvent in binary mode: %v", topic, m.Partition, m.Offset, cerr)
				}
			} else {
				err = schemas.Event(m.Value)
				if cerr := cloudEvent(m); cerr != nil {
					t.Errorf("record %s/%d@%d is not a CloudEvent in binary mode: %v", topic, m.Partition, m.Offset, cerr)
				}
			}
			if err != nil {
				t.Errorf("record %s/%d@%d does not match its schema: %v\n%s", topic, m.Partition, m.Offset, err, m.Value)
			}
		}
	}
}

// cloudEvent checks the CloudEvents 1.0 binary-mode headers of an event
// record against its value (docs/events.md).
func cloudEvent(m kafka.Message) error {
	h := map[string]string{}
	for _, x := range m.Headers {
		if _, dup := h[x.Key]; dup {
			return fmt.Errorf("header %s twice", x.Key)
		}
		h[x.Key] = string(x.Value)
	}
	var ev domain.Event
	if err := json.Unmarshal(m.Value, &ev); err != nil {
		return err
	}
	at, err := time.Parse(time.RFC3339Nano, h["ce_time"])
	switch {
	case err != nil || !at.Equal(ev.OccurredAt):
		return fmt.Errorf("ce_time %q, want the event's occurred_at %v", h["ce_time"], ev.OccurredAt)
	case h["ce_specversion"] != "1.0" || h["ce_id"] != ev.EventID || h["ce_type"] != "txpipe."+ev.Type ||
		h["ce_source"] != "urn:txpipe:ledger" || h["content-type"] != "application/json" || h["ce_subject"] != string(m.Key):
		return fmt.Errorf("headers %v for event %s of type %s keyed %s", h, ev.EventID, ev.Type, m.Key)
	}
	return nil
}

// balanceCloudEvent checks the CloudEvents headers of a balance record,
// whose value is not an event envelope: its own id and time.
func balanceCloudEvent(m kafka.Message) error {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	if _, err := uuid.Parse(h["ce_id"]); err != nil || h["ce_specversion"] != "1.0" || h["ce_type"] != "txpipe.balance.updated" ||
		h["ce_source"] != "urn:txpipe:ledger" || h["content-type"] != "application/json" || h["ce_subject"] != string(m.Key) {
		return fmt.Errorf("headers %v", h)
	}
	if _, err := time.Parse(time.RFC3339Nano, h["ce_time"]); err != nil {
		return fmt.Errorf("ce_time %q: %v", h["ce_time"], err)
	}
	return nil
}

func (p *pipeline) runVerify() (string, error) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"verify",
		"--database-url", p.db.URL, "--kafka-brokers", strings.Join(p.kc.Brokers, ","),
		"--commands-topic", p.topics.Commands, "--events-topic", p.topics.Events,
		"--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ,
		"--group-id", "test-" + p.topics.Commands,
	}, &env{stdout: &out, stderr: io.Discard, lookup: testLookup})
	return out.String(), err
}

// produce writes raw records straight to the commands topic, as an
// upstream that bypasses the API would.
func (p *pipeline) produce(t *testing.T, key string, values ...string) {
	t.Helper()
	w := p.kc.Writer(t)
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Topic: p.topics.Commands, Key: []byte(key), Value: []byte(v)}
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

func TestDuplicateDeliveryAppliesOnce(t *testing.T) {
	p := startPipeline(t)
	open, dep := uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String()
	deposit := func(amount int) string {
		return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"carol","amount":%d,"currency":"USD"}`, dep, amount)
	}
	p.produce(t, "carol",
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"carol","currency":"USD"}`, open),
		deposit(100), deposit(100), // delivered twice
		deposit(5), // same command_id, other content
	)
	evs := p.events(t, p.topics.Events, 3)
	// Every record was processed once the outbox is drained and the stored
	// offsets cover all four records: then the count of events is final.
	ctx := context.Background()
	eventually(t, "all four records are applied and published", func() bool {
		var next, pending int64
		_ = p.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&next)
		_ = p.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&pending)
		return next == 4 && pending == 0
	})
	if n := p.kc.Count(ctx, t, p.topics.Events); n != 3 {
		t.Errorf("events topic holds %d records, want 3 (open, deposit, conflict)", n)
	}
	var got []string
	for _, ev := range evs {
		var d domain.OutcomeData
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %s", ev.Type, ev.CommandID, d.Reason))
	}
	want := []string{
		"open_account.applied " + open + " ",
		"deposit.applied " + dep + " ",
		"deposit.rejected " + dep + " idempotency_conflict",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcome events mismatch (-want +got):\n%s", diff)
	}
	var acct struct{ Balance int64 }
	p.get(t, "/v1/accounts/carol", &acct)
	if acct.Balance != 100 {
		t.Errorf("carol balance = %d, want 100 (the duplicate and the conflict have no effect)", acct.Balance)
	}
	if status, _ := p.awaitOutcome(t, dep); status != "applied" {
		t.Errorf("GET /v1/commands/%s status = %s, want the first decision, applied", dep, status)
	}
	p.verify(t)

	// verify must notice a ledger that was changed behind its back.
	if _, err := p.db.Pool.Exec(ctx, `UPDATE accounts SET balance = balance + 1 WHERE account_id = 'carol'`); err != nil {
		t.Fatal(err)
	}
	out, err := p.runVerify()
	if !errors.Is(err, errViolations) || !strings.Contains(out, "FAIL invariant 3") || !strings.Contains(out, "FAIL invariant 4") {
		t.Errorf("verify after tampering = %v, want violations of invariants 3 and 4:\n%s", err, out)
	}
}

func TestPoisonRecordGoesToDLQAndPartitionFlows(t *testing.T) {
	p := startPipeline(t)
	garbage := "\x00\xff not json at all"
	open := uuid.Must(uuid.NewV7()).String()
	p.produce(t, "dave", garbage, fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"dave","currency":"GBP"}`, open))
	if status, _ := p.awaitOutcome(t, open); status != "applied" {
		t.Fatalf("the record after the poison one = %s, want applied", status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dlq := p.kc.ReadAll(ctx, t, p.topics.DLQ, 1)
	if len(dlq) != 1 {
		t.Fatalf("DLQ holds %d records, want 1", len(dlq))
	}
	m := dlq[0]
	if string(m.Value) != garbage || string(m.Key) != "dave" {
		t.Errorf("DLQ record = key %q value %q, want the original key and bytes", m.Key, m.Value)
	}
	for h, want := range map[string]string{"dlq_reason": "malformed", "source_topic": p.topics.Commands, "source_offset": "0"} {
		if got := kafkatest.Header(m, h); got != want {
			t.Errorf("DLQ header %s = %q, want %q", h, got, want)
		}
	}
	if kafkatest.Header(m, "dlq_detail") == "" {
		t.Error("DLQ record has no dlq_detail header")
	}
	p.verify(t)

	// txpipe dlq list shows it; dlq replay sends it back (still garbage, so
	// it is dead-lettered again); an unknown record is refused.
	dlqCmd := func(args ...string) (string, error) {
		var out bytes.Buffer
		full := append(append([]string{"dlq"}, args...), "--kafka-brokers", strings.Join(p.kc.Brokers, ","),
			"--commands-topic", p.topics.Commands, "--dlq-topic", p.topics.DLQ, "--log-level", "warn")
		err := run(context.Background(), full, &env{stdout: &out, stderr: io.Discard, lookup: testLookup})
		return out.String(), err
	}
	list, err := dlqCmd("list")
	ref := fmt.Sprintf("%d@%d", m.Partition, m.Offset)
	if err != nil || !strings.Contains(list, ref+" reason=malformed source="+p.topics.Commands+"/"+kafkatest.Header(m, "source_partition")+"@0") || !strings.Contains(list, "1 records") {
		t.Fatalf("dlq list = %v:\n%s\nwant the record %s with its reason and origin", err, list, ref)
	}
	if out, err := dlqCmd("replay", "--records", ref); err != nil || !strings.Contains(out, "replayed 1 records") {
		t.Fatalf("dlq replay = %v: %s", err, out)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel2()
	if again := p.kc.ReadAll(ctx2, t, p.topics.DLQ, 2); len(again) != 2 || string(again[1].Value) != garbage {
		t.Errorf("DLQ after replaying the garbage = %d records, want it dead-lettered again", len(again))
	}
	eventually(t, "the worker counts the replayed record", func() bool {
		return scrape(t, strings.TrimPrefix(p.admin, "http://"), `txpipe_consumer_replayed_records_total{outcome="dlq"}`) == 1
	})
	if _, err := dlqCmd("replay", "--records", "0@999"); err == nil {
		t.Error("dlq replay of a record not in the DLQ succeeded")
	}
}

// TestHoldLifecycleOverHTTP: a hold captured in part, one released, one
// left to expire by the workers, and a partial reversal, seen through the
// API and the topics.
func TestHoldLifecycleOverHTTP(t *testing.T) {
	p := startPipelineWith(t, 3, "--hold-expiry-interval", "100ms")
	ids := make(map[string]string)
	for _, k := range []string{"open_a", "open_b", "deposit", "hold1", "hold2", "hold3", "capture", "release", "reverse"} {
		ids[k] = uuid.Must(uuid.NewV7()).String()
	}
	post := func(body string) {
		t.Helper()
		if code, resp := p.post(t, "/v1/commands", body); code != http.StatusAccepted {
			t.Fatalf("POST %s = %d %v", body, code, resp)
		}
	}
	post(fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"payer","currency":"EUR"}`, ids["open_a"]))
	post(fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"shop","currency":"EUR"}`, ids["open_b"]))
	p.awaitOutcome(t, ids["open_b"])
	post(fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"payer","amount":1000,"currency":"EUR"}`, ids["deposit"]))
	hold := func(id string, amount int, expires time.Time) {
		post(fmt.Sprintf(`{"command_id":%q,"type":"hold","from_account_id":"payer","to_account_id":"shop","amount":%d,"currency":"EUR","expires_at":%q}`,
			id, amount, expires.UTC().Format(time.RFC3339Nano)))
	}
	hold(ids["hold1"], 300, time.Now().Add(time.Hour))
	hold(ids["hold2"], 200, time.Now().Add(time.Hour))
	hold(ids["hold3"], 100, time.Now().Add(2*time.Second))
	post(fmt.Sprintf(`{"command_id":%q,"type":"capture","account_id":"payer","hold_id":%q,"amount":250}`, ids["capture"], ids["hold1"]))
	post(fmt.Sprintf(`{"command_id":%q,"type":"release","account_id":"payer","hold_id":%q}`, ids["release"], ids["hold2"]))
	post(fmt.Sprintf(`{"command_id":%q,"type":"reverse","account_id":"payer","transfer_id":%q,"amount":50}`, ids["reverse"], ids["hold1"]))
	if status, reason := p.awaitOutcome(t, ids["reverse"]); status != "applied" {
		t.Fatalf("reverse = %s %s, want applied", status, reason)
	}
	var h domain.TransferData
	eventually(t, "the third hold expires", func() bool {
		return p.get(t, "/v1/transfers/"+ids["hold3"], &h) == http.StatusOK && h.Status == domain.TransferExpired
	})
	var payer struct {
		Balance, Available int64
		PendingHolds       int64 `json:"pending_holds"`
	}
	p.get(t, "/v1/accounts/payer", &payer)
	if payer.Balance != 800 || payer.PendingHolds != 0 || payer.Available != 800 {
		t.Errorf("payer = %+v, want balance 800 (1000 - 250 + 50), no holds", payer)
	}
	p.get(t, "/v1/transfers/"+ids["hold1"], &h)
	if h.Status != domain.TransferCaptured || h.CapturedAmount != 250 || h.ReversedAmount != 50 {
		t.Errorf("first hold = %+v, want captured 250, reversed 50", h)
	}
	p.verify(t)
}

// TestReadyzSaysWhyWhenPostgresIsUnreachable: with the database away, the
// process stays up, /readyz names the failing dependency and what it last
// knew of the primary, and /healthz still answers (the process itself is
// alive). An ingest alone stays ready through such a gap only while it has
// read a key lately (httpserver's optional checks, apikey.ReadWithin); one
// that never reached the database cannot authenticate anyone, and is not.
func TestReadyzSaysWhyWhenPostgresIsUnreachable(t *testing.T) {
	kc := kafkatest.New(t)
	topics := kc.Topics(t, 1)
	dead := freeAddr(t)
	common := []string{"--database-url", "postgres://txpipe:txpipe@" + dead + "/txpipe?sslmode=disable&connect_timeout=1",
		"--kafka-brokers", strings.Join(kc.Brokers, ","), "--admin-addr", "127.0.0.1:0", "--commands-topic", topics.Commands,
		"--shutdown-timeout", "5s"}
	for _, tc := range []struct {
		role   string
		args   []string
		code   int
		status string
	}{
		{"worker", []string{"--events-topic", topics.Events, "--postings-topic", topics.Postings, "--balances-topic", topics.Balances,
			"--dlq-topic", topics.DLQ, "--group-id", "test-" + topics.Commands}, http.StatusServiceUnavailable, "not ready"},
		{"ingest", []string{"--http-addr", "127.0.0.1:0"}, http.StatusServiceUnavailable, "not ready"},
	} {
		t.Run(tc.role, func(t *testing.T) {
			admin := make(chan string, 2)
			e := &env{stdout: io.Discard, stderr: io.Discard, lookup: testLookup,
				onListen: func(server, addr string) {
					if server == "admin" {
						admin <- addr
					}
				}}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, append(append([]string{tc.role}, common...), tc.args...), e) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("run() = %v, want nil after cancel", err)
				}
			}()
			var base string
			select {
			case addr := <-admin:
				base = "http://" + addr
			case err := <-done:
				done <- err // for the deferred check
				t.Fatalf("run() ended before listening: %v", err)
			}
			var body struct {
				Status  string
				Checks  map[string]string
				Details map[string]string
			}
			eventually(t, "/readyz reports PostgreSQL", func() bool {
				resp, err := http.Get(base + "/readyz")
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				_ = json.NewDecoder(resp.Body).Decode(&body)
				return resp.StatusCode == tc.code && body.Checks["postgres"] != "" && body.Checks["postgres"] != "ok" &&
					strings.Contains(body.Details["postgres"], "no primary seen yet")
			})
			if body.Status != tc.status || body.Checks["kafka"] != "ok" {
				t.Errorf("/readyz = %+v, want %s with kafka ok and postgres failing", body, tc.status)
			}
			resp, err := http.Get(base + "/healthz")
			if err != nil {
				t.Fatalf("/healthz: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("/healthz = %d, want 200", resp.StatusCode)
			}
		})
	}
}

// TestEveryKindOfPoisonIsDeadLettered produces, straight onto the commands
// topic, each kind of record a producer can get wrong. Each goes to the DLQ
// with its reason and origin, the worker counts it by reason, and the
// partition keeps flowing.
func TestEveryKindOfPoisonIsDeadLettered(t *testing.T) {
	p := startPipelineWith(t, 1)
	open := uuid.Must(uuid.NewV7()).String()
	poison := []struct{ value, reason string }{
		{"\x00\xff garbage", "malformed"},
		{`[1, 2, 3]`, "malformed"},
		{`{"hello":"world"}`, "invalid_command"},
		{fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"erin"}`, uuid.Must(uuid.NewV7()).String()), "invalid_command"},
		{fmt.Sprintf(`{"command_id":%q,"type":"teleport"}`, uuid.Must(uuid.NewV7()).String()), "unknown_type"},
		{fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"not an id!","currency":"EUR"}`, uuid.Must(uuid.NewV7()).String()), "invalid_command"},
		{fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"erin","currency":"EUR","metadata":{"pad":%q}}`, uuid.Must(uuid.NewV7()).String(), strings.Repeat("x", domain.MaxCommandBytes)), "too_large"},
	}
	var values []string
	for _, x := range poison {
		values = append(values, x.value)
	}
	p.produce(t, "erin", append(values, fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"erin","currency":"EUR"}`, open))...)
	if status, _ := p.awaitOutcome(t, open); status != "applied" {
		t.Fatalf("the record after the poison = %s, want applied", status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dlq := p.kc.ReadAll(ctx, t, p.topics.DLQ, len(poison))
	if len(dlq) != len(poison) {
		t.Fatalf("DLQ holds %d records, want %d", len(dlq), len(poison))
	}
	counts := map[string]int{}
	for i, m := range dlq {
		want := poison[i]
		if got := kafkatest.Header(m, "dlq_reason"); got != want.reason {
			t.Errorf("DLQ record %d: reason %q, want %q (%.40q)", i, got, want.reason, want.value)
		}
		if got := kafkatest.Header(m, "source_offset"); got != strconv.Itoa(i) {
			t.Errorf("DLQ record %d: source_offset %s, want %d", i, got, i)
		}
		if string(m.Value) != want.value || kafkatest.Header(m, "dlq_detail") == "" {
			t.Errorf("DLQ record %d: value or detail lost", i)
		}
		counts[want.reason]++
	}
	for reason, n := range counts {
		// The worker counts a batch just after its commit, which the test
		// may see first: wait for the count, which must reach n exactly.
		series := fmt.Sprintf(`txpipe_consumer_commands_total{outcome="dlq",reason=%q}`, reason)
		var got float64
		eventually(t, fmt.Sprintf("%s reaches %d", series, n), func() bool {
			got = scrape(t, strings.TrimPrefix(p.admin, "http://"), series)
			return got >= float64(n)
		})
		if got != float64(n) {
			t.Errorf("%s = %v, want %d", series, got, n)
		}
	}
	p.verify(t)
}

// TestLagGrowsWhileTheWorkerIsStalled holds the partition's stored-offset
// row locked, so the worker's next batch waits on it: the lag gauge must
// still show the records piling up, and fall to zero once the lock goes.
func TestLagGrowsWhileTheWorkerIsStalled(t *testing.T) {
	p := startPipelineWith(t, 1)
	admin := strings.TrimPrefix(p.admin, "http://")
	first := uuid.Must(uuid.NewV7()).String()
	p.produce(t, "gina", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"gina","currency":"EUR"}`, first))
	if status, _ := p.awaitOutcome(t, first); status != "applied" {
		t.Fatalf("open = %s, want applied", status)
	}
	ctx := context.Background()
	tx, err := p.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT * FROM consumer_offsets FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	var values []string
	for i := range 5 {
		values = append(values, fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"gina","currency":"EUR","amount":%d}`, uuid.Must(uuid.NewV7()).String(), i+1))
	}
	p.produce(t, "gina", values...)
	lag := `txpipe_consumer_lag_records{partition="0"}`
	eventually(t, "the lag shows the 5 records the stalled worker has not applied", func() bool {
		return scrape(t, admin, lag) == 5
	})
	// The lane is now blocked inside its transaction and fetches nothing:
	// only the lag watcher can see the next records arrive.
	p.produce(t, "gina", values[:3]...) // duplicates, but records all the same
	eventually(t, "the lag keeps growing while the worker is stalled", func() bool {
		return scrape(t, admin, lag) == 8
	})
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lag falls to zero once the worker goes on", func() bool {
		return scrape(t, admin, lag) == 0
	})
	p.verify(t)
}

// TestAPIReadsFromTheReplica runs an ingest whose --read-database-url is
// the streaming replica scripts/postgres.sh keeps of the test server. With
// the replica's replay paused, an account the primary already holds is not
// found through it: reads really come from the replica, and lag behind. Once
// replay resumes, the replica catches up and the account is there. API keys
// are checked on the primary throughout.
func TestAPIReadsFromTheReplica(t *testing.T) {
	replicaServer := containertest.Env(t, "TXPIPE_DATABASE_REPLICA_URL")
	p := startPipeline(t)
	// The test's database, as the replica serves it (CREATE DATABASE is
	// replicated like everything else).
	primary, err := url.Parse(p.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	replicaURL, err := url.Parse(replicaServer)
	if err != nil {
		t.Fatal(err)
	}
	replicaURL.Path = primary.Path
	ctx := context.Background()
	// An earlier run killed while it held replay paused would leave the
	// replica behind for good: resume first.
	if c, err := pgx.Connect(ctx, replicaServer); err != nil {
		t.Fatal(err)
	} else {
		_, err = c.Exec(ctx, `SELECT pg_wal_replay_resume()`)
		c.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	var replica *pgx.Conn
	eventually(t, "the replica has the test database", func() bool {
		c, err := pgx.Connect(ctx, replicaURL.String())
		if err == nil {
			replica = c
		}
		return err == nil
	})
	defer replica.Close(ctx)
	// The database exists on the replica before its migrations have all
	// been replayed: wait for the last one, or a read may meet a column
	// the replica does not have yet.
	var last int
	if err := p.db.Pool.QueryRow(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the replica has every migration", func() bool {
		var got int
		return replica.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&got) == nil && got == last
	})
	var standby bool
	if err := replica.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&standby); err != nil || !standby {
		t.Fatalf("the replica URL reaches a server in recovery = %v (%v), want a standby", standby, err)
	}
	api, admin, _ := runServing(t, []string{"ingest", "--database-url", p.db.URL, "--read-database-url", replicaURL.String(),
		"--kafka-brokers", strings.Join(p.kc.Brokers, ","), "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--commands-topic", p.topics.Commands, "--log-level", "debug"})
	viaReplica := &pipeline{api: "http://" + api, key: p.key}

	if _, err := replica.Exec(ctx, `SELECT pg_wal_replay_pause()`); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if _, err := replica.Exec(ctx, `SELECT pg_wal_replay_resume()`); err != nil {
				t.Error(err)
			}
		}
	}
	defer resume()
	id := uuid.Must(uuid.NewV7()).String()
	if code, resp := viaReplica.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"carol","currency":"EUR"}`, id)); code != http.StatusAccepted {
		t.Fatalf("POST through the replica-reading ingest = %d %v", code, resp)
	}
	if status, _ := p.awaitOutcome(t, id); status != "applied" { // read on the primary
		t.Fatalf("open_account = %s, want applied", status)
	}
	if code := viaReplica.get(t, "/v1/accounts/carol", nil); code != http.StatusNotFound {
		t.Errorf("GET carol from the paused replica = %d, want 404: the read did not come from the replica", code)
	}
	// A client that saw carol's version 1 on the postings topic asks for
	// it: the paused replica lacks it, the primary answers.
	if status, reason := p.submit(t, fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"carol","amount":5,"currency":"EUR"}`, uuid.Must(uuid.NewV7()))); status != "applied" {
		t.Fatalf("deposit = %s %s, want applied", status, reason)
	}
	var fresh struct{ Version, Balance int64 }
	if code := viaReplica.get(t, "/v1/accounts/carol?min_version=1", &fresh); code != http.StatusOK || fresh.Version != 1 || fresh.Balance != 5 {
		t.Errorf("GET carol?min_version=1 with the replica paused = %d %+v, want 200 at version 1 from the primary", code, fresh)
	}
	if n := scrape(t, admin, "txpipe_api_primary_fallbacks_total"); n != 1 {
		t.Errorf("txpipe_api_primary_fallbacks_total = %v, want 1", n)
	}
	resume()
	eventually(t, "the replica catches up and serves carol", func() bool {
		return viaReplica.get(t, "/v1/accounts/carol", nil) == http.StatusOK
	})
}
