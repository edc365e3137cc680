// Package kafkaadmin creates txpipe's topics and answers whether the Kafka
// cluster is reachable, through kafka-go's Client.
package kafkaadmin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkafetch"
)

// Topic is a topic txpipe needs.
type Topic struct {
	Name              string
	Partitions        int
	ReplicationFactor int
	// Configs are topic-level settings, e.g. "min.insync.replicas".
	Configs map[string]string
}

// EnsureTopics creates the topics that do not exist yet and waits until every
// partition of every topic has a leader, so a producer started right after
// does not meet LeaderNotAvailable. Existing topics are left as they are.
func EnsureTopics(ctx context.Context, client *kafka.Client, topics []Topic) error {
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		tc := kafka.TopicConfig{Topic: t.Name, NumPartitions: t.Partitions, ReplicationFactor: t.ReplicationFactor}
		for k, v := range t.Configs {
			tc.ConfigEntries = append(tc.ConfigEntries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
		}
		req.Topics = append(req.Topics, tc)
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for name, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", name, err)
		}
	}
	names := make([]string, len(topics))
	for i, t := range topics {
		names[i] = t.Name
	}
	for {
		ready, err := leadersElected(ctx, client, names)
		if err != nil {
			return err
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for topic leaders: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func leadersElected(ctx context.Context, client *kafka.Client, names []string) (bool, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil {
		return false, fmt.Errorf("read topic metadata: %w", err)
	}
	for _, t := range md.Topics {
		if t.Error != nil {
			if errors.Is(t.Error, kafka.UnknownTopicOrPartition) || errors.Is(t.Error, kafka.LeaderNotAvailable) {
				return false, nil
			}
			return false, fmt.Errorf("topic %s: %w", t.Name, t.Error)
		}
		if len(t.Partitions) == 0 {
			return false, nil
		}
		for _, p := range t.Partitions {
			if p.Error != nil || p.Leader.Host == "" {
				return false, nil
			}
		}
	}
	return len(md.Topics) == len(names), nil
}

// Ping asks the cluster for its brokers; it fails when no broker answers.
func Ping(ctx context.Context, client *kafka.Client) error {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}})
	if err != nil {
		return fmt.Errorf("kafka metadata: %w", err)
	}
	if len(md.Brokers) == 0 {
		return errors.New("kafka metadata lists no brokers")
	}
	return nil
}

// ReadAll reads every partition of topic from the start to the end offset
// it has when called: a snapshot, for audits and operator tools.
func ReadAll(ctx context.Context, client *kafka.Client, brokers []string, topic string) ([]kafka.Message, error) {
	ends, err := EndOffsets(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	var all []kafka.Message
	for p, end := range ends {
		if end == 0 {
			continue
		}
		msgs, err := readPartition(ctx, client, brokers, topic, p, end)
		if err != nil {
			return nil, err
		}
		all = append(all, msgs...)
	}
	return all, nil
}

// EndOffsets returns the end offset of each partition of topic.
func EndOffsets(ctx context.Context, client *kafka.Client, topic string) (map[int]int64, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("read metadata of %s: %w", topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("topic %s not found", topic)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	ends := make(map[int]int64)
	for _, p := range offs.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, p.Partition, p.Error)
		}
		ends[p.Partition] = p.LastOffset
	}
	return ends, nil
}

// Count returns how many records topic holds: the sum of its partitions'
// end offsets, exact for a topic that was never truncated.
func Count(ctx context.Context, client *kafka.Client, topic string) (int64, error) {
	ends, err := EndOffsets(ctx, client, topic)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ends {
		n += e
	}
	return n, nil
}

func readPartition(ctx context.Context, client *kafka.Client, brokers []string, topic string, partition int, end int64) ([]kafka.Message, error) {
	f := kafkafetch.New(brokers, client.Transport, topic)
	var msgs []kafka.Message
	from := int64(0)
	if first, _, err := f.Bounds(ctx, []int{partition}); err == nil {
		from = first[partition] // retention may have removed the start
	}
	for from < end {
		got, err := f.Fetch(ctx, kafkafetch.Offsets{partition: from}, 200*time.Millisecond, 1)
		if err == nil {
			err = got.Errs[partition]
		}
		if err != nil {
			return nil, fmt.Errorf("read %s/%d: %w", topic, partition, err)
		}
		if len(got.Msgs[partition]) == 0 && got.HighWater[partition] <= from {
			break // nothing more to read (the end moved back: a recreated topic)
		}
		for _, m := range got.Msgs[partition] {
			if m.Offset >= end {
				return msgs, nil
			}
			msgs = append(msgs, m)
			from = m.Offset + 1
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("read %s/%d: %w", topic, partition, err)
		}
	}
	return msgs, nil
}
