package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// These tests recreate the commands topic under the workers, as an
// operator deleting it by mistake (or to "clean" it) would. Every worker
// runs one lane, so that partition 1 flowing proves that partition 0 was
// left out of fetches that would have returned its records.

// TestRecreatedTopicHaltsUntilAnOperatorResets: the topic is recreated
// under a running worker and refilled with fewer records than its stored
// offset: the partition halts (metric, readiness, /status), stays halted
// when the new log grows past the stored offset and when another worker
// takes over, skips nothing, and applies the whole new log once, exactly
// once, after "txpipe offsets reset --to earliest", which the audit table
// and /status record. Partition 1 flows throughout.
func TestRecreatedTopicHaltsUntilAnOperatorResets(t *testing.T) {
	r := newRecreateRig(t)
	w := r.startWorker(t)
	old := r.produceOn(t, 0, 6)
	eventually(t, "the first log's 6 commands are applied", func() bool { return r.applied(t, old) == 6 })

	r.recreateTopic(t)
	short := r.produceOn(t, 0, 3) // fewer than the stored offset, 6
	eventually(t, "partition 0 halts", func() bool { return scrape(t, w.admin, `txpipe_consumer_partition_halted{partition="0"}`) == 1 })
	// Readiness names one failing partition at a time; partition 1 may
	// still be retrying its first fetch of the new topic.
	eventually(t, "/readyz says partition 0 is halted, why, and what to run", func() bool {
		code, body := get(t, w.admin, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "partition 0") &&
			strings.Contains(body, "txpipe offsets reset --partition 0") && strings.Contains(body, "past the end of the log")
	})
	skipped := scrape(t, w.admin, "txpipe_consumer_skipped_offsets_total")

	// The new log grows past the stored offset; partition 1 flows.
	long := r.produceOn(t, 0, 5) // the new log now holds 8 records
	flow := r.produceOn(t, 1, 1)
	eventually(t, "partition 1 flows", func() bool { return r.applied(t, flow) == 1 })
	r.expectHalted(t, w, append(short, long...), 6)
	if got := scrape(t, w.admin, "txpipe_consumer_skipped_offsets_total"); got != skipped {
		t.Errorf("skipped offsets went from %v to %v while halted, want unchanged", skipped, got)
	}
	if _, page := get(t, w.admin, "/status"); !strings.Contains(page, `<table id="halted-partitions">`) || !strings.Contains(page, "past the end of the log") {
		t.Errorf("/status while halted lacks the halted partition:\n%s", tail(page, 3000))
	}
	list := r.cli(t, "offsets", "list")
	if !strings.Contains(list, "HALTED since") || !strings.Contains(list, "past the end of the log") {
		t.Errorf("offsets list while halted:\n%s\nwant partition 0 HALTED and why", list)
	}

	// Another worker takes over: the halt is in PostgreSQL, not in a process.
	w.stop(t)
	w = r.startWorker(t)
	eventually(t, "the new worker holds partition 0 halted", func() bool {
		return scrape(t, w.admin, `txpipe_consumer_partition_halted{partition="0"}`) == 1
	})
	flow = r.produceOn(t, 1, 1)
	eventually(t, "partition 1 flows on the new worker", func() bool { return r.applied(t, flow) == 1 })
	r.expectHalted(t, w, append(short, long...), 6)

	before := time.Now()
	out := r.cli(t, "offsets", "reset", "--partition", "0", "--to", "earliest", "--reason", "commands topic recreated by mistake", "--by", "test-operator")
	if !strings.Contains(out, "stored offset 6 → 0") || !strings.Contains(out, "halt cleared") {
		t.Errorf("offsets reset printed:\n%s\nwant the move 6 → 0 and the halt cleared", out)
	}
	newLog := append(short, long...)
	eventually(t, "the whole new log of partition 0 is applied", func() bool { return r.applied(t, newLog) == len(newLog) })
	eventually(t, "partition 0 is no longer halted", func() bool {
		return scrape(t, w.admin, `txpipe_consumer_partition_halted{partition="0"}`) == 0
	})
	r.expectOnce(t, newLog)
	if got := r.stored(t, 0); got != 8 {
		t.Errorf("stored offset of partition 0 = %d, want 8 (the new log's end)", got)
	}
	if got := scrape(t, w.admin, "txpipe_consumer_skipped_offsets_total"); got != 0 {
		t.Errorf("skipped offsets = %v, want 0: the reset to earliest skips nothing", got)
	}

	var from, to, logStart, logEnd int64
	var target, cleared, reason, by string
	var at time.Time
	err := r.db.Pool.QueryRow(context.Background(), `SELECT from_offset, to_offset, target, log_start, log_end,
			coalesce(halt_cleared, ''), reason, reset_by, reset_at
		FROM consumer_offset_resets WHERE group_id = $1 AND topic = $2 AND partition = 0`, r.group, r.topics.Commands).
		Scan(&from, &to, &target, &logStart, &logEnd, &cleared, &reason, &by, &at)
	if err != nil {
		t.Fatalf("read the audit row: %v", err)
	}
	if from != 6 || to != 0 || target != "earliest" || logStart != 0 || logEnd != 8 || by != "test-operator" ||
		reason != "commands topic recreated by mistake" || !strings.Contains(cleared, "past the end") || at.Before(before.Add(-time.Second)) || at.After(time.Now()) {
		t.Errorf("audit row = from %d to %d (%s), log %d to %d, by %q at %v, reason %q, halt cleared %q; want 6 → 0 (earliest), log 0 to 8, by test-operator now, the reason and the halt",
			from, to, target, logStart, logEnd, by, at, reason, cleared)
	}
	_, page := get(t, w.admin, "/status")
	for _, want := range []string{`<table id="offset-resets">`, "<td>test-operator</td>", "<td>6 → 0</td>", "<td>commands topic recreated by mistake</td>", `<p id="halted-partitions">none`} {
		if !strings.Contains(page, want) {
			t.Errorf("/status after the reset lacks %s", want)
		}
	}
	if list := r.cli(t, "offsets", "list"); !strings.Contains(list, "test-operator") || strings.Contains(list, "HALTED") {
		t.Errorf("offsets list after the reset:\n%s\nwant the reset and no halt", list)
	}
}

// TestTopicRecreatedWhileNoWorkerRanIsNoticed: no worker runs while the
// topic is recreated and refilled beyond the stored offset, so no offset
// comparison can tell; the anchor (the last record applied, by hash) does,
// and the partition halts instead of skipping the new log's first records.
func TestTopicRecreatedWhileNoWorkerRanIsNoticed(t *testing.T) {
	r := newRecreateRig(t)
	w := r.startWorker(t)
	old := r.produceOn(t, 0, 4)
	eventually(t, "the first log's 4 commands are applied and anchored", func() bool {
		var anchored int64 = -1
		_ = r.db.Pool.QueryRow(context.Background(), `SELECT coalesce(anchor_offset, -1) FROM consumer_offsets WHERE partition = 0`).Scan(&anchored)
		return r.applied(t, old) == 4 && anchored == 3
	})
	w.stop(t)

	r.recreateTopic(t)
	refill := r.produceOn(t, 0, 7) // longer than the stored offset, 4
	w = r.startWorker(t)
	eventually(t, "partition 0 halts", func() bool { return scrape(t, w.admin, `txpipe_consumer_partition_halted{partition="0"}`) == 1 })
	flow := r.produceOn(t, 1, 1)
	eventually(t, "partition 1 flows", func() bool { return r.applied(t, flow) == 1 })
	r.expectHalted(t, w, refill, 4)
	eventually(t, "/readyz names the anchor mismatch", func() bool {
		code, body := get(t, w.admin, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "another record at offset 3")
	})

	r.cli(t, "offsets", "reset", "--partition", "0", "--to", "earliest", "--reason", "restored topic", "--by", "test-operator")
	eventually(t, "the refilled log is applied", func() bool { return r.applied(t, refill) == len(refill) })
	r.expectOnce(t, refill)
	if got := scrape(t, w.admin, "txpipe_consumer_skipped_offsets_total"); got != 0 {
		t.Errorf("skipped offsets = %v, want 0", got)
	}
}

// recreateRig is a database, a broker and topics of two partitions, with
// workers (in this process) started and stopped by the test.
type recreateRig struct {
	db     *pgtest.DB
	kc     *kafkatest.Cluster
	topics kafkatest.Topics
	group  string
	parts  []int // the commands topic's partitions, as producers route to them
}

func newRecreateRig(t *testing.T) *recreateRig {
	r := &recreateRig{db: pgtest.New(t), kc: kafkatest.New(t), parts: []int{0, 1}}
	r.topics = r.kc.Topics(t, 2)
	r.group = "test-" + r.topics.Commands
	return r
}

func (r *recreateRig) flags() []string {
	return []string{"--database-url", r.db.URL, "--kafka-brokers", strings.Join(r.kc.Brokers, ","),
		"--commands-topic", r.topics.Commands, "--group-id", r.group}
}

// inprocWorker is "txpipe worker" running in this test process.
type inprocWorker struct {
	admin string
	logs  *lockedWriter
	stop  func(t *testing.T)
}

func (r *recreateRig) startWorker(t *testing.T) *inprocWorker {
	t.Helper()
	var buf bytes.Buffer
	w := &inprocWorker{logs: &lockedWriter{w: &buf}}
	listening := make(chan string, 1)
	e := &env{stderr: w.logs, lookup: testLookup, onListen: func(_, addr string) { listening <- addr }}
	args := append([]string{"worker", "--admin-addr", "127.0.0.1:0", "--lanes", "1", "--session-timeout", "6s",
		"--events-topic", r.topics.Events, "--postings-topic", r.topics.Postings, "--balances-topic", r.topics.Balances, "--dlq-topic", r.topics.DLQ,
		"--shutdown-timeout", "5s", "--log-level", "debug"}, r.flags()...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, e) }()
	stopped := false
	w.stop = func(t *testing.T) {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker run() = %v, want nil after cancel", err)
		}
		if t.Failed() {
			w.logs.mu.Lock()
			t.Logf("worker log (tail):\n%s", tail(buf.String(), 6000))
			w.logs.mu.Unlock()
		}
	}
	t.Cleanup(func() { w.stop(t) })
	select {
	case w.admin = <-listening:
	case err := <-done:
		t.Fatalf("worker ended early: %v", err)
	}
	return w
}

// produceOn writes n open_account commands to partition p of the commands
// topic (keys the partitioner sends there) and returns their command ids.
func (r *recreateRig) produceOn(t *testing.T, p, n int) []string {
	t.Helper()
	var ids []string
	var msgs []kafka.Message
	for i := 0; len(msgs) < n; i++ {
		id := uuid.Must(uuid.NewV7()).String()
		key := "rc-" + id[len(id)-12:]
		m := kafka.Message{Topic: r.topics.Commands, Key: []byte(key),
			Value: fmt.Appendf(nil, `{"command_id":%q,"type":"open_account","account_id":%q,"currency":"EUR"}`, id, key)}
		if (kafka.Murmur2Balancer{}).Balance(m, r.parts...) != p {
			continue
		}
		ids, msgs = append(ids, id), append(msgs, m)
	}
	// A fresh writer: one made before the topic was recreated would route
	// by the old topic's metadata.
	w := r.kc.Writer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce to partition %d: %v", p, err)
	}
	return ids
}

// TestPartitionAddedUnderARunningWorkerIsConsumed: a partition added to
// the commands topic gets an owner without a restart (the worker's own
// coverage watch; kafka-go's watcher is off).
func TestPartitionAddedUnderARunningWorkerIsConsumed(t *testing.T) {
	r := newRecreateRig(t)
	r.startWorker(t)
	first := append(r.produceOn(t, 0, 1), r.produceOn(t, 1, 1)...)
	eventually(t, "both partitions' commands are applied", func() bool { return r.applied(t, first) == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := r.kc.Client.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: r.topics.Commands, Count: 3}},
	})
	if err == nil {
		err = res.Errors[r.topics.Commands]
	}
	if err != nil {
		t.Fatalf("add a partition: %v", err)
	}
	eventually(t, "the broker's metadata shows the new partition", func() bool {
		ends, err := kafkaadmin.EndOffsets(ctx, r.kc.Client, r.topics.Commands)
		return err == nil && len(ends) == 3
	})
	r.parts = []int{0, 1, 2}
	added := r.produceOn(t, 2, 2)
	if ends, err := kafkaadmin.EndOffsets(ctx, r.kc.Client, r.topics.Commands); err != nil || ends[2] != 2 {
		t.Fatalf("end offsets after producing to the new partition: %v, %v; want partition 2 at 2", ends, err)
	}
	eventually(t, "the new partition's commands are applied", func() bool { return r.applied(t, added) == 2 })
	r.expectOnce(t, append(first, added...))
}

// recreateTopic deletes the commands topic, waits until the broker no
// longer knows it, and creates it again, empty, with two partitions.
func (r *recreateRig) recreateTopic(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	name := r.topics.Commands
	res, err := r.kc.Client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{name}})
	if err == nil {
		err = res.Errors[name]
	}
	if err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
	for {
		md, err := r.kc.Client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{name}})
		if err == nil && len(md.Topics) == 1 && errors.Is(md.Topics[0].Error, kafka.UnknownTopicOrPartition) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%s is never gone: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		err := kafkaadmin.EnsureTopics(ctx, r.kc.Client, []kafkaadmin.Topic{{Name: name, Partitions: 2, ReplicationFactor: 1}})
		if err == nil {
			if ends, err := kafkaadmin.EndOffsets(ctx, r.kc.Client, name); err == nil && ends[0] == 0 && ends[1] == 0 {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("recreate %s: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// applied counts the commands of ids that have an outcome.
func (r *recreateRig) applied(t *testing.T, ids []string) int {
	t.Helper()
	var n int
	if err := r.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM processed_commands WHERE command_id = ANY($1::uuid[])`, ids).Scan(&n); err != nil {
		t.Fatalf("count processed commands: %v", err)
	}
	return n
}

func (r *recreateRig) stored(t *testing.T, p int) int64 {
	t.Helper()
	var next int64
	if err := r.db.Pool.QueryRow(context.Background(), `SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3`,
		r.group, r.topics.Commands, p).Scan(&next); err != nil {
		t.Fatalf("read the stored offset of partition %d: %v", p, err)
	}
	return next
}

// expectHalted checks that partition 0 is halted at stored offset next and
// that none of ids, all on its new log, was applied.
func (r *recreateRig) expectHalted(t *testing.T, w *inprocWorker, ids []string, next int64) {
	t.Helper()
	if n := r.applied(t, ids); n != 0 {
		t.Errorf("%d of the new log's %d commands applied while partition 0 is halted, want none", n, len(ids))
	}
	if got := r.stored(t, 0); got != next {
		t.Errorf("stored offset of partition 0 = %d while halted, want %d", got, next)
	}
	if got := scrape(t, w.admin, `txpipe_consumer_partition_halted{partition="0"}`); got != 1 {
		t.Errorf("txpipe_consumer_partition_halted{partition=\"0\"} = %v, want 1", got)
	}
	if got := scrape(t, w.admin, `txpipe_consumer_partition_halted{partition="1"}`); got != 0 {
		t.Errorf("txpipe_consumer_partition_halted{partition=\"1\"} = %v, want 0", got)
	}
}

// expectOnce checks that each of ids has exactly one outcome event.
func (r *recreateRig) expectOnce(t *testing.T, ids []string) {
	t.Helper()
	rows, err := r.db.Pool.Query(context.Background(), `SELECT headers::jsonb->>'command_id', count(*) FROM outbox_records
		WHERE topic = $1 AND headers::jsonb->>'command_id' = ANY($2) GROUP BY 1`, r.topics.Events, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		seen++
		if n != 1 {
			t.Errorf("command %s has %d outcome events, want 1", id, n)
		}
	}
	if seen != len(ids) {
		t.Errorf("%d of %d commands have an outcome event, want all", seen, len(ids))
	}
}

// cli runs a txpipe tool against the rig and returns what it printed.
func (r *recreateRig) cli(t *testing.T, args ...string) string {
	t.Helper()
	var out, errs bytes.Buffer
	err := run(context.Background(), append(args, r.flags()...), &env{stdout: &out, stderr: &errs, lookup: testLookup})
	if err != nil {
		t.Fatalf("txpipe %s = %v\n%s%s", strings.Join(args, " "), err, out.String(), errs.String())
	}
	return out.String()
}

func get(t *testing.T, admin, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
