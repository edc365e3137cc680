package kafkawriter

import (
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestNewIsSafeForMoney fails if someone weakens the audited configuration.
func TestNewIsSafeForMoney(t *testing.T) {
	w := New(Options{Brokers: []string{"127.0.0.1:9092"}})
	if w.RequiredAcks != kafka.RequireAll {
		t.Errorf("RequiredAcks = %v, want RequireAll", w.RequiredAcks)
	}
	if _, ok := w.Balancer.(*kafka.Murmur2Balancer); !ok {
		t.Errorf("Balancer = %T, want *kafka.Murmur2Balancer (Java-compatible)", w.Balancer)
	}
	if w.BatchTimeout > 10*time.Millisecond {
		t.Errorf("BatchTimeout = %v, want at most 10ms so a lone request is not held", w.BatchTimeout)
	}
	if w.Async {
		t.Error("Async = true: errors would be lost")
	}
	if w.Topic != "" {
		t.Errorf("Topic = %q, want empty so each message names its topic", w.Topic)
	}
}

// TestMurmur2MatchesJavaClient pins key placement to the Java client's
// partitioner, (murmur2(key) & 0x7fffffff) % n, using the hash values of
// Kafka's own UtilsTest.testMurmur2.
func TestMurmur2MatchesJavaClient(t *testing.T) {
	const n = 12
	partitions := make([]int, n)
	for i := range partitions {
		partitions[i] = i
	}
	b := New(Options{}).Balancer
	for _, c := range []struct {
		key  string
		hash int32 // Utils.murmur2(key.getBytes())
	}{
		{"21", -973932308},
		{"foobar", -790332482},
		{"a-little-bit-long-string", -985981536},
		{"abc", 479470107},
	} {
		want := int(c.hash&0x7fffffff) % n
		if got := b.Balance(kafka.Message{Key: []byte(c.key)}, partitions...); got != want {
			t.Errorf("Balance(%q) = %d, want %d", c.key, got, want)
		}
	}
}
