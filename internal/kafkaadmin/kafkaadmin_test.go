package kafkaadmin_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"

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

// GroupCoverage names the partitions no member of a stable group holds:
// none while the group covers the topic, the new one after a partition is
// added under a group that does not watch for it.
func TestGroupCoverageNamesPartitionsWithoutAnOwner(t *testing.T) {
	k := kafkatest.New(t)
	topic := k.Topics(t, 2).Commands
	group := "unassigned-" + topic
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{ID: group, Brokers: k.Brokers, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	gen, err := cg.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(gen.Assignments[topic]); n != 2 {
		t.Fatalf("the only member holds %d partitions, want 2", n)
	}
	if c := coverage(ctx, t, k, group, topic, func(kafkaadmin.Coverage) bool { return true }); !c.Covered() {
		t.Fatalf("GroupCoverage = %+v with both partitions held, want covered", c)
	}

	res, err := k.Client.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: topic, Count: 3}},
	})
	if err == nil {
		err = res.Errors[topic]
	}
	if err != nil {
		t.Fatal(err)
	}
	c := coverage(ctx, t, k, group, topic, func(c kafkaadmin.Coverage) bool { return !c.Covered() })
	if diff := cmp.Diff(kafkaadmin.Coverage{Stable: true, Unowned: []int{2}}, c); diff != "" {
		t.Errorf("GroupCoverage after adding a partition (-want +got):\n%s", diff)
	}
}

// coverage asks until the group is stable and done accepts its verdict, or
// ctx ends.
func coverage(ctx context.Context, t *testing.T, k *kafkatest.Cluster, group, topic string, done func(kafkaadmin.Coverage) bool) kafkaadmin.Coverage {
	t.Helper()
	for {
		c, err := kafkaadmin.GroupCoverage(ctx, k.Client, group, topic)
		if err == nil && c.Stable && done(c) {
			return c
		}
		if ctx.Err() != nil {
			t.Fatalf("GroupCoverage never settled: last %+v, %v", c, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
