package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/sealingtest"
)

// These tests drive the transactional apply path directly against a real
// PostgreSQL, with records built in memory: they pin what one batch does,
// independent of Kafka's delivery.

const partition = 3

func newTestWorker(t *testing.T, db *pgtest.DB) *Worker {
	t.Helper()
	w, err := New(Options{
		Pool: db.Pool, Brokers: []string{"unused:9092"}, GroupID: "g",
		CommandsTopic: "commands", EventsTopic: "events", PostingsTopic: "postings", BalancesTopic: "balances", DLQTopic: "dlq",
		Keyring:    sealingtest.Keyring(t),
		Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("New() error = %v", err)
	}
	return w
}

// records turns command JSON into consecutive records starting at offset.
func records(offset int64, values ...string) []kafka.Message {
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Topic: "commands", Partition: partition, Offset: offset + int64(i), Value: []byte(v), Time: time.Now()}
	}
	return msgs
}

// at is the position of the test partition at offset.
func at(offset int64) positions { return positions{partition: offset} }

// onPartition moves msgs to partition p.
func onPartition(p int, msgs []kafka.Message) []kafka.Message {
	for i := range msgs {
		msgs[i].Partition = p
	}
	return msgs
}

func id(n int) string { return fmt.Sprintf("00000000-0000-7000-8000-%012d", n) }

func open(n int, account string) string {
	return fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":%q,"currency":"EUR"}`, id(n), account)
}

func deposit(n int, account string, amount int64) string {
	return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":%q,"amount":%d,"currency":"EUR"}`, id(n), account, amount)
}

func transfer(n int, from, to string, amount int64) string {
	return fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":%q,"to_account_id":%q,"amount":%d,"currency":"EUR"}`, id(n), from, to, amount)
}

type outcome struct{ Status, Reason string }

func outcomes(t *testing.T, db *pgtest.DB) map[string]outcome {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT command_id::text, status, coalesce(reason, '') FROM processed_commands`)
	if err != nil {
		t.Fatalf("read processed_commands: %v", err)
	}
	got := make(map[string]outcome)
	for rows.Next() {
		var cid string
		var o outcome
		if err := rows.Scan(&cid, &o.Status, &o.Reason); err != nil {
			t.Fatal(err)
		}
		got[cid] = o
	}
	return got
}

func balances(t *testing.T, db *pgtest.DB) map[string]int64 {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT account_id, balance FROM accounts`)
	if err != nil {
		t.Fatalf("read accounts: %v", err)
	}
	got := make(map[string]int64)
	for rows.Next() {
		var a string
		var b int64
		if err := rows.Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		got[a] = b
	}
	return got
}

// outboxEvents returns the outbox rows of topic, decoded, in id order.
func outboxEvents(t *testing.T, db *pgtest.DB, topic string) []domain.Event {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT value FROM outbox_records WHERE topic = $1 ORDER BY id, ord`, topic)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	var evs []domain.Event
	for rows.Next() {
		var v []byte
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		var ev domain.Event
		if err := json.Unmarshal(v, &ev); err != nil {
			t.Fatalf("outbox row is not an event: %v", err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func storedOffset(t *testing.T, db *pgtest.DB) int64 {
	t.Helper()
	var next int64
	if err := db.Pool.QueryRow(context.Background(), `SELECT next_offset FROM consumer_offsets WHERE partition = $1`, partition).Scan(&next); err != nil {
		t.Fatalf("read stored offset: %v", err)
	}
	return next
}

func TestApplyBatchOutcomesPerCommand(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	msgs := records(10,
		open(1, "alice"),
		open(2, "bob"),
		deposit(3, "alice", 100),
		transfer(4, "alice", "bob", 500), // rejected: insufficient funds
		`{"not":"a command"}`,            // DLQ
		transfer(5, "alice", "bob", 60),  // applies despite the rejection before it
		transfer(6, "alice", "carol", 1), // rejected: account not found
	)
	next, err := w.applyBatch(ctx, at(10), msgs, nil)
	if err != nil {
		t.Fatalf("applyBatch() error = %v", err)
	}
	if next[partition] != 17 || storedOffset(t, db) != 17 {
		t.Errorf("applyBatch() next = %d, stored %d; want 17 for both", next[partition], storedOffset(t, db))
	}
	want := map[string]outcome{
		id(1): {"applied", ""}, id(2): {"applied", ""}, id(3): {"applied", ""},
		id(4): {"rejected", "insufficient_funds"}, id(5): {"applied", ""}, id(6): {"rejected", "account_not_found"},
	}
	if diff := cmp.Diff(want, outcomes(t, db)); diff != "" {
		t.Errorf("outcomes mismatch (-want +got):\n%s", diff)
	}
	wantBalances := map[string]int64{"alice": 40, "bob": 60, domain.ExternalAccountID("EUR"): -100}
	if diff := cmp.Diff(wantBalances, balances(t, db)); diff != "" {
		t.Errorf("balances mismatch (-want +got):\n%s", diff)
	}
	if evs := outboxEvents(t, db, "events"); len(evs) != 6 {
		t.Errorf("outbox holds %d outcome events, want 6 (one per command)", len(evs))
	}
	// deposit: 2 postings, transfer 5: 2 postings.
	postings := outboxEvents(t, db, "postings")
	if len(postings) != 4 {
		t.Fatalf("outbox holds %d postings, want 4", len(postings))
	}
	var last domain.PostingData
	if err := json.Unmarshal(postings[3].Data, &last); err != nil {
		t.Fatal(err)
	}
	if last.AccountID != "bob" || last.AccountVersion != 1 || last.BalanceAfter != 60 {
		t.Errorf("last posting = %+v, want bob version 1 balance_after 60", last)
	}
	var dlq int
	var reason string
	if err := db.Pool.QueryRow(ctx, `SELECT count(*), min(headers::jsonb->>'dlq_reason') FROM outbox_records WHERE topic = 'dlq'`).Scan(&dlq, &reason); err != nil {
		t.Fatal(err)
	}
	if dlq != 1 || reason != "invalid_command" {
		t.Errorf("DLQ rows = %d with reason %q, want 1 with invalid_command", dlq, reason)
	}
}

func TestApplyBatchDuplicatesAndConflicts(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, at(0), records(0, open(1, "alice"), deposit(2, "alice", 10)), nil); err != nil {
		t.Fatalf("first batch: %v", err)
	}
	// The same deposit again (a retry), and in the same batch twice more, and
	// the same id with another amount: one effect, one conflict outcome.
	msgs := records(2, deposit(2, "alice", 10), deposit(3, "alice", 5), deposit(3, "alice", 5), deposit(2, "alice", 999))
	if _, err := w.applyBatch(ctx, at(2), msgs, nil); err != nil {
		t.Fatalf("second batch: %v", err)
	}
	if got := balances(t, db)["alice"]; got != 15 {
		t.Errorf("alice balance = %d, want 15 (10 once, 5 once)", got)
	}
	var types []string
	for _, ev := range outboxEvents(t, db, "events") {
		types = append(types, ev.Type+" "+ev.CommandID)
	}
	want := []string{
		"open_account.applied " + id(1), "deposit.applied " + id(2), // first batch
		"deposit.applied " + id(3), "deposit.rejected " + id(2), // second: the duplicate of 2 and of 3 publish nothing
	}
	if diff := cmp.Diff(want, types); diff != "" {
		t.Errorf("outcome events mismatch (-want +got):\n%s", diff)
	}
	if got := outcomes(t, db)[id(2)]; got != (outcome{"applied", ""}) {
		t.Errorf("stored outcome of the conflicting id = %+v, want the first decision (applied)", got)
	}
}

func TestApplyBatchFencesStalePosition(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, at(0), records(0, open(1, "alice"), deposit(2, "alice", 10)), nil); err != nil {
		t.Fatalf("first batch: %v", err)
	}
	// A zombie that still believes the partition is at offset 1 replays
	// offset 1 and a new record: it must commit nothing.
	_, err := w.applyBatch(ctx, at(1), records(1, deposit(2, "alice", 10), deposit(3, "alice", 7)), nil)
	if !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("applyBatch(stale position) error = %v, want ledger.ErrFenced", err)
	}
	if got := balances(t, db)["alice"]; got != 10 {
		t.Errorf("alice balance = %d after a fenced batch, want 10", got)
	}
	if got := storedOffset(t, db); got != 2 {
		t.Errorf("stored offset = %d after a fenced batch, want 2", got)
	}
}

func TestProcessIsolatesRecordThatFailsInPostgres(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	// A trigger makes any entry of account "poison" fail with a
	// non-transient error, standing in for a record the database refuses.
	_, err := db.Pool.Exec(ctx, `
		CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.account_id = 'poison' THEN RAISE EXCEPTION 'poisoned entry' USING ERRCODE = 'P0001'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT ON entries FOR EACH ROW EXECUTE FUNCTION refuse_poison();`)
	if err != nil {
		t.Fatalf("create trigger: %v", err)
	}
	msgs := records(0, open(1, "alice"), open(2, "poison"), deposit(3, "alice", 10), deposit(4, "poison", 10), deposit(5, "alice", 5))
	next, err := w.process(ctx, at(0), msgs, w.opts.Log)
	if err != nil {
		t.Fatalf("process() error = %v", err)
	}
	if next[partition] != 5 {
		t.Errorf("process() next = %d, want 5", next[partition])
	}
	if got := balances(t, db); got["alice"] != 15 || got["poison"] != 0 {
		t.Errorf("balances = %v, want alice 15 and poison 0", got)
	}
	var offset, reason, detail string
	err = db.Pool.QueryRow(ctx, `SELECT headers::jsonb->>'source_offset', headers::jsonb->>'dlq_reason', headers::jsonb->>'dlq_detail'
		FROM outbox_records WHERE topic = 'dlq'`).Scan(&offset, &reason, &detail)
	if err != nil {
		t.Fatalf("read the DLQ row: %v", err)
	}
	if offset != "3" || reason != "apply_failed" {
		t.Errorf("DLQ row = offset %s reason %q (%s), want offset 3 reason apply_failed", offset, reason, detail)
	}
	if _, seen := outcomes(t, db)[id(4)]; seen {
		t.Errorf("the dead-lettered command has a stored outcome; it must have none")
	}
}

// TestOpenRacingAnotherPartitionNeverOverwrites opens an account that a
// concurrent, not yet committed transaction (another partition's batch) is
// creating too. The batch must wait, fail on the unique key, retry, and
// reject with account_exists, leaving the other account as it was.
func TestOpenRacingAnotherPartitionNeverOverwrites(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	other, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	if _, err := other.Exec(ctx, `INSERT INTO accounts (account_id, currency, status, balance, version) VALUES ('x', 'EUR', 'active', 500, 1)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.applyWithRetry(ctx, at(0), records(0, open(1, "x")), nil)
		done <- err
	}()
	// Wait until the batch is blocked on the other transaction's row.
	for {
		var waiting int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the batch finished (%v) before the other transaction committed; it must wait", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("applyWithRetry() error = %v, want the retry to succeed", err)
	}
	if got := outcomes(t, db)[id(1)]; got != (outcome{"rejected", "account_exists"}) {
		t.Errorf("outcome of the second open = %+v, want rejected account_exists", got)
	}
	if got := balances(t, db)["x"]; got != 500 {
		t.Errorf("balance of x = %d, want the first account's 500 untouched", got)
	}
}

func TestNullValueRecordIsDeadLettered(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	msgs := records(0, "", open(1, "alice"))
	msgs[0].Value = nil // a tombstone
	if _, err := w.applyBatch(ctx, at(0), msgs, nil); err != nil {
		t.Fatalf("applyBatch() error = %v", err)
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_records WHERE topic = 'dlq' AND value = ''`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 || outcomes(t, db)[id(1)].Status != "applied" {
		t.Errorf("DLQ rows with an empty value = %d, open outcome %+v; want 1 and applied", n, outcomes(t, db)[id(1)])
	}
}

func TestHoldLifecycleAndExpiryInPostgres(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	now := time.Now().UTC()
	hold := func(n int, amount int64, expires time.Time) string {
		return fmt.Sprintf(`{"command_id":%q,"type":"hold","from_account_id":"alice","to_account_id":"bob","amount":%d,"currency":"EUR","expires_at":%q}`,
			id(n), amount, expires.Format(time.RFC3339Nano))
	}
	msgs := records(0, open(1, "alice"), open(2, "bob"), deposit(3, "alice", 100),
		hold(4, 30, now.Add(time.Hour)), hold(5, 20, now.Add(time.Hour)), hold(6, 10, now.Add(time.Second)),
		fmt.Sprintf(`{"command_id":%q,"type":"capture","account_id":"alice","hold_id":%q,"amount":25}`, id(7), id(4)),
	)
	if _, err := w.applyBatch(ctx, at(0), msgs, nil); err != nil {
		t.Fatalf("first batch: %v", err)
	}
	// In a later batch the holds are loaded from PostgreSQL, not memory.
	msgs = records(7,
		fmt.Sprintf(`{"command_id":%q,"type":"release","account_id":"alice","hold_id":%q}`, id(8), id(5)),
		fmt.Sprintf(`{"command_id":%q,"type":"capture","account_id":"alice","hold_id":%q}`, id(9), id(4)), // captured already
		fmt.Sprintf(`{"command_id":%q,"type":"reverse","account_id":"alice","transfer_id":%q,"amount":5}`, id(10), id(4)),
	)
	if _, err := w.applyBatch(ctx, at(7), msgs, nil); err != nil {
		t.Fatalf("second batch: %v", err)
	}
	got := outcomes(t, db)
	for n, want := range map[int]outcome{7: {"applied", ""}, 8: {"applied", ""}, 9: {"rejected", "hold_not_pending"}, 10: {"applied", ""}} {
		if got[id(n)] != want {
			t.Errorf("outcome of command %d = %+v, want %+v", n, got[id(n)], want)
		}
	}
	var balance, held int64
	if err := db.Pool.QueryRow(ctx, `SELECT balance, held FROM accounts WHERE account_id = 'alice'`).Scan(&balance, &held); err != nil {
		t.Fatal(err)
	}
	if balance != 80 || held != 10 {
		t.Errorf("alice = balance %d held %d, want 80 (100-25+5) and 10 (the hold still pending)", balance, held)
	}
	if n, err := w.expireDue(ctx, ledger.At(now)); err != nil || n != 0 {
		t.Fatalf("expireDue(before expiry) = %d, %v; want 0", n, err)
	}
	if n, err := w.expireDue(ctx, ledger.At(now.Add(2*time.Second))); err != nil || n != 1 {
		t.Fatalf("expireDue(after expiry) = %d, %v; want 1", n, err)
	}
	if n, err := w.expireDue(ctx, ledger.At(now.Add(time.Hour))); err != nil || n != 0 {
		t.Fatalf("expireDue(again) = %d, %v; want 0: a hold expires once", n, err)
	}
	var status string
	if err := db.Pool.QueryRow(ctx, `SELECT status FROM transfers WHERE transfer_id = $1`, id(6)).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT held FROM accounts WHERE account_id = 'alice'`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if status != "expired" || held != 0 {
		t.Errorf("after expiry: hold %s, alice held %d; want expired and 0", status, held)
	}
	var expiredEvents int
	for _, ev := range outboxEvents(t, db, "events") {
		if ev.Type == domain.EventTypeHoldExpired && ev.CommandID == id(6) {
			expiredEvents++
		}
	}
	if expiredEvents != 1 {
		t.Errorf("hold.expired events for the hold = %d, want 1", expiredEvents)
	}
}

// TestBatchAcrossPartitions applies one transaction holding records of two
// partitions: a duplicate, a rejection, a poison record and a transfer
// between two accounts both touched earlier in the batch (one opened on each
// partition). Each partition's stored offset moves past its own records,
// and a stale position of either one fences the whole batch.
func TestBatchAcrossPartitions(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	a := onPartition(1, records(5, open(1, "alice"), deposit(2, "alice", 100), open(1, "alice"), `garbage`))
	b := onPartition(2, records(40, open(3, "bob"), transfer(4, "alice", "bob", 30), transfer(5, "bob", "alice", 31)))
	msgs := append(a, b...)
	next, err := w.applyBatch(ctx, positions{1: 5, 2: 40}, msgs, nil)
	if err != nil {
		t.Fatalf("applyBatch() error = %v", err)
	}
	if want := (positions{1: 9, 2: 43}); !maps.Equal(next, want) {
		t.Errorf("next = %v, want %v", next, want)
	}
	stored := map[int]int64{}
	rows, _ := db.Pool.Query(ctx, `SELECT partition, next_offset FROM consumer_offsets`)
	for rows.Next() {
		var p int
		var o int64
		if err := rows.Scan(&p, &o); err != nil {
			t.Fatal(err)
		}
		stored[p] = o
	}
	if want := map[int]int64{1: 9, 2: 43}; !maps.Equal(stored, want) {
		t.Errorf("stored offsets = %v, want %v", stored, want)
	}
	want := map[string]outcome{
		id(1): {"applied", ""}, id(2): {"applied", ""}, id(3): {"applied", ""},
		id(4): {"applied", ""}, id(5): {"rejected", "insufficient_funds"},
	}
	if diff := cmp.Diff(want, outcomes(t, db)); diff != "" {
		t.Errorf("outcomes mismatch (-want +got):\n%s", diff)
	}
	if got := balances(t, db); got["alice"] != 70 || got["bob"] != 30 {
		t.Errorf("balances = %v, want alice 70 and bob 30", got)
	}
	var dlq int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_records WHERE topic = 'dlq' AND headers::jsonb->>'source_partition' = '1' AND headers::jsonb->>'source_offset' = '8'`).Scan(&dlq); err != nil || dlq != 1 {
		t.Errorf("DLQ rows for partition 1 offset 8 = %d (%v), want 1", dlq, err)
	}

	// Partition 2 is where this worker thinks; partition 1 is stale.
	stale := append(onPartition(1, records(7, deposit(6, "alice", 1))), onPartition(2, records(43, deposit(7, "bob", 1)))...)
	if _, err := w.applyBatch(ctx, positions{1: 7, 2: 43}, stale, nil); !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("applyBatch(stale partition 1) error = %v, want ledger.ErrFenced", err)
	}
	if _, seen := outcomes(t, db)[id(7)]; seen {
		t.Error("a fenced batch committed partition 2's record")
	}
}

// dlqRow is an outbox row bound for the DLQ topic.
type dlqRow struct {
	key     []byte
	value   []byte
	headers map[string]string
}

func dlqRows(t *testing.T, db *pgtest.DB) []dlqRow {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT key, value, headers::jsonb FROM outbox_records WHERE topic = 'dlq' ORDER BY id, ord`)
	if err != nil {
		t.Fatalf("read DLQ rows: %v", err)
	}
	var out []dlqRow
	for rows.Next() {
		var r dlqRow
		if err := rows.Scan(&r.key, &r.value, &r.headers); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// deadLettered reads dead_lettered_commands: command id → reason.
func deadLettered(t *testing.T, db *pgtest.DB) map[string]string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT command_id::text, reason FROM dead_lettered_commands`)
	if err != nil {
		t.Fatalf("read dead_lettered_commands: %v", err)
	}
	got := map[string]string{}
	for rows.Next() {
		var id, reason string
		if err := rows.Scan(&id, &reason); err != nil {
			t.Fatal(err)
		}
		got[id] = reason
	}
	return got
}

// TestHostileRecordsEndAsOutcomesOrDeadLetters: records that a producer
// other than txpipe may write — values the decoder used to accept but that
// could not be encoded, odd timestamps, NUL in a field name, a huge key, a
// foreign submitted_by — each end as an outcome or a DLQ record with its
// reason, in one batch, and the partition goes on.
func TestHostileRecordsEndAsOutcomesOrDeadLetters(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	const keyID = "0123456789abcdef"
	msgs := records(0,
		open(1, "alice"),
		deposit(2, "alice", 100),
		// Year 10000 once in UTC: Encode used to panic on it, killing the worker.
		fmt.Sprintf(`{"command_id":%q,"type":"hold","from_account_id":"alice","to_account_id":"alice2","amount":1,"currency":"EUR","expires_at":"9999-12-31T23:59:59-01:00"}`, id(3)),
		// A NUL in a field name: its detail used to break the DLQ row's jsonb headers.
		fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"alice","amount":1,"currency":"EUR","x\u0000y":1}`, id(4)),
		// A valid command under a timestamp no RFC 3339 string can show.
		deposit(5, "alice", 7),
		// Not JSON, with a huge key.
		"\xff\xfe",
		deposit(7, "alice", 3),
	)
	msgs[4].Time = time.UnixMilli(1 << 60)
	msgs[5].Key = make([]byte, 2<<20)
	msgs[3].Headers = []kafka.Header{{Key: domain.SubmittedByHeader, Value: []byte(keyID)}}
	next, err := w.process(ctx, at(0), msgs, w.opts.Log)
	if err != nil {
		t.Fatalf("process() error = %v", err)
	}
	if next[partition] != 7 {
		t.Errorf("process() next = %d, want 7", next[partition])
	}
	if got := balances(t, db)["alice"]; got != 110 {
		t.Errorf("alice's balance = %d, want 110 (deposits 2, 5 and 7)", got)
	}
	var accepted *time.Time
	if err := db.Pool.QueryRow(ctx, `SELECT accepted_at FROM processed_commands WHERE command_id = $1`, id(5)).Scan(&accepted); err != nil {
		t.Fatal(err)
	}
	if accepted != nil {
		t.Errorf("accepted_at of a record timestamped beyond year 9999 = %v, want none", accepted)
	}
	dlq := dlqRows(t, db)
	if len(dlq) != 3 {
		t.Fatalf("DLQ rows = %d, want 3 (records 2, 3 and 5)", len(dlq))
	}
	for i, want := range []struct{ offset, reason string }{{"2", "invalid_command"}, {"3", "invalid_command"}, {"5", "malformed"}} {
		h := dlq[i].headers
		if h["source_offset"] != want.offset || h["dlq_reason"] != want.reason {
			t.Errorf("DLQ row %d: offset %s reason %s (%s), want offset %s reason %s", i, h["source_offset"], h["dlq_reason"], h["dlq_detail"], want.offset, want.reason)
		}
	}
	if h := dlq[1].headers; h[domain.SubmittedByHeader] != keyID {
		t.Errorf("DLQ row of a record submitted by %s carries %s=%q; a replay would lose who sent it", keyID, domain.SubmittedByHeader, h[domain.SubmittedByHeader])
	}
	if got, h := len(dlq[2].key), dlq[2].headers; got != maxDLQKey || h[HeaderDLQKeyTruncatedFrom] != fmt.Sprint(2<<20) {
		t.Errorf("DLQ row of a 2 MiB key: key %d bytes, %s=%q; want %d and %d", got, HeaderDLQKeyTruncatedFrom, h[HeaderDLQKeyTruncatedFrom], maxDLQKey, 2<<20)
	}
	if got, want := deadLettered(t, db), map[string]string{id(3): "invalid_command", id(4): "invalid_command"}; !maps.Equal(got, want) {
		t.Errorf("dead_lettered_commands = %v, want %v", got, want)
	}
	var deadEvents []string
	for _, ev := range outboxEvents(t, db, "events") {
		if ev.Type == domain.EventTypeDeadLettered {
			deadEvents = append(deadEvents, ev.CommandID)
		}
	}
	if diff := cmp.Diff([]string{id(3), id(4)}, deadEvents); diff != "" {
		t.Errorf("command.dead_lettered events (-want +got):\n%s", diff)
	}
}

// TestProcessDeadLettersARecordItPanicsOn: a panic while deciding one
// record (here: sealing metadata without a keyring, standing in for any
// bug on a record's path) dead-letters that record with internal_error,
// counts it, and applies its neighbours.
func TestProcessDeadLettersARecordItPanicsOn(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	w.decider.keyring = nil
	ctx := context.Background()
	withMetadata := fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"bob","currency":"EUR","metadata":{"k":"v"}}`, id(2))
	msgs := records(0, open(1, "alice"), withMetadata, deposit(3, "alice", 10))
	next, err := w.process(ctx, at(0), msgs, w.opts.Log)
	if err != nil {
		t.Fatalf("process() error = %v", err)
	}
	if next[partition] != 3 {
		t.Errorf("process() next = %d, want 3", next[partition])
	}
	if got := outcomes(t, db); got[id(1)].Status != "applied" || got[id(3)].Status != "applied" {
		t.Errorf("outcomes = %v, want both neighbours applied", got)
	}
	dlq := dlqRows(t, db)
	if len(dlq) != 1 || dlq[0].headers["dlq_reason"] != "internal_error" || dlq[0].headers["source_offset"] != "1" {
		t.Fatalf("DLQ rows = %+v, want one for offset 1 with reason internal_error", dlq)
	}
	if got := deadLettered(t, db); got[id(2)] != "internal_error" {
		t.Errorf("dead_lettered_commands = %v, want %s internal_error", got, id(2))
	}
	if got := testutil.ToFloat64(w.metrics.panics); got != 1 {
		t.Errorf("txpipe_consumer_recovered_panics_total = %v, want 1", got)
	}
}

// TestApplyBatchFencesAHaltedPartition: a worker that still holds a
// partition another worker halted (a zombie after the topic was recreated)
// commits nothing there, even at the right stored offset.
func TestApplyBatchFencesAHaltedPartition(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, at(0), records(0, open(1, "alice")), nil); err != nil {
		t.Fatalf("first batch: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE consumer_offsets SET halted_at = now(), halt_reason = 'test' WHERE partition = $1`, partition); err != nil {
		t.Fatal(err)
	}
	if _, err := w.applyBatch(ctx, at(1), records(1, deposit(2, "alice", 10)), nil); !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("applyBatch(halted partition) error = %v, want ledger.ErrFenced", err)
	}
	if err := w.source.Advance(ctx, w.opts.Pool, at(1), at(5)); !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("advanceOffsets(halted partition) error = %v, want ledger.ErrFenced", err)
	}
	if got, off := balances(t, db)["alice"], storedOffset(t, db); got != 0 || off != 1 {
		t.Errorf("after fenced batches on a halted partition: balance %d, stored offset %d; want 0 and 1", got, off)
	}
}

// TestDeadLetteringNeverHidesADecision: an invalid record that reuses the
// command_id of a decided command (in an earlier batch or earlier in the
// same one) goes to the DLQ, but gets no dead_lettered row or event: the
// command stays decided to anyone who asks.
func TestDeadLetteringNeverHidesADecision(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	spoof := func(n int) string {
		return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"alice","amount":"1","currency":"EUR"}`, id(n))
	}
	if _, err := w.applyBatch(ctx, at(0), records(0, open(1, "alice")), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := w.applyBatch(ctx, at(1), records(1, spoof(1), deposit(2, "alice", 5), spoof(2), spoof(3)), nil); err != nil {
		t.Fatal(err)
	}
	if got := len(dlqRows(t, db)); got != 3 {
		t.Errorf("DLQ rows = %d, want 3: every invalid record is dead-lettered", got)
	}
	if got, want := deadLettered(t, db), map[string]string{id(3): "invalid_command"}; !maps.Equal(got, want) {
		t.Errorf("dead_lettered_commands = %v, want only the undecided %s", got, id(3))
	}
	for _, ev := range outboxEvents(t, db, "events") {
		if ev.Type == domain.EventTypeDeadLettered && ev.CommandID != id(3) {
			t.Errorf("a command.dead_lettered event for %s, which is decided", ev.CommandID)
		}
	}
}

// TestMisroutedRecordsAreCounted: a valid command whose record key is not
// its debit account is applied, and counted, since its account's commands
// may be spread over partitions.
func TestMisroutedRecordsAreCounted(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	msgs := records(0, open(1, "alice"), deposit(2, "alice", 5), deposit(3, "alice", 7))
	msgs[0].Key, msgs[1].Key, msgs[2].Key = []byte("alice"), []byte("alice"), []byte("bob")
	if _, err := w.applyBatch(context.Background(), at(0), msgs, nil); err != nil {
		t.Fatal(err)
	}
	if got := balances(t, db)["alice"]; got != 12 {
		t.Errorf("alice = %d, want 12: a misrouted command still applies", got)
	}
	if got := testutil.ToFloat64(w.metrics.misrouted); got != 1 {
		t.Errorf("txpipe_consumer_misrouted_records_total = %v, want 1", got)
	}
}
