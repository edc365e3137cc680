// Package kafkaadmin creates txpipe's topics and answers whether the Kafka
// cluster is reachable, through kafka-go's Client.
package kafkaadmin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
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
