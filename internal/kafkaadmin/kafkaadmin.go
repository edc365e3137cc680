// Package kafkaadmin creates txpipe's topics and answers whether the Kafka
// cluster is reachable, through kafka-go's Client.
package kafkaadmin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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

// ReadAll reads the committed records of every partition of topic, from
// the start of its log to the last stable offset it has when called: a
// snapshot, for audits and operator tools. Records of aborted transactions
// and transaction markers are left out, as a worker never applies them; a
// log that ends in a marker is read to its end, not waited on.
func ReadAll(ctx context.Context, client *kafka.Client, brokers []string, topic string) ([]kafka.Message, error) {
	parts, err := partitions(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	f := kafkafetch.New(brokers, client.Transport, topic)
	first, ends, err := f.Bounds(ctx, parts)
	if err != nil {
		return nil, err
	}
	var all []kafka.Message
	for _, p := range parts {
		msgs, err := readPartition(ctx, f, topic, p, first[p], ends[p])
		if err != nil {
			return nil, err
		}
		all = append(all, msgs...)
	}
	return all, nil
}

// partitions lists the partitions of topic.
func partitions(ctx context.Context, client *kafka.Client, topic string) ([]int, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("read metadata of %s: %w", topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0 {
		return nil, fmt.Errorf("topic %s not found", topic)
	}
	var parts []int
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
	}
	return parts, nil
}

// EndOffsets returns the end offset (high watermark) of each partition of
// topic: transaction markers and aborted records count.
func EndOffsets(ctx context.Context, client *kafka.Client, topic string) (map[int]int64, error) {
	parts, err := partitions(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	var reqs []kafka.OffsetRequest
	for _, p := range parts {
		reqs = append(reqs, kafka.LastOffsetOf(p))
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

// readPartition reads the committed records of one partition in [from,
// end). Each fetch says where the next starts, past markers and aborted
// records, so the read ends at end even when only markers lead there.
func readPartition(ctx context.Context, f *kafkafetch.Fetcher, topic string, partition int, from, end int64) ([]kafka.Message, error) {
	var msgs []kafka.Message
	for from < end {
		got, err := f.Fetch(ctx, kafkafetch.Offsets{partition: from}, 200*time.Millisecond, 1)
		if err == nil {
			err = got.Errs[partition]
		}
		if err != nil {
			return nil, fmt.Errorf("read %s/%d: %w", topic, partition, err)
		}
		for _, m := range got.Msgs[partition] {
			if m.Offset >= end {
				return msgs, nil
			}
			msgs = append(msgs, m)
		}
		next := got.Next[partition]
		if next <= from {
			if got.LastStable[partition] <= from {
				break // the end moved back: a recreated or truncated topic
			}
			return nil, fmt.Errorf("read %s/%d: no record at offset %d below the end %d", topic, partition, from, end)
		}
		from = next
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("read %s/%d: %w", topic, partition, err)
		}
	}
	return msgs, nil
}

// Coverage compares a consumer group's assignment of a topic with the
// topic's partitions.
type Coverage struct {
	// Stable is false, and there is no verdict, while the group rebalances
	// or the topic is missing.
	Stable bool
	// Unowned are partitions of the topic that no member holds.
	Unowned []int
	// Stray are partitions members hold that the topic no longer has.
	Stray []int
}

// Covered reports whether every partition has an owner and every owned
// partition exists.
func (c Coverage) Covered() bool { return len(c.Unowned) == 0 && len(c.Stray) == 0 }

// GroupCoverage reads the assignment of a stable group and the topic's
// partitions.
func GroupCoverage(ctx context.Context, client *kafka.Client, group, topic string) (Coverage, error) {
	parts, err := partitions(ctx, client, topic)
	if err != nil {
		return Coverage{}, nil
	}
	res, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return Coverage{}, fmt.Errorf("describe group %s: %w", group, err)
	}
	if len(res.Groups) != 1 || res.Groups[0].Error != nil {
		return Coverage{}, fmt.Errorf("describe group %s: %v", group, res.Groups)
	}
	g := res.Groups[0]
	if g.GroupState != "Stable" {
		return Coverage{}, nil
	}
	held := map[int]bool{}
	for _, m := range g.Members {
		for _, t := range m.MemberAssignments.Topics {
			if t.Topic == topic {
				for _, p := range t.Partitions {
					held[p] = true
				}
			}
		}
	}
	c := Coverage{Stable: true}
	for _, p := range parts {
		if !held[p] {
			c.Unowned = append(c.Unowned, p)
		}
		delete(held, p)
	}
	c.Stray = slices.Sorted(maps.Keys(held))
	return c, nil
}
