package consumers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/internal/kafkafetch"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/internal/sealingtest"
)

func TestLogVerdict(t *testing.T) {
	applied := &anchor{Offset: 5, Hash: recordHash([]byte("k"), []byte("v"), time.UnixMilli(1000))}
	other := recordHash([]byte("k"), []byte("other"), time.UnixMilli(1000))
	tests := []struct {
		name       string
		next       int64
		a          *anchor
		first, end int64
		got        []byte
		want       string // a fragment of the verdict; "" for none
	}{
		{"same log, anchor found", 6, applied, 0, 10, applied.Hash, ""},
		{"same log, caught up", 6, applied, 0, 6, applied.Hash, ""},
		{"past the end", 7, applied, 0, 3, nil, "past the end of the log (3)"},
		{"past the end without an anchor", 7, nil, 0, 0, nil, "past the end of the log (0)"},
		{"recreated and refilled beyond", 6, applied, 0, 20, other, "another record at offset 5"},
		{"anchor offset now empty", 6, applied, 0, 20, nil, "missing from the log"},
		{"no anchor: nothing to compare", 6, nil, 0, 20, nil, ""},
		{"retention removed the anchor", 6, applied, 6, 20, nil, ""},
		{"retention removed beyond the stored offset", 6, applied, 9, 20, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := logVerdict(tt.next, tt.a, tt.first, tt.end, tt.got)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("logVerdict(%d, %v, %d, %d) = %q, want %q", tt.next, tt.a, tt.first, tt.end, got, tt.want)
			}
		})
	}
}

func TestRecordHashSeparatesFields(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_000)
	base := recordHash([]byte("ab"), []byte("c"), at)
	tests := []struct {
		name       string
		key, value []byte
		at         time.Time
		same       bool
	}{
		{"identical", []byte("ab"), []byte("c"), at, true},
		{"same to the millisecond", []byte("ab"), []byte("c"), at.Add(time.Microsecond), true},
		{"bytes moved from key to value", []byte("a"), []byte("bc"), at, false},
		{"other value", []byte("ab"), []byte("d"), at, false},
		{"other time", []byte("ab"), []byte("c"), at.Add(time.Millisecond), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := recordHash(tt.key, tt.value, tt.at)
			if same := string(got) == string(base); same != tt.same {
				t.Errorf("recordHash(%q, %q, %v) equal to the base: %v, want %v", tt.key, tt.value, tt.at, same, tt.same)
			}
		})
	}
}

func TestChangedUnder(t *testing.T) {
	h := ledger.Halt{Reason: "past the end"}
	tests := []struct {
		name   string
		halted map[int]laneHalt
		states map[int]ledger.Stored
		want   bool
	}{
		{"as the lane believes", nil, map[int]ledger.Stored{0: {Next: 6}, 1: {Next: 2}}, false},
		{"never applied", nil, map[int]ledger.Stored{1: {Next: 2}}, false},
		{"offset moved by a reset", nil, map[int]ledger.Stored{0: {Next: 0}, 1: {Next: 2}}, true},
		{"halt cleared by a reset", map[int]laneHalt{0: {Halt: h, saved: true}}, map[int]ledger.Stored{0: {Next: 6}, 1: {Next: 2}}, true},
		{"halt not saved yet", map[int]laneHalt{0: {Halt: h}}, map[int]ledger.Stored{0: {Next: 6}, 1: {Next: 2}}, false},
		{"halted as the lane holds it", map[int]laneHalt{0: {Halt: h, saved: true}}, map[int]ledger.Stored{0: {Next: 6, Halt: &h}, 1: {Next: 2}}, false},
		{"halted by another worker", nil, map[int]ledger.Stored{0: {Next: 6, Halt: &h}, 1: {Next: 2}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &lane{all: []int{0, 1}, pos: positions{0: 6, 1: 2}, halted: tt.halted}
			if _, got := l.changedUnder(tt.states); got != tt.want {
				t.Errorf("changedUnder(%v) = %v, want %v", tt.states, got, tt.want)
			}
		})
	}
}

func TestRememberKeepsTheLastRecordOfEachPartition(t *testing.T) {
	msgs := append(onPartition(1, records(10, open(1, "a"), open(2, "b"))), onPartition(2, records(7, open(3, "c")))...)
	l := &lane{applied: map[int]anchor{1: {Offset: 3}}}
	l.remember(msgs)
	for p, m := range map[int]kafka.Message{1: msgs[1], 2: msgs[2]} {
		if a, ok := l.applied[p]; !ok || a.Offset != m.Offset || string(a.Hash) != string(anchorOf(m).Hash) {
			t.Errorf("anchor of partition %d = %+v, want the record at %d", p, a, m.Offset)
		}
	}
}

// TestResetOffsetRecordsTheDecision: a reset moves the stored offset,
// clears the halt and the anchor, and leaves one audit row with who, when,
// what and why, in one transaction; one outside the log or without a reason
// changes nothing.
func TestResetOffsetRecordsTheDecision(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, at(0), records(0, open(1, "a"), open(2, "b")), nil); err != nil {
		t.Fatal(err)
	}
	if err := w.source.SaveAnchors(ctx, w.opts.Pool, map[int]anchor{partition: {Offset: 1, Hash: []byte{1}}}, at(2)); err != nil {
		t.Fatal(err)
	}
	if saved, err := w.source.SaveHalt(ctx, w.opts.Pool, partition, 2, ledger.Halt{At: time.Now(), Reason: "past the end", LogStart: 0, LogEnd: 1}); err != nil || !saved {
		t.Fatalf("saveHalt() = %v, %v, want true", saved, err)
	}
	req := ledger.ResetRequest{GroupID: "g", Topic: "commands", Partition: partition, To: 0, Target: "earliest", LogStart: 0, LogEnd: 5, Reason: "topic recreated", By: "alice"}

	for _, bad := range []struct {
		name   string
		change func(*ledger.ResetRequest)
	}{
		{"no reason", func(r *ledger.ResetRequest) { r.Reason = "" }},
		{"nobody", func(r *ledger.ResetRequest) { r.By = "" }},
		{"past the log", func(r *ledger.ResetRequest) { r.To = 6 }},
		{"before the log", func(r *ledger.ResetRequest) { r.LogStart = 1 }},
	} {
		t.Run(bad.name, func(t *testing.T) {
			r := req
			bad.change(&r)
			if _, err := ledger.ResetOffset(ctx, db.Pool, r); err == nil {
				t.Errorf("ledger.ResetOffset(%+v) = nil error, want one", r)
			}
		})
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM consumer_offset_resets`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused resets left %d audit rows (%v), want 0", n, err)
	}

	got, err := ledger.ResetOffset(ctx, db.Pool, req)
	if err != nil {
		t.Fatal(err)
	}
	if got.From == nil || *got.From != 2 || got.To != 0 || got.HaltCleared != "past the end" || got.By != "alice" || got.At.IsZero() {
		t.Errorf("ledger.ResetOffset() = %+v, want from 2 to 0, halt cleared, by alice, at a time", got)
	}
	states, err := w.source.States(ctx, w.opts.Pool, []int{partition})
	if err != nil {
		t.Fatal(err)
	}
	if s := states[partition]; s.Next != 0 || s.Halt != nil || s.Anchor != nil {
		t.Errorf("after the reset the row is %+v, want offset 0, no halt, no anchor", s)
	}
	resets, err := ledger.RecentResets(ctx, db.Pool, "", "commands", 10)
	if err != nil || len(resets) != 1 {
		t.Fatalf("ledger.RecentResets() = %v, %v, want one", resets, err)
	}
	if r := resets[0]; *r.From != 2 || r.To != 0 || r.Target != "earliest" || r.LogEnd != 5 || r.Reason != "topic recreated" || r.By != "alice" || r.HaltCleared != "past the end" {
		t.Errorf("audit row = %+v, want what was decided", r)
	}

	// The worker's position 2 is stale now: its next batch is fenced.
	if _, err := w.applyBatch(ctx, at(2), records(2, open(3, "c")), nil); !errors.Is(err, ledger.ErrFenced) {
		t.Errorf("applyBatch at the old position = %v, want ledger.ErrFenced", err)
	}

	// A partition never applied gets a row; nothing was stored before.
	other := req
	other.Partition, other.To, other.Target = 7, 5, "latest"
	got, err = ledger.ResetOffset(ctx, db.Pool, other)
	if err != nil || got.From != nil || got.HaltCleared != "" {
		t.Fatalf("ledger.ResetOffset(new partition) = %+v, %v, want no from offset and no halt", got, err)
	}
	all, err := ledger.PartitionStates(ctx, db.Pool, "g", "commands")
	if err != nil || len(all) != 2 || all[1].Partition != 7 || all[1].Next != 5 {
		t.Errorf("ledger.PartitionStates() = %+v, %v, want partitions %d and 7 (at 5)", all, err, partition)
	}
}

// TestSaveHaltIsFencedByTheStoredOffset: a worker whose view is stale (an
// operator moved the offset meanwhile) halts nothing, and a second halt
// keeps the first one's reason.
func TestSaveHaltIsFencedByTheStoredOffset(t *testing.T) {
	db := pgtest.New(t)
	w := newTestWorker(t, db)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, at(0), records(0, open(1, "a")), nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		next int64
		want bool
	}{
		{"stale position", 0, false},
		{"first halt", 1, true},
		{"halted again", 1, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			saved, err := w.source.SaveHalt(ctx, w.opts.Pool, partition, tt.next, ledger.Halt{At: time.Now(), Reason: fmt.Sprint("reason ", i), LogEnd: 0})
			if err != nil || saved != tt.want {
				t.Errorf("saveHalt(next %d) = %v, %v, want %v", tt.next, saved, err, tt.want)
			}
		})
	}
	states, err := ledger.PartitionStates(ctx, db.Pool, "", "commands")
	if err != nil || len(states) != 1 || states[0].Halt == nil || states[0].Halt.Reason != "reason 1" {
		t.Errorf("ledger.PartitionStates() = %+v, %v, want halted with the first reason", states, err)
	}
}

// TestRecordHashAtMatchesFetchedRecords: the anchor of a record as the
// lane fetched it equals what a check reads back at its offset, and differs
// from its neighbour's.
func TestRecordHashAtMatchesFetchedRecords(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 1).Commands
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var msgs []kafka.Message
	for i := range 5 {
		msgs = append(msgs, kafka.Message{Topic: topic, Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	msgs = append(msgs, kafka.Message{Topic: topic, Value: []byte("no key")})
	if err := k.Writer(t).WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	w, err := New(Options{
		Pool: pgtest.New(t).Pool, Brokers: k.Brokers, Transport: k.Transport, GroupID: "g",
		CommandsTopic: topic, EventsTopic: "events", PostingsTopic: "postings", BalancesTopic: "balances", DLQTopic: "dlq",
		Keyring: sealingtest.Keyring(t), Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	l := &lane{w: w, kc: &kafka.Client{Addr: kafka.TCP(k.Brokers...), Transport: k.Transport, Timeout: 10 * time.Second}}
	got, err := kafkafetch.New(k.Brokers, k.Transport, topic).Fetch(ctx, kafkafetch.Offsets{0: 0}, time.Second, 1)
	if err != nil || len(got.Msgs[0]) != len(msgs) {
		t.Fatalf("fetch = %d records, %v, want %d", len(got.Msgs[0]), err, len(msgs))
	}
	for _, m := range got.Msgs[0] {
		t.Run(fmt.Sprint("offset ", m.Offset), func(t *testing.T) {
			want := anchorOf(m)
			h, err := l.recordHashAt(ctx, 0, m.Offset)
			if err != nil {
				t.Fatal(err)
			}
			if verdict := logVerdict(m.Offset+1, &want, 0, int64(len(msgs)), h); verdict != "" {
				t.Errorf("record %d read back: %s", m.Offset, verdict)
			}
			if m.Offset > 0 {
				prev, err := l.recordHashAt(ctx, 0, m.Offset-1)
				if err != nil || string(prev) == string(want.Hash) {
					t.Errorf("record %d hashes like record %d (%v)", m.Offset, m.Offset-1, err)
				}
			}
		})
	}
}

// laneOn returns a lane of w over parts of w's commands topic, as runLane
// builds it, with its stored state read (resume).
func laneOn(t *testing.T, w *Worker, k *kafkatest.Cluster, parts ...int) *lane {
	t.Helper()
	l := &lane{
		w: w, all: parts, parts: slices.Clone(parts),
		f:       kafkafetch.New(k.Brokers, k.Transport, w.opts.CommandsTopic),
		kc:      &kafka.Client{Addr: kafka.TCP(k.Brokers...), Transport: k.Transport, Timeout: 10 * time.Second},
		log:     w.opts.Log,
		pending: map[int][]kafka.Message{}, retryAt: map[int]time.Time{},
		halted: map[int]laneHalt{}, suspect: map[int]bool{}, applied: map[int]anchor{}, anchors: map[int]*anchor{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.resume(ctx); err != nil {
		t.Fatal(err)
	}
	return l
}

// topicWorker is a worker on a fresh database and a fresh one-partition
// commands topic holding n records.
func topicWorker(t *testing.T, n int) (*Worker, *kafkatest.Cluster, []kafka.Message) {
	t.Helper()
	k := kafkatest.New(t)
	topic := k.Topics(t, 1).Commands
	var msgs []kafka.Message
	for i := range n {
		msgs = append(msgs, kafka.Message{Topic: topic, Key: fmt.Appendf(nil, "k%d", i), Value: []byte(open(i+1, fmt.Sprint("acct-", i)))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := k.Writer(t).WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	got, err := kafkafetch.New(k.Brokers, k.Transport, topic).Fetch(ctx, kafkafetch.Offsets{0: 0}, time.Second, 1)
	if err != nil || len(got.Msgs[0]) != n {
		t.Fatalf("fetch = %d records, %v, want %d", len(got.Msgs[0]), err, n)
	}
	w, err := New(Options{
		Pool: pgtest.New(t).Pool, Brokers: k.Brokers, Transport: k.Transport, GroupID: "g",
		CommandsTopic: topic, EventsTopic: "events", PostingsTopic: "postings", BalancesTopic: "balances", DLQTopic: "dlq",
		Keyring: sealingtest.Keyring(t), Registerer: prometheus.NewRegistry(), Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return w, k, got.Msgs[0]
}

// TestLaneChecksTheLogBeforeFetching: after resuming, a partition with a
// stored offset is fetched only once its log is found to be the one the
// offset counts in; otherwise it halts, in PostgreSQL, and stays out.
func TestLaneChecksTheLogBeforeFetching(t *testing.T) {
	w, k, msgs := topicWorker(t, 4)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, positions{0: 0}, msgs[:3], nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		anchor anchor
		halts  string // a fragment of the halt's reason; "" for none
	}{
		{"the record applied is there", anchorOf(msgs[1]), ""},
		{"another record at the anchor's offset", anchor{Offset: 1, Hash: anchorOf(msgs[2]).Hash}, "another record at offset 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := w.opts.Pool.Exec(ctx, `UPDATE consumer_offsets SET halted_at = NULL, halt_reason = NULL`); err != nil {
				t.Fatal(err)
			}
			if err := w.source.SaveAnchors(ctx, w.opts.Pool, map[int]anchor{0: tt.anchor}, positions{0: 3}); err != nil {
				t.Fatal(err)
			}
			l := laneOn(t, w, k, 0)
			if len(l.parts) != 0 || len(l.suspect) != 1 {
				t.Fatalf("after resume the lane fetches %v (suspects %v), want nothing before the check", l.parts, l.suspect)
			}
			l.checkLogs(ctx)
			states, err := ledger.PartitionStates(ctx, w.opts.Pool, "g", w.opts.CommandsTopic)
			if err != nil {
				t.Fatal(err)
			}
			if tt.halts == "" {
				if len(l.parts) != 1 || states[0].Halt != nil {
					t.Errorf("lane fetches %v, halt %+v; want partition 0 fetched, not halted", l.parts, states[0].Halt)
				}
				return
			}
			if len(l.parts) != 0 || states[0].Halt == nil || !strings.Contains(states[0].Halt.Reason, tt.halts) || states[0].Halt.LogEnd != 4 {
				t.Errorf("lane fetches %v, halt %+v; want partition 0 halted (%q, log end 4) and left out", l.parts, states[0].Halt, tt.halts)
			}
			if again := laneOn(t, w, k, 0); len(again.parts) != 0 || len(again.halted) != 1 {
				t.Errorf("a lane started later fetches %v and holds halts %v, want partition 0 halted", again.parts, again.halted)
			}
		})
	}
}

// TestLaneCheckFollowsTheLog: the periodic check halts a partition whose
// stored anchor left the log although the lane went on applying (a topic
// swapped between two fetches), saves a new anchor when the old one holds,
// and follows a reset made beside the lane.
func TestLaneCheckFollowsTheLog(t *testing.T) {
	w, k, msgs := topicWorker(t, 4)
	ctx := context.Background()
	if _, err := w.applyBatch(ctx, positions{0: 0}, msgs[:2], nil); err != nil {
		t.Fatal(err)
	}
	l := laneOn(t, w, k, 0)
	l.checkLogs(ctx) // no anchor stored: the record below the offset becomes one
	if len(l.parts) != 1 {
		t.Fatalf("lane fetches %v, want partition 0", l.parts)
	}
	next, err := w.applyBatch(ctx, l.pos, msgs[2:3], nil)
	if err != nil {
		t.Fatal(err)
	}
	l.advance(next)
	l.remember(msgs[2:3])
	l.check(ctx)
	states, err := w.source.States(ctx, w.opts.Pool, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if a := states[0].Anchor; a == nil || a.Offset != 2 || states[0].Halt != nil {
		t.Fatalf("after a check the row is %+v, want anchor 2 and no halt", states[0])
	}

	// The stored anchor no longer matches the log, as after a swap.
	if _, err := w.opts.Pool.Exec(ctx, `UPDATE consumer_offsets SET anchor_hash = '\x00'`); err != nil {
		t.Fatal(err)
	}
	next, err = w.applyBatch(ctx, l.pos, msgs[3:4], nil)
	if err != nil {
		t.Fatal(err)
	}
	l.advance(next)
	l.remember(msgs[3:4])
	l.anchorAt = time.Time{} // anchorInterval has passed
	l.check(ctx)
	all, err := ledger.PartitionStates(ctx, w.opts.Pool, "g", w.opts.CommandsTopic)
	if err != nil {
		t.Fatal(err)
	}
	if h := all[0].Halt; h == nil || !strings.Contains(h.Reason, "may have been applied") || len(l.parts) != 0 {
		t.Fatalf("after the check the halt is %+v and the lane fetches %v, want halted, records of the new log named", h, l.parts)
	}

	// An operator resets it; the lane's next check takes it back.
	if _, err := ledger.ResetOffset(ctx, w.opts.Pool, ledger.ResetRequest{GroupID: "g", Topic: w.opts.CommandsTopic, Partition: 0, To: 0, Target: "earliest",
		LogStart: 0, LogEnd: 4, Reason: "test", By: "tester"}); err != nil {
		t.Fatal(err)
	}
	l.check(ctx)
	l.checkLogs(ctx)
	if len(l.parts) != 1 || len(l.halted) != 0 || l.pos[0] != 0 {
		t.Errorf("after the reset the lane fetches %v from %d, holds halts %v; want partition 0 from 0, none", l.parts, l.pos[0], l.halted)
	}
}
