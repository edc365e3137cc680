package kafkaadmin_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkatest"
)

// ReadAll of a topic whose log ends in a commit marker returns the
// committed records only, and returns: it neither waits for a record the
// marker's offset will never hold nor reads the aborted transaction.
func TestReadAllReadsCommittedRecordsToAFinalMarker(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 2).Commands // partition 1 stays empty
	tx := k.TxProducer(t, topic, "")
	tx(true, "c1", "c2")
	tx(false, "a1", "a2")
	tx(true, "c3") // the log ends in this commit marker

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
