// Package outbox writes the records txpipe publishes into PostgreSQL inside
// the transaction that decided them, and relays them to Kafka afterwards.
//
// Rows are deleted once Kafka acknowledged them, so the relay reads "every row
// still there" rather than "rows after a watermark": a transaction that took a
// lower id but committed later is simply found on a later pass, never skipped.
// Per key, id order is commit order, because a worker inserts an account's
// rows only while holding that account's row lock.
//
// A row Kafka refuses for good, or that cannot be made a record, is moved
// to outbox_parked with the reason (park.go), so it never holds up the rows
// behind it; Unpark moves parked rows back once the cause is fixed.
package outbox

import (
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// NotifyChannel is the LISTEN/NOTIFY channel that wakes the relay when a
// transaction that wrote outbox rows commits.
const NotifyChannel = "txpipe_outbox"

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

const insertSQL = `
INSERT INTO outbox (topic, key, value, headers, accepted_at)
SELECT t, k, v, h, a
FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[], $5::timestamptz[])
     WITH ORDINALITY AS u (t, k, v, h, a, n)
ORDER BY n`

// Queue adds to b the statements that insert msgs, in order (ids follow the
// slice order), and the notification that wakes the relay on commit. Run b
// inside the transaction whose effects the messages describe.
func Queue(b *pgx.Batch, msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	topics := make([]string, len(msgs))
	keys := make([][]byte, len(msgs))
	values := make([][]byte, len(msgs))
	headers := make([]string, len(msgs))
	accepted := make([]pgtype.Timestamptz, len(msgs))
	for i, m := range msgs {
		topics[i], keys[i], values[i] = m.Topic, m.Key, m.Value
		h, _ := json.Marshal(m.Headers) // a map of strings always encodes
		if m.Headers == nil {
			h = []byte("{}")
		}
		headers[i] = string(h)
		accepted[i] = pgtype.Timestamptz{Time: m.AcceptedAt, Valid: !m.AcceptedAt.IsZero()}
	}
	b.Queue(insertSQL, topics, keys, values, headers, accepted)
	// NOTIFY is delivered at commit, and once per transaction per payload.
	b.Queue(`SELECT pg_notify($1, '')`, NotifyChannel)
}
