// Package kafkatest gives each test its own Kafka topics on a real broker,
// and reads them back. The broker comes from TXPIPE_KAFKA_BROKERS (what
// scripts/services.sh prints), or from a container when that is unset and a
// Docker engine answers (see internal/containertest).
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/containertest"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkawriter"
)

// EnvVar names the brokers.
const EnvVar = "TXPIPE_KAFKA_BROKERS"

// Cluster is the broker under test.
type Cluster struct {
	Brokers []string
	Client  *kafka.Client
	// Transport is this test's connection pool, closed when the test ends
	// (kafka-go's DefaultTransport would keep goroutines alive).
	Transport *kafka.Transport
}

// Connect returns the cluster of brokers, without checking it.
func Connect(t testing.TB, brokers []string) *Cluster {
	tr := &kafka.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &Cluster{Brokers: brokers, Transport: tr, Client: &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}}
}

// New returns the cluster of TXPIPE_KAFKA_BROKERS.
func New(t testing.TB) *Cluster {
	t.Helper()
	addr := containertest.Address(t, EnvVar, containertest.KafkaBrokers)
	return Connect(t, strings.Split(addr, ","))
}

// Writer returns a writer with txpipe's production settings on this
// test's transport, closed when the test ends.
func (c *Cluster) Writer(t testing.TB) *kafkawriter.Writer {
	w := kafkawriter.New(kafkawriter.Options{Brokers: c.Brokers, Transport: c.Transport})
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("close writer: %v", err)
		}
	})
	return w
}

// Topics are one test's topics, named after the test so they never collide.
type Topics struct {
	Commands, Events, Postings, Balances, DLQ string
}

// Topics creates fresh commands, events, postings, balances (log-compacted)
// and DLQ topics with the given partition count, and deletes them when the
// test ends.
func (c *Cluster) Topics(t testing.TB, partitions int) Topics {
	t.Helper()
	return c.TopicsReplicated(t, partitions, 1)
}

// TopicsReplicated is Topics with each partition on replicas brokers.
func (c *Cluster) TopicsReplicated(t testing.TB, partitions, replicas int) Topics {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "test." + hex.EncodeToString(b[:]) + "."
	ts := Topics{Commands: prefix + "commands", Events: prefix + "events", Postings: prefix + "postings", Balances: prefix + "balances", DLQ: prefix + "dlq"}
	names := []string{ts.Commands, ts.Events, ts.Postings, ts.Balances, ts.DLQ}
	var topics []kafkaadmin.Topic
	for _, n := range names {
		topics = append(topics, kafkaadmin.Topic{Name: n, Partitions: partitions, ReplicationFactor: replicas})
	}
	topics[3].Configs = map[string]string{"cleanup.policy": "compact"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafkaadmin.EnsureTopics(ctx, c.Client, topics); err != nil {
		t.Fatalf("create test topics: %v", err)
	}
	// A new topic's partitions may answer "not leader" for a moment after
	// the controller elected their leaders: wait until every one answers.
	for _, n := range names {
		for {
			_, err := kafkaadmin.EndOffsets(ctx, c.Client, n)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("test topic %s never became usable: %v", n, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: names}); err != nil {
			t.Logf("delete test topics: %v", err)
		}
	})
	return ts
}

// ReadAll reads topic from the start of every partition until it has n
// records or ctx ends, and returns what it read. It fails the test only on
// a broker error; a short read is the caller's to judge.
func (c *Cluster) ReadAll(ctx context.Context, t testing.TB, topic string, n int) []kafka.Message {
	t.Helper()
	md, err := c.Client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(md.Topics) != 1 {
		t.Fatalf("read metadata of %s: %v", topic, err)
	}
	out := make(chan kafka.Message)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	parts := md.Topics[0].Partitions
	for _, p := range parts {
		go func() {
			defer func() { done <- struct{}{} }()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: c.Brokers, Topic: topic, Partition: p.ID, MaxWait: 200 * time.Millisecond})
			defer r.Close()
			for {
				m, err := r.ReadMessage(rctx)
				if err != nil {
					return
				}
				select {
				case out <- m:
				case <-rctx.Done():
					return
				}
			}
		}()
	}
	var msgs []kafka.Message
	for len(msgs) < n {
		select {
		case m := <-out:
			msgs = append(msgs, m)
		case <-ctx.Done():
			n = 0
		}
	}
	cancel()
	for range parts {
		<-done
	}
	return msgs
}

// Header returns the value of header key of m, or "".
func Header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Count returns how many records topic holds (kafkaadmin.Count), failing
// the test when the broker cannot say.
func (c *Cluster) Count(ctx context.Context, t testing.TB, topic string) int64 {
	t.Helper()
	n, err := kafkaadmin.Count(ctx, c.Client, topic)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
