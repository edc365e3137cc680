package kafkatest

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/txpipe/txpipe/internal/kafkafetch"
)

// TxProducer returns a function that writes values, keyed by key, onto
// partition 0 of topic in one transaction of a real transactional producer
// (franz-go, as an upstream would use), commits or aborts it, and returns
// once the transaction's marker is in the log.
func (c *Cluster) TxProducer(t testing.TB, topic, key string) func(commit bool, values ...string) {
	t.Helper()
	f := kafkafetch.New(c.Brokers, c.Transport, topic)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.Brokers...), kgo.TransactionalID("test-"+topic),
		kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return func(commit bool, values ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		var recs []*kgo.Record
		for _, v := range values {
			recs = append(recs, &kgo.Record{Partition: 0, Key: []byte(key), Value: []byte(v)})
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
}
