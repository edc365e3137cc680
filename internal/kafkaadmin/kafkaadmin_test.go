package kafkaadmin_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkafetch"
	"github.com/txpipe/txpipe/internal/kafkatest"
)

// transact writes values onto partition 0 of f's topic in one transaction
// of a real transactional producer, commits or aborts it, and returns once
// the transaction's marker is in the log.
func transact(t *testing.T, cl *kgo.Client, f *kafkafetch.Fetcher, commit bool, values ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for _, v := range values {
		recs = append(recs, &kgo.Record{Partition: 0, Value: []byte(v)})
	}
	res := cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatalf("produce in a transaction: %v", err)
	}
	if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		t.Fatalf("end transaction (commit %v): %v", commit, err)
	}
	// The coordinator writes the marker after EndTransaction returns; the
	// last stable offset passes it once it is there.
	marker := res[len(res)-1].Record.Offset + 1
	for {
		_, lso, err := f.Bounds(ctx, []int{0})
		if err != nil {
			t.Fatal(err)
		}
		if lso[0] > marker {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ReadAll of a topic whose log ends in a commit marker returns the
// committed records only, and returns: it neither waits for a record the
// marker's offset will never hold nor reads the aborted transaction.
func TestReadAllReadsCommittedRecordsToAFinalMarker(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 2).Commands // partition 1 stays empty
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...), kgo.TransactionalID("test-"+topic),
		kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	f := kafkafetch.New(k.Brokers, k.Transport, topic)
	transact(t, cl, f, true, "c1", "c2")
	transact(t, cl, f, false, "a1", "a2")
	transact(t, cl, f, true, "c3") // the log ends in this commit marker

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := kafkaadmin.ReadAll(ctx, k.Client, k.Brokers, topic)
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("ReadAll did not return before its 20 s deadline: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, fmt.Sprintf("%s@%d/%d", m.Value, m.Partition, m.Offset))
	}
	if diff := cmp.Diff([]string{"c1@0/0", "c2@0/1", "c3@0/6"}, got); diff != "" {
		t.Errorf("ReadAll records (-want +got):\n%s", diff)
	}
	ends, err := kafkaadmin.EndOffsets(ctx, k.Client, topic)
	if err != nil || ends[0] != 8 {
		t.Errorf("EndOffsets = %v, %v; want partition 0 at 8: the markers and aborted records hold offsets", ends, err)
	}
}
