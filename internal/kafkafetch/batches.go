package kafkafetch

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// abortMarker is the type of the control record that ends an aborted
// transaction (a commit marker is type 1).
const abortMarker = 0

// partitionRead is what one partition's fetch answer holds for the caller.
type partitionRead struct {
	msgs []kafka.Message // committed data records at or after from
	// next is the offset after the last batch read, whatever it held: data,
	// records of aborted transactions or a control batch; from when the
	// answer held no batch.
	next int64
	// missing counts offsets in [from, next) that no record holds, of any
	// kind: records gone from the log, not offsets taken by a transaction
	// marker or an aborted record.
	missing int64
}

// record is one record of a batch: a data record as a message, or a
// control record.
type record struct {
	offset int64
	msg    kafka.Message
	abort  bool // a control record marking an aborted transaction
}

// readPartition walks the record batches of one partition's answer to a
// read_committed fetch from offset from, as Java's consumer does: it drops
// the records of transactional batches whose producer had an aborted
// transaction open at that point (the answer's AbortedTransactions list,
// producer id and first offset), and steps over control batches, whose
// abort markers close those transactions. A fetch starts at the beginning
// of the batch that holds from, so earlier records are left out.
//
// On an undecodable batch it returns what the batches before it hold, with
// next at that batch, and the error.
func readPartition(rp *fetchapi.ResponsePartition, topic string, from int64) (partitionRead, error) {
	out := partitionRead{next: from}
	pending := slices.SortedFunc(slices.Values(rp.AbortedTransactions), func(a, b fetchapi.ResponseTransaction) int {
		return cmp.Compare(a.FirstOffset, b.FirstOffset)
	})
	aborted := map[int64]bool{} // producers whose current transaction aborts
	var held int64              // records of any kind at or after from
	for _, b := range batches(rp.RecordSet.Records) {
		attrs, producer := batchInfo(b)
		recs, err := readBatch(b, attrs.Control(), topic, int(rp.Partition), rp.HighWatermark)
		if err != nil {
			out.missing = out.next - from - held
			return out, fmt.Errorf("decode records of partition %d: %w", rp.Partition, err)
		}
		if len(recs) == 0 {
			continue // emptied by compaction: nothing tells where it ends
		}
		last := recs[len(recs)-1].offset
		if producer >= 0 {
			for len(pending) > 0 && pending[0].FirstOffset <= last {
				aborted[pending[0].ProducerID] = true
				pending = pending[1:]
			}
		}
		skip := attrs.Control() || (attrs.Transactional() && aborted[producer])
		for _, r := range recs {
			if r.abort {
				delete(aborted, producer)
			}
			if r.offset < from {
				continue
			}
			held++
			if !skip {
				out.msgs = append(out.msgs, r.msg)
			}
		}
		out.next = max(out.next, last+1)
	}
	out.missing = out.next - from - held
	return out, nil
}

// batches lists the record batches of a fetch answer in offset order.
// kafka-go decodes a fetched record set into a RecordStream of batches,
// whose own ReadRecord would hide control batches and every batch's
// producer.
func batches(rr protocol.RecordReader) []protocol.RecordReader {
	switch s := rr.(type) {
	case nil:
		return nil
	case *protocol.RecordStream:
		return s.Records
	default:
		return []protocol.RecordReader{rr}
	}
}

// batchInfo returns a batch's attributes and producer id (-1 for none: an
// old message set, or a producer neither idempotent nor transactional).
func batchInfo(b protocol.RecordReader) (protocol.Attributes, int64) {
	switch b := b.(type) {
	case *protocol.RecordBatch:
		return b.Attributes, b.ProducerID
	case *protocol.ControlBatch:
		return b.Attributes | protocol.Control, b.ProducerID
	default:
		return 0, -1
	}
}

// readBatch decodes every record of one batch.
func readBatch(b protocol.RecordReader, control bool, topic string, partition int, highWater int64) ([]record, error) {
	var recs []record
	for {
		r, err := b.ReadRecord()
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if err != nil {
			return nil, err
		}
		if control {
			cr, err := protocol.ReadControlRecord(r)
			if err != nil {
				return nil, fmt.Errorf("control record %d: %w", r.Offset, err)
			}
			recs = append(recs, record{offset: r.Offset, abort: cr.Type == abortMarker})
			continue
		}
		key, kerr := readBytes(r.Key)
		value, verr := readBytes(r.Value)
		if err := errors.Join(kerr, verr); err != nil {
			return nil, fmt.Errorf("record %d: %w", r.Offset, err)
		}
		recs = append(recs, record{offset: r.Offset, msg: kafka.Message{
			Topic: topic, Partition: partition, Offset: r.Offset, HighWaterMark: highWater,
			Key: key, Value: value, Headers: r.Headers, Time: r.Time,
		}})
	}
}

func readBytes(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	defer b.Close()
	return protocol.ReadAll(b)
}
