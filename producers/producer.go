// Package producers serves txpipe's HTTP API: ingest, which produces the
// commands it accepts to the commands topic, and the reads of the ledger,
// which it asks of a Ledger (*ledger.Queries) and holds no SQL of its own.
package producers

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
)

// Writer is the part of *kafka.Writer the producer uses.
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Producer writes commands to the commands topic, keyed by their debit
// account so that one account's commands keep their order.
type Producer struct {
	w     Writer
	topic string
}

// NewProducer returns a Producer writing to topic through w, which must wait
// for all in-sync replicas (internal/kafkawriter builds one).
func NewProducer(w Writer, topic string) *Producer { return &Producer{w: w, topic: topic} }

// Send produces cmds and returns once Kafka acknowledged them. It returns
// one error per command (nil for each acknowledged one) and a summary error
// when any failed. When ctx ends early the commands may or may not have been
// written: a client retries with the same command_id and the workers apply
// it once.
func (p *Producer) Send(ctx context.Context, cmds []domain.Command, submittedBy string) ([]error, error) {
	msgs := make([]kafka.Message, len(cmds))
	for i, c := range cmds {
		msgs[i] = kafka.Message{
			Topic: p.topic,
			Key:   []byte(c.DebitAccount()),
			Value: c.Encode(),
		}
		if submittedBy != "" {
			msgs[i].Headers = []kafka.Header{{Key: domain.SubmittedByHeader, Value: []byte(submittedBy)}}
		}
	}
	errs := make([]error, len(cmds))
	err := p.w.WriteMessages(ctx, msgs...)
	if err == nil {
		return errs, nil
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == len(cmds) {
		failed := 0
		for i, e := range werrs {
			errs[i] = e
			if e != nil {
				failed++
			}
		}
		return errs, fmt.Errorf("produce: %d of %d commands failed: %w", failed, len(cmds), err)
	}
	for i := range errs {
		errs[i] = err
	}
	return errs, fmt.Errorf("produce %d commands: %w", len(cmds), err)
}
