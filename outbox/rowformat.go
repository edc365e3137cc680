package outbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// An outbox row of records (migration 0024) holds them packed in its
// records column: rowFormat, then each record as its topic, key, value and
// headers (JSON text), each a 4-byte big-endian length and its bytes (a
// NULL key: length noKey, no bytes), and its acceptance time in
// microseconds since 1970, 8 bytes big-endian (noAcceptance: none). The
// SQL function outbox_unpack reads the same format.
const (
	rowFormat    = 1
	noKey        = math.MaxUint32
	noAcceptance = math.MinInt64
)

// rowBytes is about how many bytes of records Queue packs into one row (a
// row ends before the record that would take it past this): with the
// row's other columns it stays under the slots' toast_tuple_target (8160
// bytes), so PostgreSQL keeps it in its page as it is. A record larger
// than this gets a row of its own.
const rowBytes = 7000

// packedSize is the bytes a record with these fields takes in a row.
func packedSize(topic string, key, value []byte, headers string) int {
	return 4 + len(topic) + 4 + len(key) + 4 + len(value) + 4 + len(headers) + 8
}

// appendRecord packs a record onto a row's records.
func appendRecord(b []byte, topic string, key, value []byte, headers string, acceptedAt time.Time) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(topic)))
	b = append(b, topic...)
	if key == nil {
		b = binary.BigEndian.AppendUint32(b, noKey)
	} else {
		b = binary.BigEndian.AppendUint32(b, uint32(len(key)))
		b = append(b, key...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
	b = append(b, value...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(headers)))
	b = append(b, headers...)
	us := int64(noAcceptance)
	if !acceptedAt.IsZero() {
		us = acceptedAt.UnixMicro()
	}
	return binary.BigEndian.AppendUint64(b, uint64(us))
}

// minMicros is the earliest timestamptz PostgreSQL takes (4714-11-24 BC),
// in microseconds since 1970; its latest (294277 AD) is past any int64.
const minMicros = -210866803200000000

// isText reports whether b can be a PostgreSQL text value in a UTF-8
// database.
func isText(b []byte) bool {
	return utf8.Valid(b) && bytes.IndexByte(b, 0) < 0
}

// errRowFormat is a row's records that cannot be read.
var errRowFormat = errors.New("the row's records are not in the format this relay reads")

// unpackRecords reads the records of row x from b, which they alias, onto
// out: each with the row's id, slot, shard and creation time, and its
// position from 1.
func unpackRecords(out []record, x outboxRow, createdAt time.Time, b []byte) ([]record, error) {
	if len(b) == 0 || b[0] != rowFormat {
		return out, errRowFormat
	}
	start := len(out)
	b = b[1:]
	field := func() ([]byte, bool, error) {
		if len(b) < 4 {
			return nil, false, errRowFormat
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if n == noKey {
			return nil, true, nil
		}
		if uint64(n) > uint64(len(b)) {
			return nil, false, errRowFormat
		}
		v := b[:n:n]
		b = b[n:]
		return v, false, nil
	}
	for ord := int32(1); len(b) > 0; ord++ {
		r := record{id: x.id, ord: ord, slot: x.slot, shard: x.shard, createdAt: createdAt}
		topic, null, err := field()
		if err != nil || null {
			return out, fmt.Errorf("record %d: %w", ord, errRowFormat)
		}
		r.topic = string(topic)
		if r.key, _, err = field(); err != nil {
			return out, fmt.Errorf("record %d: %w", ord, errRowFormat)
		}
		if r.value, null, err = field(); err != nil || null {
			return out, fmt.Errorf("record %d: %w", ord, errRowFormat)
		}
		if r.value == nil {
			r.value = []byte{}
		}
		if r.headers, null, err = field(); err != nil || null || len(b) < 8 {
			return out, fmt.Errorf("record %d: %w", ord, errRowFormat)
		}
		if us := int64(binary.BigEndian.Uint64(b)); us != noAcceptance {
			if us < minMicros {
				return out, fmt.Errorf("record %d: a time out of PostgreSQL's range: %w", ord, errRowFormat)
			}
			r.acceptedAt = pgtype.Timestamptz{Time: time.UnixMicro(us), Valid: true}
		}
		// What the relay may have to park goes into text columns.
		if !isText(topic) || !isText(r.headers) {
			return out, fmt.Errorf("record %d: a topic or headers that are not UTF-8 text without NUL: %w", ord, errRowFormat)
		}
		b = b[8:]
		out = append(out, r)
	}
	if len(out) == start {
		return out, fmt.Errorf("no record: %w", errRowFormat)
	}
	return out, nil
}
