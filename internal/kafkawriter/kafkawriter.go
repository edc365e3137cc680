// Package kafkawriter builds txpipe's one audited kafka-go Writer
// configuration. kafka-go's zero Writer is unsafe for money: it does not wait
// for any acknowledgement, spreads keys round-robin and holds every small
// write for a second. Every producer in txpipe (ingest, relay) is built here.
package kafkawriter

import (
	"time"

	"github.com/segmentio/kafka-go"
)

// Options tune a Writer. Zero values take the defaults noted.
type Options struct {
	Brokers   []string
	Transport kafka.RoundTripper // nil: kafka.DefaultTransport
	// Linger is how long a partition's batch waits for more records before it
	// is sent (kafka-go's BatchTimeout, whose 1 s default would add a second
	// to every lone request). Default 2 ms.
	Linger time.Duration
	// BatchSize is the most records sent to one partition in one request.
	// Default 1000.
	BatchSize int
	// BatchBytes bounds one request to a partition. Default 1 MiB, the
	// broker's default message.max.bytes.
	BatchBytes int64
}

// New returns a Writer that waits for every in-sync replica (acks=all),
// places keys with the Java client's murmur2 partitioner so that any producer
// in any language agrees on a key's partition, and leaves the topic to each
// message (Message.Topic). Close it to flush.
func New(o Options) *kafka.Writer {
	if o.Linger <= 0 {
		o.Linger = 2 * time.Millisecond
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	return &kafka.Writer{
		Addr:         kafka.TCP(o.Brokers...),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: o.Linger,
		BatchSize:    o.BatchSize,
		BatchBytes:   o.BatchBytes,
		MaxAttempts:  10,
		WriteTimeout: 10 * time.Second,
		ReadTimeout:  10 * time.Second,
		Transport:    o.Transport,
	}
}
