package kafkafetch_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"

	"github.com/txpipe/txpipe/internal/kafkafetch"
	"github.com/txpipe/txpipe/internal/kafkatest"
)

func TestFetchSeveralPartitionsInOneCall(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 4).Commands
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var msgs []kafka.Message
	for i := range 40 {
		msgs = append(msgs, kafka.Message{Topic: topic, Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "v%d", i)})
	}
	if err := k.Writer(t).WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	f := kafkafetch.New(k.Brokers, k.Transport, topic)
	first, next, err := f.Bounds(ctx, []int{0, 1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for p := range 4 {
		if first[p] != 0 {
			t.Errorf("partition %d starts at %d, want 0", p, first[p])
		}
		total += next[p]
	}
	if total != 40 {
		t.Fatalf("end offsets %v sum to %d, want 40", next, total)
	}

	// From offset 1 of every partition: everything but each first record,
	// in offset order, with the high watermark.
	want := kafkafetch.Offsets{0: 1, 1: 1, 2: 1, 3: 1}
	got := map[int][]kafka.Message{}
	for n := 0; n < 36; {
		res, err := f.Fetch(ctx, want, time.Second, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Errs) > 0 {
			t.Fatalf("partition errors: %v", res.Errs)
		}
		for p, ms := range res.Msgs {
			for _, m := range ms {
				if m.Offset != want[p] || m.Partition != p || m.HighWaterMark != next[p] {
					t.Fatalf("partition %d: record at %d (hw %d), want offset %d hw %d", p, m.Offset, m.HighWaterMark, want[p], next[p])
				}
				want[p]++
				n++
			}
			got[p] = append(got[p], ms...)
		}
	}
	if len(got) != 4 {
		t.Errorf("records from %d partitions, want 4", len(got))
	}

	// A position past the end is the partition's error, not the call's.
	res, err := f.Fetch(ctx, kafkafetch.Offsets{0: next[0] + 100, 1: next[1]}, 10*time.Millisecond, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.Errs[0], kafka.OffsetOutOfRange) || res.Errs[1] != nil {
		t.Errorf("errors = %v, want OffsetOutOfRange for partition 0 only", res.Errs)
	}
}

// A log written by a transactional producer holds a committed
// transaction, an aborted one and a committed one, and ends in a commit
// marker: c1@0 c2@1 commit@2 a1@3 a2@4 abort@5 c3@6 commit@7. A fetch
// returns exactly the committed records, Next steps over the markers and
// the aborted records, and fetching at the end returns nothing.
func TestFetchReadsCommittedRecordsAndStepsOverMarkers(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 1).Commands
	tx := k.TxProducer(t, topic, "")
	tx(true, "c1", "c2")
	tx(false, "a1", "a2")
	tx(true, "c3")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := kafkafetch.New(k.Brokers, k.Transport, topic)
	_, end, err := f.Bounds(ctx, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if end[0] != 8 {
		t.Fatalf("end of the log = %d, want 8 (5 records and 3 markers)", end[0])
	}
	for _, tc := range []struct {
		from int64
		want []string
	}{
		{0, []string{"c1@0", "c2@1", "c3@6"}},
		{2, []string{"c3@6"}}, // at the first commit marker
		{4, []string{"c3@6"}}, // inside the aborted transaction
		{7, nil},              // at the final commit marker
	} {
		t.Run(fmt.Sprintf("from %d", tc.from), func(t *testing.T) {
			var got []string
			pos := tc.from
			for pos < end[0] {
				res, err := f.Fetch(ctx, kafkafetch.Offsets{0: pos}, time.Second, 1)
				if err != nil || res.Errs[0] != nil {
					t.Fatalf("Fetch(%d) = %v, %v", pos, err, res.Errs)
				}
				next, ok := res.Next[0]
				if !ok || next <= pos {
					t.Fatalf("Fetch(%d): Next = %d (reported %v), want past %d: the fetch position would never move", pos, next, ok, pos)
				}
				if res.Missing[0] != 0 || res.LastStable[0] != end[0] {
					t.Errorf("Fetch(%d): Missing = %d, LastStable = %d; want 0 and %d", pos, res.Missing[0], res.LastStable[0], end[0])
				}
				for _, m := range res.Msgs[0] {
					got = append(got, fmt.Sprintf("%s@%d", m.Value, m.Offset))
				}
				pos = next
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("records from %d (-want +got):\n%s", tc.from, diff)
			}
			if pos != end[0] {
				t.Errorf("position after the last fetch = %d, want the end %d", pos, end[0])
			}
		})
	}

	// At the end, a fetch waits and returns nothing: no record, no move.
	res, err := f.Fetch(ctx, kafkafetch.Offsets{0: end[0]}, 50*time.Millisecond, 1)
	if err != nil || res.Errs[0] != nil || len(res.Msgs[0]) != 0 || res.Next[0] != end[0] {
		t.Errorf("Fetch(end) = %d records, Next %d, errors %v %v; want none and Next %d", len(res.Msgs[0]), res.Next[0], err, res.Errs, end[0])
	}
}

// panicking panics on requests of the type P and passes the others on.
type panicking[P any] struct{ next kafka.RoundTripper }

func (p panicking[P]) RoundTrip(ctx context.Context, addr net.Addr, req protocol.Message) (protocol.Message, error) {
	if _, ok := req.(P); ok {
		panic("a bug on the way to a broker")
	}
	return p.next.RoundTrip(ctx, addr, req)
}

// TestFetchPanicIsAnError: a panic while a broker's answer is fetched or
// read happens on the fetcher's own goroutine, where no caller could
// recover it; the fetcher returns it as that broker's error instead of
// ending the process.
func TestFetchPanicIsAnError(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 2).Commands
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := kafkafetch.New(k.Brokers, panicking[*fetchapi.Request]{next: k.Transport}, topic)
	_, err := f.Fetch(ctx, kafkafetch.Offsets{0: 0, 1: 0}, 10*time.Millisecond, 1)
	if err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("Fetch through a panicking transport = %v, want an error naming the panic", err)
	}
}
