package kafkawriter_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"

	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/kafkawriter"
)

func TestMurmur2MatchesJavaClient(t *testing.T) {
	// Records land where Java's producer would put them, so a Java client
	// writing the same keys keeps each account on one partition.
	k := kafkatest.New(t)
	topic := k.Topics(t, 12).Commands
	w := k.Writer(t)
	cases := []struct {
		key  string
		hash int32 // Utils.murmur2(key.getBytes())
	}{
		{"21", -973932308},
		{"foobar", -790332482},
		{"a-little-bit-long-string", -985981536},
		{"abc", 479470107},
	}
	var msgs []kafka.Message
	for _, c := range cases {
		msgs = append(msgs, kafka.Message{Topic: topic, Key: []byte(c.key), Value: []byte(c.key)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, m := range k.ReadAll(ctx, t, topic, len(cases)) {
		got[string(m.Key)] = m.Partition
	}
	for _, c := range cases {
		if want := int(c.hash&0x7fffffff) % 12; got[c.key] != want {
			t.Errorf("key %q on partition %d, want %d", c.key, got[c.key], want)
		}
	}
}

func TestOneRequestPerBrokerAndOrderKept(t *testing.T) {
	k := kafkatest.New(t)
	ts := k.Topics(t, 12)
	w := k.Writer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// 240 records over 12 partitions of two topics: one produce request to
	// the one broker.
	var msgs []kafka.Message
	for i := range 120 {
		for _, topic := range []string{ts.Events, ts.Postings} {
			msgs = append(msgs, kafka.Message{Topic: topic, Key: fmt.Appendf(nil, "acct-%d", i%30), Value: fmt.Appendf(nil, "%d", i),
				Headers: []kafka.Header{{Key: "n", Value: fmt.Appendf(nil, "%d", i)}}})
		}
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// Fresh topics may answer "not leader" for a moment, and the records
	// of those partitions go again: one request per attempt.
	if st := w.Stats(); st.Writes != 1+st.Retries {
		t.Errorf("stats %+v: want one request per attempt", st)
	}

	// Concurrent callers, and a partition's share larger than BatchBytes:
	// everything lands once, and each key's records keep their order.
	big := kafkawriter.New(kafkawriter.Options{Brokers: k.Brokers, Transport: k.Transport, BatchBytes: 4 << 10})
	defer big.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []kafka.Message
			for i := range 50 {
				batch = append(batch, kafka.Message{Topic: ts.Commands, Key: fmt.Appendf(nil, "g%d", g), Value: append(fmt.Appendf(nil, "%03d:", i), make([]byte, 300)...)})
			}
			errs <- big.WriteMessages(ctx, batch...)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	next := map[string]int{}
	for _, m := range k.ReadAll(ctx, t, ts.Commands, 20*50) {
		var i int
		fmt.Sscanf(string(m.Value[:3]), "%d", &i)
		if i != next[string(m.Key)] {
			t.Fatalf("key %s: record %d arrived where %d was due", m.Key, i, next[string(m.Key)])
		}
		next[string(m.Key)]++
	}
	for g := range 20 {
		if n := next[fmt.Sprintf("g%d", g)]; n != 50 {
			t.Errorf("key g%d: %d records, want 50", g, n)
		}
	}
	if st := big.Stats(); st.Writes < 2 {
		t.Errorf("stats = %+v: 300 KiB in 4 KiB batches needs several requests", st)
	}
}

func TestFailuresAreReportedPerRecord(t *testing.T) {
	k := kafkatest.New(t)
	ts := k.Topics(t, 3)
	// BatchBytes above the broker's limit lets one oversized record reach
	// the broker, which refuses it for good: that record fails, the rest of
	// the call is written.
	w := kafkawriter.New(kafkawriter.Options{Brokers: k.Brokers, Transport: k.Transport, BatchBytes: 8 << 20, MaxAttempts: 2})
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs := []kafka.Message{
		{Topic: ts.Events, Key: []byte("a"), Value: []byte("small")},
		{Topic: ts.Events, Key: []byte("b"), Value: make([]byte, 2<<20)},
	}
	err := w.WriteMessages(ctx, msgs...)
	var werrs kafka.WriteErrors
	if !errors.As(err, &werrs) || len(werrs) != 2 {
		t.Fatalf("err = %v, want WriteErrors for 2 records", err)
	}
	if werrs[1] == nil || !errors.Is(werrs[1], kafka.MessageSizeTooLarge) {
		t.Errorf("oversized record: err %v, want MessageSizeTooLarge", werrs[1])
	}
	if werrs[0] != nil && !strings.Contains(werrs[0].Error(), "partition") {
		// Same partition as the oversized one only if murmur2 says so;
		// either it was written or it failed with its partition.
		t.Errorf("small record: %v", werrs[0])
	}

	// A topic that does not exist fails after MaxAttempts, not forever, with
	// what a broker says of it (the transport's cache says "unknown" of a
	// topic this client may not see, too), and its error is its own: the
	// record of a topic that exists in the same call is written.
	start := time.Now()
	err = w.WriteMessages(ctx, kafka.Message{Topic: ts.Events + ".missing", Value: []byte("x")}, kafka.Message{Topic: ts.Postings, Value: []byte("y")})
	if err == nil {
		t.Fatal("write to a missing topic succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("write to a missing topic did not give up before the deadline (%v)", time.Since(start))
	}
	if !errors.As(err, &werrs) || len(werrs) != 2 {
		t.Fatalf("err = %v, want WriteErrors for 2 records", err)
	}
	if !errors.Is(werrs[0], kafka.UnknownTopicOrPartition) || errors.Is(werrs[0], kafka.TopicAuthorizationFailed) || !strings.Contains(werrs[0].Error(), "a broker says") {
		t.Errorf("missing topic: err %v, want a broker's UnknownTopicOrPartition", werrs[0])
	}
	if werrs[1] != nil {
		t.Errorf("record of an existing topic in the same call: %v, want written", werrs[1])
	}
}

func TestClosedWriterRefuses(t *testing.T) {
	k := kafkatest.New(t)
	w := kafkawriter.New(kafkawriter.Options{Brokers: k.Brokers, Transport: k.Transport})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessages(context.Background(), kafka.Message{Topic: "x", Value: []byte("y")}); !errors.Is(err, kafkawriter.ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestAbandonedCallSendsNothing(t *testing.T) {
	k := kafkatest.New(t)
	ts := k.Topics(t, 3)
	w := k.Writer(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.WriteMessages(ctx, kafka.Message{Topic: ts.Events, Value: []byte("late")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// A later write goes through, and it is all the topic holds.
	live, stop := context.WithTimeout(context.Background(), 30*time.Second)
	defer stop()
	if err := w.WriteMessages(live, kafka.Message{Topic: ts.Events, Value: []byte("now")}); err != nil {
		t.Fatal(err)
	}
	// A fresh topic's leaders may still be settling: ask until answered.
	n, err := kafkaadmin.Count(live, k.Client, ts.Events)
	for err != nil && live.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		n, err = kafkaadmin.Count(live, k.Client, ts.Events)
	}
	if err != nil || n != 1 {
		t.Errorf("topic holds %d records (%v), want only the live one", n, err)
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

// TestProducePanicIsAnError: a panic while a produce request is built or
// its answer read happens on the writer's goroutines, where no caller
// could recover it; each record fails with it instead, and the writer
// goes on serving calls.
func TestProducePanicIsAnError(t *testing.T) {
	k := kafkatest.New(t)
	ts := k.Topics(t, 2)
	w := kafkawriter.New(kafkawriter.Options{Brokers: k.Brokers, Transport: panicking[*produceapi.Request]{next: k.Transport}, MaxAttempts: 2})
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 { // the second shows the writer survived the first
		err := w.WriteMessages(ctx, kafka.Message{Topic: ts.Events, Key: []byte("a"), Value: []byte("x")})
		var werrs kafka.WriteErrors
		if !errors.As(err, &werrs) || len(werrs) != 1 || !strings.Contains(werrs[0].Error(), "panic") {
			t.Fatalf("WriteMessages through a panicking transport = %v, want the record failed with the panic", err)
		}
	}
}
