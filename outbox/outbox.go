// Package outbox writes the records txpipe publishes into PostgreSQL inside
// the transaction that decided them, and relays them to Kafka afterwards.
//
// Rows are deleted once Kafka acknowledged them, so the relay reads "every row
// still there" rather than "rows after a watermark": a transaction that took a
// lower id but committed later is simply found on a later pass, never skipped.
// Per key, id order is commit order, because a worker inserts an account's
// rows only while holding that account's row lock.
//
// The table is a ring of Slots partitions by the SlotWindow its writing
// transaction began in (the column default picks it; writers never name
// it). Once a slot's window is over and every row of it is published, a
// relay truncates it (reclaim.go), so what deleted rows leave behind never
// waits for VACUUM and the outbox does not grow with what it has published
// (docs/outbox.md).
//
// A row holds the records one transaction wrote for one shard, in order
// (Queue): the per-row costs (a tuple, its index entries, a lock and a
// delete) are paid once for several records. The relay rewrites a row to
// the records it has left when it publishes only some of them.
//
// A record Kafka refuses for good, or that cannot be made a record, is
// moved to outbox_parked with the reason (park.go), so it never holds up
// the records behind it; Unpark moves parked records back once the cause
// is fixed.
package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// NotifyChannel is the LISTEN/NOTIFY channel that wakes the relay when a
// transaction that wrote outbox rows commits.
const NotifyChannel = "txpipe_outbox"

// NotifyQueueMaxUsage is the share of PostgreSQL's notification queue
// (pg_notification_queue_usage()) at and above which Queue stops notifying.
//
// The queue is one per server, 8 GiB (1 Mi pages of 8 KiB; PostgreSQL 15
// cannot resize it), and its tail is the position of the slowest listening
// backend. A relay whose process is paused (SIGSTOP, a debugger, a VM
// frozen) keeps its LISTEN connection open, its backend stops advancing,
// and every commit that notifies adds an entry (32 bytes for this channel:
// 256 a page) until the queue is full and every transaction that notifies
// fails at COMMIT. A healthy listener keeps the queue within a few pages
// (5 pages measured at 16 000 notifying commits a second), so 64 pages
// (512 KiB, about 16 000 wake-ups) can only mean a stuck listener: past it
// the workers stop notifying, the queue stops growing, and the relays fall
// back on their poll interval until the stuck backend goes (its relay
// resumes or is killed, or an operator ends the session). The relays
// export the usage (txpipe_postgres_notify_queue_usage_ratio) and an alert
// fires while it stays at this bound.
const NotifyQueueMaxUsage = 64.0 / (1 << 20)

// notifySQL wakes the relays unless the notification queue is held (see
// NotifyQueueMaxUsage). A NOTIFY is delivered at commit, and once per
// transaction per payload, however often it is queued.
const notifySQL = `SELECT pg_notify($1, '') WHERE pg_notification_queue_usage() < $2`

// Message is one record to publish.
type Message struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers map[string]string
	// AcceptedAt is when ingest had the command acknowledged; set on outcome
	// events so the relay can measure end-to-end latency. Zero otherwise.
	AcceptedAt time.Time
}

// insertSQL writes the rows Queue packed: $1 each row's key (its first
// record's, whose shard is every record's), $2 its records, $3 how many.
// Ids follow the array's order.
const insertSQL = `
INSERT INTO outbox (key, records, record_count)
SELECT k, r, c FROM unnest($1::bytea[], $2::bytea[], $3::int4[]) WITH ORDINALITY AS u (k, r, c, n)
ORDER BY n`

// Queue adds to b the statement that writes msgs, in order, and the
// notification that wakes the relay on commit (left out while the
// notification queue is held: see NotifyQueueMaxUsage). Run b inside the
// transaction whose effects the messages describe.
//
// The records of one shard go into one row, in order, cut into rows of
// about rowBytes; rows are written in the order of their first record, so
// a key's records are in id order, then in position order within a row.
func Queue(b *pgx.Batch, msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	type row struct {
		key     []byte
		records []byte
		count   int32
	}
	var rows []*row
	open := make(map[int16]*row) // each shard's row being filled
	for _, m := range msgs {
		headers := headersJSON(m.Headers)
		size := packedSize(m.Topic, m.Key, m.Value, headers)
		s := shardOf(m.Key)
		r := open[s]
		if r == nil || len(r.key)+len(r.records)+size > rowBytes { // the row's key column is in its page too
			r = &row{key: m.Key, records: make([]byte, 1, min(max(rowBytes, size+1), 1+size*4))}
			r.records[0] = rowFormat
			open[s] = r
			rows = append(rows, r)
		}
		r.records = appendRecord(r.records, m.Topic, m.Key, m.Value, headers, m.AcceptedAt)
		r.count++
	}
	keys := make([][]byte, len(rows))
	records := make([][]byte, len(rows))
	counts := make([]int32, len(rows))
	for i, r := range rows {
		keys[i], records[i], counts[i] = r.key, r.records, r.count
	}
	b.Queue(insertSQL, keys, records, counts)
	b.Queue(notifySQL, NotifyChannel, NotifyQueueMaxUsage)
}

// pendingSQL counts the records waiting in the outbox: a row of records
// holds record_count of them, a row of the older layout one.
const pendingSQL = `coalesce(sum(coalesce(record_count, 1)), 0)::int8`

// Unpublished counts the outbox records no relay has published yet, in q's
// snapshot (an auditor's REPEATABLE READ transaction, say).
func Unpublished(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, `SELECT `+pendingSQL+` FROM outbox`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count outbox records: %w", err)
	}
	return n, nil
}
