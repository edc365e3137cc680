package kafkafetch_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

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
