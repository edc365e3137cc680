package kafkafetch

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// data is a batch of records at offsets, from producer pid (-1: none),
// transactional when txn.
func data(pid int64, txn bool, offsets ...int64) protocol.RecordReader {
	var recs []protocol.Record
	for _, o := range offsets {
		recs = append(recs, protocol.Record{Offset: o, Value: protocol.NewBytes(fmt.Appendf(nil, "v%d", o))})
	}
	var attrs protocol.Attributes
	if txn {
		attrs = protocol.Transactional
	}
	return &protocol.RecordBatch{Attributes: attrs, ProducerID: pid, BaseOffset: offsets[0], Records: protocol.NewRecordReader(recs...)}
}

// marker is the control batch that ends pid's transaction at offset.
func marker(pid int64, offset int64, commit bool) protocol.RecordReader {
	typ := int16(abortMarker)
	if commit {
		typ = 1
	}
	b := protocol.NewControlBatch(protocol.ControlRecord{Offset: offset, Type: typ})
	b.Attributes, b.ProducerID, b.BaseOffset = protocol.Control|protocol.Transactional, pid, offset
	return b
}

type brokenBatch struct{}

func (brokenBatch) ReadRecord() (*protocol.Record, error) { return nil, errors.New("crc mismatch") }

func TestReadPartition(t *testing.T) {
	type aborted = fetchapi.ResponseTransaction
	for _, tc := range []struct {
		name    string
		from    int64
		batches []protocol.RecordReader
		aborted []aborted
		want    []int64 // offsets delivered
		next    int64
		missing int64
		err     bool
	}{
		{name: "no batch", from: 7, next: 7},
		{name: "plain records, from inside the first batch",
			from: 2, batches: []protocol.RecordReader{data(-1, false, 0, 1, 2, 3), data(-1, false, 4)},
			want: []int64{2, 3, 4}, next: 5},
		{name: "committed transaction ends in its marker",
			batches: []protocol.RecordReader{data(7, true, 0, 1), marker(7, 2, true)},
			want:    []int64{0, 1}, next: 3},
		{name: "only a commit marker",
			from: 2, batches: []protocol.RecordReader{marker(7, 2, true)},
			next: 3},
		{name: "aborted transaction, then a plain record",
			batches: []protocol.RecordReader{data(7, true, 0, 1), marker(7, 2, false), data(-1, false, 3)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 0}},
			want:    []int64{3}, next: 4},
		{name: "only aborted records and their marker",
			batches: []protocol.RecordReader{data(7, true, 0, 1), marker(7, 2, false)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 0}},
			next:    3},
		{name: "aborted then committed transaction of one producer",
			batches: []protocol.RecordReader{data(7, true, 0), marker(7, 1, false), data(7, true, 2), marker(7, 3, true)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 0}},
			want:    []int64{2}, next: 4},
		{name: "interleaved producers, one aborts",
			batches: []protocol.RecordReader{data(7, true, 0), data(8, true, 1), data(-1, false, 2), data(7, true, 3), marker(7, 4, false), data(8, true, 5), marker(8, 6, true)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 0}},
			want:    []int64{1, 2, 5}, next: 7},
		{name: "a fetch that starts inside an aborted transaction",
			from: 2, batches: []protocol.RecordReader{data(7, true, 2), marker(7, 3, false), data(9, true, 4), marker(9, 5, true)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 0}},
			want:    []int64{4}, next: 6},
		{name: "aborted list out of order",
			batches: []protocol.RecordReader{data(8, true, 0), marker(8, 1, false), data(7, true, 2), marker(7, 3, false), data(7, true, 4)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 2}, {ProducerID: 8, FirstOffset: 0}},
			want:    []int64{4}, next: 5},
		{name: "an idempotent producer's batch is never aborted",
			batches: []protocol.RecordReader{data(7, true, 0), data(8, false, 1), marker(7, 2, false)},
			aborted: []aborted{{ProducerID: 7, FirstOffset: 0}, {ProducerID: 8, FirstOffset: 1}},
			want:    []int64{1}, next: 3},
		{name: "offsets missing from the log",
			from: 2, batches: []protocol.RecordReader{data(-1, false, 5, 6), marker(7, 7, true), data(-1, false, 9)},
			want: []int64{5, 6, 9}, next: 10, missing: 4},
		{name: "an undecodable batch ends the read at it",
			batches: []protocol.RecordReader{data(-1, false, 0), marker(7, 1, true), brokenBatch{}, data(-1, false, 5)},
			want:    []int64{0}, next: 2, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rp := &fetchapi.ResponsePartition{Partition: 3, HighWatermark: 99, AbortedTransactions: tc.aborted}
			if tc.batches != nil {
				rp.RecordSet.Records = &protocol.RecordStream{Records: tc.batches}
			}
			got, err := readPartition(rp, "commands", tc.from)
			if (err != nil) != tc.err {
				t.Fatalf("readPartition() error = %v, want error %v", err, tc.err)
			}
			var offsets []int64
			for _, m := range got.msgs {
				if m.Topic != "commands" || m.Partition != 3 || m.HighWaterMark != 99 || string(m.Value) != fmt.Sprintf("v%d", m.Offset) {
					t.Errorf("record %d = %+v, want commands/3, high watermark 99, value v%d", m.Offset, m, m.Offset)
				}
				offsets = append(offsets, m.Offset)
			}
			if diff := cmp.Diff(tc.want, offsets); diff != "" {
				t.Errorf("offsets delivered (-want +got):\n%s", diff)
			}
			if got.next != tc.next || got.missing != tc.missing {
				t.Errorf("next, missing = %d, %d, want %d, %d", got.next, got.missing, tc.next, tc.missing)
			}
		})
	}
}

// A control batch's only content is its marker; a malformed one is an
// error, not data.
func TestReadPartitionRejectsMalformedControlRecord(t *testing.T) {
	bad := &protocol.ControlBatch{Attributes: protocol.Control, ProducerID: 7,
		Records: protocol.NewRecordReader(protocol.Record{Offset: 0, Key: protocol.NewBytes([]byte{1})})}
	rp := &fetchapi.ResponsePartition{RecordSet: protocol.RecordSet{Records: &protocol.RecordStream{Records: []protocol.RecordReader{bad}}}}
	got, err := readPartition(rp, "commands", 0)
	if err == nil || errors.Is(err, io.EOF) || len(got.msgs) != 0 || got.next != 0 {
		t.Errorf("readPartition(bad control record) = %+v, %v; want an error, no record and next 0", got, err)
	}
}
