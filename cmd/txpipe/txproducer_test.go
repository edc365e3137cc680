package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
)

// An upstream produces commands straight to Kafka with a transactional
// producer: a committed transaction, an aborted one, a committed one that
// leaves the log ending in its commit marker, then a plain record. Only the
// committed commands and the plain one apply, the worker steps over the
// markers without reporting skipped offsets, and verify holds.
func TestTransactionalProducerOnlyCommittedCommandsApply(t *testing.T) {
	p := startPipelineWith(t, 1)
	admin := strings.TrimPrefix(p.admin, "http://")
	tx := p.kc.TxProducer(t, p.topics.Commands, "tina")
	deposit := func(id string, amount int) string {
		return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"tina","amount":%d,"currency":"EUR"}`, id, amount)
	}
	open, dep1, dep2, dep3 := uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String()
	abortedDeposit, abortedOpen := uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String()

	// Log: open@0 dep1@1 commit@2 | abortedDeposit@3 abortedOpen@4 abort@5 |
	// dep2@6 commit@7 | dep3@8.
	tx(true, fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"tina","currency":"EUR"}`, open), deposit(dep1, 100))
	if status, reason := p.awaitOutcome(t, dep1); status != "applied" {
		t.Fatalf("committed deposit = %s %s, want applied", status, reason)
	}
	tx(false, deposit(abortedDeposit, 1000),
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"ulla","currency":"EUR"}`, abortedOpen))
	tx(true, deposit(dep2, 10))
	if status, reason := p.awaitOutcome(t, dep2); status != "applied" {
		t.Fatalf("deposit after the aborted transaction = %s %s, want applied", status, reason)
	}
	// The log now ends in a commit marker; a plain record after it.
	p.produce(t, "tina", deposit(dep3, 1))
	if status, reason := p.awaitOutcome(t, dep3); status != "applied" {
		t.Fatalf("plain deposit after the commit marker = %s %s, want applied", status, reason)
	}

	// The worker applies a partition in offset order: dep3 is applied, so
	// the aborted commands before it were read past, never applied.
	for _, id := range []string{abortedDeposit, abortedOpen} {
		if code := p.get(t, "/v1/commands/"+id, nil); code != http.StatusNotFound {
			t.Errorf("GET /v1/commands/%s (aborted transaction) = %d, want 404", id, code)
		}
	}
	ctx := context.Background()
	var processed, abortedRows int
	err := p.db.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE command_id = ANY($1::uuid[])) FROM processed_commands`,
		[]string{abortedDeposit, abortedOpen}).Scan(&processed, &abortedRows)
	if err != nil || processed != 4 || abortedRows != 0 {
		t.Errorf("processed_commands: %d rows, %d of the aborted transaction (%v); want 4 and 0", processed, abortedRows, err)
	}
	var acct struct{ Balance int64 }
	if code := p.get(t, "/v1/accounts/tina", &acct); code != http.StatusOK || acct.Balance != 111 {
		t.Errorf("GET tina = %d, balance %d; want 200 and 111 (100+10+1, not the aborted 1000)", code, acct.Balance)
	}
	if code := p.get(t, "/v1/accounts/ulla", nil); code != http.StatusNotFound {
		t.Errorf("GET ulla (opened in the aborted transaction) = %d, want 404", code)
	}
	if m := metricsText(t, admin); !strings.Contains(m, "\ntxpipe_consumer_skipped_offsets_total 0\n") {
		t.Errorf("txpipe_consumer_skipped_offsets_total is not 0: the markers or the aborted records were reported as missing:\n%s",
			grepLines(m, "txpipe_consumer_skipped_offsets_total"))
	}

	// The last record is a data record, so the stored offset reaches the
	// end of the log once it is applied.
	eventually(t, "the pipeline drains", func() bool {
		var next, pending int64
		_ = p.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&next)
		_ = p.db.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&pending)
		return next == p.kc.Count(ctx, t, p.topics.Commands) && pending == 0
	})
	if n := p.kc.Count(ctx, t, p.topics.Commands); n != 9 {
		t.Errorf("commands topic ends at %d, want 9 (6 records, 3 markers)", n)
	}
	out, err := p.runVerify()
	if err != nil || !strings.Contains(out, "all invariants hold") {
		t.Errorf("txpipe verify = %v:\n%s", err, out)
	}

	// A log that ends in a commit marker: the stored offset steps over it
	// too, so the lag falls to 0 and the drain completes (it used to stay
	// one short of the log's end for ever).
	dep4 := uuid.Must(uuid.NewV7()).String()
	tx(true, deposit(dep4, 1))
	if status, reason := p.awaitOutcome(t, dep4); status != "applied" {
		t.Fatalf("deposit of the last transaction = %s %s, want applied", status, reason)
	}
	eventually(t, "the stored offset passes the final commit marker and the lag is 0", func() bool {
		var next int64
		_ = p.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&next)
		return next == 11 && p.kc.Count(ctx, t, p.topics.Commands) == 11 &&
			scrape(t, admin, `txpipe_consumer_lag_records{partition="0"}`) == 0
	})
}

// metricsText returns what the admin server's /metrics serves.
func metricsText(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestOpenProducerTransactionIsVisible: records held behind a producer
// transaction still open cannot be read, and the lag (to the last stable
// offset) does not show them; txpipe_consumer_open_transaction_records
// does, until the transaction ends and they apply.
func TestOpenProducerTransactionIsVisible(t *testing.T) {
	p := startPipelineWith(t, 1)
	admin := strings.TrimPrefix(p.admin, "http://")
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.kc.Brokers...), kgo.TransactionalID("open-"+p.topics.Commands),
		kgo.DefaultProduceTopic(p.topics.Commands), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := uuid.Must(uuid.NewV7()).String()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	rec := &kgo.Record{Partition: 0, Key: []byte("otto"), Value: []byte(fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"otto","currency":"EUR"}`, open))}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
	series := `txpipe_consumer_open_transaction_records{partition="0"}`
	eventually(t, "the open transaction's record shows in "+series, func() bool { return scrape(t, admin, series) == 1 })
	if code := p.get(t, "/v1/commands/"+open, nil); code != http.StatusNotFound {
		t.Errorf("GET a command inside an open transaction = %d, want 404", code)
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if status, reason := p.awaitOutcome(t, open); status != "applied" {
		t.Fatalf("the command once its transaction committed = %s %s, want applied", status, reason)
	}
	eventually(t, series+" falls to 0", func() bool { return scrape(t, admin, series) == 0 })
}
