package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
)

// Why a record was parked: the reason column of outbox_parked and the reason
// label of txpipe_relay_parked_total. docs/operations.md ("Parked outbox
// rows") says what each means and what to do about it.
const (
	// ReasonTopicMissing: Kafka says the topic does not exist
	// (UNKNOWN_TOPIC_OR_PARTITION, or INVALID_TOPIC_EXCEPTION for a name no
	// topic can have), round after round, for RelayOptions.TopicRefusalGrace.
	ReasonTopicMissing = "topic_missing"
	// ReasonNotAuthorized: the relay's Kafka principal may not write (or
	// even see) the topic (TOPIC_AUTHORIZATION_FAILED), for
	// RelayOptions.TopicRefusalGrace.
	ReasonNotAuthorized = "not_authorized"
	// ReasonTooLarge: the record is larger than one relay batch may be, or
	// the broker refused it alone as larger than the topic's
	// max.message.bytes (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE).
	ReasonTooLarge = "too_large"
	// ReasonInvalidRecord: the broker refused the record alone as invalid
	// (INVALID_RECORD, CORRUPT_MESSAGE): e.g. a record without key on a
	// log-compacted topic.
	ReasonInvalidRecord = "invalid_record"
	// ReasonUndecodable: the record cannot be made a Kafka record (headers
	// that are not a JSON object of strings, an empty topic name), or its
	// row's records cannot be read (the row is parked whole).
	ReasonUndecodable = "undecodable"
	// ReasonInternalError: handling this record panicked the relay while
	// other records of its batch went through (a bug: report it).
	ReasonInternalError = "internal_error"
)

// ParkReasons lists every reason a record is parked for.
var ParkReasons = []string{ReasonTopicMissing, ReasonNotAuthorized, ReasonTooLarge, ReasonInvalidRecord, ReasonUndecodable, ReasonInternalError}

// refusal reports whether err is Kafka refusing a record for good, the
// reason to park it for, and whether the refusal is of the whole topic.
// A topic refusal may pass (the topic is being created, the ACL granted),
// so it must last TopicRefusalGrace; a record refusal is final, but a
// partition's record batch fails whole, so the record must fail alone
// before it is parked (see Relay.isolate). Anything else is retriable:
// the row stays for the next round.
func refusal(err error) (reason string, topicWide bool) {
	switch {
	case err == nil:
		return "", false
	case errors.Is(err, kafka.TopicAuthorizationFailed):
		return ReasonNotAuthorized, true
	case errors.Is(err, kafka.UnknownTopicOrPartition), errors.Is(err, kafka.InvalidTopic):
		return ReasonTopicMissing, true
	case errors.Is(err, kafka.MessageSizeTooLarge), errors.Is(err, kafka.RecordListTooLarge):
		return ReasonTooLarge, false
	case errors.Is(err, kafka.InvalidRecord), errors.Is(err, kafka.InvalidMessage): // InvalidMessage is CORRUPT_MESSAGE
		return ReasonInvalidRecord, false
	}
	return "", false
}

// refusalRecheck is how long a topic refusal is trusted without asking
// Kafka again. Asking costs a writer round (for a topic the brokers do not
// list, its whole metadata retry, about 16 s, during which the batch's
// other rows wait too), so rows of a topic refused less than this ago are
// held back (or parked, once the grace is over) without being sent.
const refusalRecheck = 30 * time.Second

// refusalForget ends a refusal that was not seen again for this long: a
// later one starts a new grace.
const refusalForget = 5 * time.Minute

// refusals remembers which topics Kafka refuses as a whole, since when,
// and when it last said so. Used by the relay's loop goroutine only.
type refusals struct {
	grace   time.Duration
	byTopic map[string]topicRefusal
}

type topicRefusal struct {
	reason          string
	since, answered time.Time
}

// observe records that Kafka refused topic for reason at now, and reports
// whether it has refused it for the whole grace, so its rows are parked.
func (rs *refusals) observe(topic, reason string, now time.Time) (park bool) {
	if rs.byTopic == nil {
		rs.byTopic = make(map[string]topicRefusal)
	}
	tr, ok := rs.byTopic[topic]
	if !ok || tr.reason != reason || now.Sub(tr.answered) > refusalForget {
		tr = topicRefusal{reason: reason, since: now}
	}
	tr.answered = now
	rs.byTopic[topic] = tr
	return now.Sub(tr.since) >= rs.grace
}

// accepted records that Kafka took a record of topic: it is not refused.
func (rs *refusals) accepted(topic string) { delete(rs.byTopic, topic) }

// standing reports whether topic was refused less than refusalRecheck ago:
// then its rows are not sent, and park says whether they are parked for
// reason (the grace is over) or wait.
func (rs *refusals) standing(topic string, now time.Time) (reason string, park, ok bool) {
	tr, ok := rs.byTopic[topic]
	if !ok || now.Sub(tr.answered) >= refusalRecheck {
		return "", false, false
	}
	return tr.reason, now.Sub(tr.since) >= rs.grace, true
}

// Parked is a row of outbox_parked, without its key, value and headers.
type Parked struct {
	ID        int64
	Topic     string
	Reason    string
	Bytes     int // of key and value
	CreatedAt time.Time
	ParkedAt  time.Time
}

// ParkedFilter picks parked rows: those with Reason (when set) and with
// one of IDs (when set). The zero filter picks all of them.
type ParkedFilter struct {
	Reason string
	IDs    []int64
}

const parkedWhere = `($1 = '' OR reason = $1) AND (cardinality($2::int8[]) = 0 OR id = ANY($2))`

// ListParked returns up to limit parked rows that f picks, oldest first.
func ListParked(ctx context.Context, pool *pgxpool.Pool, f ParkedFilter, limit int) ([]Parked, error) {
	rows, err := pool.Query(ctx, `SELECT id, topic, reason, coalesce(length(key), 0) + length(value), created_at, parked_at
		FROM outbox_parked WHERE `+parkedWhere+` ORDER BY id LIMIT $3`, f.Reason, ids(f.IDs), limit)
	if err != nil {
		return nil, fmt.Errorf("list parked outbox rows: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Parked, error) {
		var p Parked
		err := r.Scan(&p.ID, &p.Topic, &p.Reason, &p.Bytes, &p.CreatedAt, &p.ParkedAt)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("list parked outbox rows: %w", err)
	}
	return list, nil
}

// Unpark moves the parked records f picks back into the outbox, each a
// row of one record, so the relay publishes them again (or parks them
// again if Kafka still refuses them), and wakes the relays. It returns how
// many it moved. The records keep their parked ids as a set, dealt out in
// the order they were queued in (their outbox row, then their position
// there), so records unparked together go out in that order whenever each
// was parked. A key's unparked record reaches Kafka after the key's later
// records that were published while it was parked.
func Unpark(ctx context.Context, pool *pgxpool.Pool, f ParkedFilter) (int64, error) {
	type parked struct {
		id, row int64
		ord     int32
		key     []byte
		packed  []byte
		created time.Time
	}
	var n int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM outbox_parked WHERE `+parkedWhere+`
			RETURNING id, coalesce(row_id, id), coalesce(ord, 1), topic, key, value, headers, accepted_at, created_at`, f.Reason, ids(f.IDs))
		if err != nil {
			return err
		}
		var (
			x              parked
			topic, headers string
			value          []byte
			accepted       pgtype.Timestamptz
			moved          []parked
		)
		_, err = pgx.ForEachRow(rows, []any{&x.id, &x.row, &x.ord, &topic, &x.key, &value, &headers, &accepted, &x.created}, func() error {
			var at time.Time
			if accepted.Valid {
				at = accepted.Time
			}
			x.packed = appendRecord([]byte{rowFormat}, topic, x.key, value, headers, at)
			moved = append(moved, x)
			return nil
		})
		if err != nil {
			return err
		}
		parkedIDs := make([]int64, len(moved))
		for i, m := range moved {
			parkedIDs[i] = m.id
		}
		slices.Sort(parkedIDs)
		slices.SortFunc(moved, func(a, b parked) int {
			return cmp.Or(cmp.Compare(a.row, b.row), cmp.Compare(a.ord, b.ord), cmp.Compare(a.id, b.id))
		})
		keys, packed, created := make([][]byte, len(moved)), make([][]byte, len(moved)), make([]time.Time, len(moved))
		for i, m := range moved {
			keys[i], packed[i], created[i] = m.key, m.packed, m.created
		}
		if _, err := tx.Exec(ctx, `INSERT INTO outbox (id, key, records, record_count, created_at)
			SELECT id, k, r, 1, c FROM unnest($1::int8[], $2::bytea[], $3::bytea[], $4::timestamptz[]) AS u (id, k, r, c)
			ORDER BY id`, parkedIDs, keys, packed, created); err != nil {
			return err
		}
		n = int64(len(moved))
		_, err = tx.Exec(ctx, notifySQL, NotifyChannel, NotifyQueueMaxUsage)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("unpark outbox records: %w", err)
	}
	return n, nil
}

// ids is never nil: a nil slice would be SQL NULL, whose cardinality is
// NULL rather than 0.
func ids(v []int64) []int64 {
	if v == nil {
		return []int64{}
	}
	return v
}
