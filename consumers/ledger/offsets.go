package ledger

// The stored offsets of the commands topic (consumer_offsets), and the
// operators' decisions on them (consumer_offset_resets). Why a stored offset
// may halt, and what its anchor is for: consumers/offsets.go.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Halt says why a partition stopped: its stored offset does not fit the
// log, and applying on would skip records.
type Halt struct {
	At     time.Time
	Reason string
	// LogStart and LogEnd are the log's bounds when the worker looked.
	LogStart, LogEnd int64
}

// PartitionState is a partition's stored offset and halt.
type PartitionState struct {
	GroupID   string
	Partition int
	Next      int64 // the stored offset: the next record to apply
	UpdatedAt time.Time
	Halt      *Halt // nil unless halted
}

// Reset is one operator decision on a stored offset, as ResetOffset
// recorded it.
type Reset struct {
	GroupID, Topic string
	Partition      int
	From           *int64 // nil when no offset was stored
	To             int64
	// Target is what was asked: earliest, latest, or the offset.
	Target           string
	LogStart, LogEnd int64
	HaltCleared      string // the halt's reason; "" when it was not halted
	Reason, By       string
	At               time.Time
}

// ResetRequest asks ResetOffset to store To as a partition's offset.
type ResetRequest struct {
	GroupID, Topic string
	Partition      int
	To             int64
	Target         string
	// LogStart and LogEnd are the log's bounds, read from Kafka just before.
	LogStart, LogEnd int64
	Reason, By       string
}

// ErrOutsideLog means a reset asked for an offset outside the log's bounds:
// below the start nothing is there; past the end the partition would halt
// again.
var ErrOutsideLog = errors.New("offset outside the log")

// ResetOffset stores r.To as the partition's offset, clears its halt and
// anchor, and records who, when, what and why in consumer_offset_resets, all
// in one transaction. It locks the partition's row first (the package's lock
// order), so it waits for a batch in flight and records the offset that
// batch left. A worker applying the partition then finds its position moved
// (ErrFenced) and re-reads it; a lane holding it halted or idle sees the
// change at its next check of the partition's row.
func ResetOffset(ctx context.Context, pool *pgxpool.Pool, r ResetRequest) (Reset, error) {
	switch {
	case r.Reason == "" || r.By == "":
		return Reset{}, errors.New("reset: a reason and who decides are required")
	case r.Partition < 0:
		return Reset{}, fmt.Errorf("reset: partition %d does not exist", r.Partition)
	case r.To < r.LogStart || r.To > r.LogEnd:
		return Reset{}, fmt.Errorf("reset partition %d to %d: %w [%d, %d]", r.Partition, r.To, ErrOutsideLog, r.LogStart, r.LogEnd)
	}
	out := Reset{GroupID: r.GroupID, Topic: r.Topic, Partition: r.Partition, To: r.To, Target: r.Target,
		LogStart: r.LogStart, LogEnd: r.LogEnd, Reason: r.Reason, By: r.By}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
			VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true`,
			r.GroupID, r.Topic, r.Partition, r.To).Scan(&inserted)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("create offset row: %w", err)
		}
		if !inserted {
			var from int64
			var halt *string
			if err := tx.QueryRow(ctx, `SELECT next_offset, halt_reason FROM consumer_offsets
				WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE`,
				r.GroupID, r.Topic, r.Partition).Scan(&from, &halt); err != nil {
				return fmt.Errorf("lock offset row: %w", err)
			}
			out.From = &from
			if halt != nil {
				out.HaltCleared = *halt
			}
			if _, err := tx.Exec(ctx, `UPDATE consumer_offsets SET next_offset = $4, updated_at = now(),
					anchor_offset = NULL, anchor_hash = NULL,
					halted_at = NULL, halt_reason = NULL, halt_log_start = NULL, halt_log_end = NULL
				WHERE group_id = $1 AND topic = $2 AND partition = $3`,
				r.GroupID, r.Topic, r.Partition, r.To); err != nil {
				return fmt.Errorf("store offset: %w", err)
			}
		}
		return tx.QueryRow(ctx, `INSERT INTO consumer_offset_resets (group_id, topic, partition, from_offset, to_offset,
				target, log_start, log_end, halt_cleared, reason, reset_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, nullif($9, ''), $10, $11) RETURNING reset_at`,
			r.GroupID, r.Topic, r.Partition, out.From, r.To, r.Target, r.LogStart, r.LogEnd, out.HaltCleared, r.Reason, r.By).Scan(&out.At)
	})
	if err != nil {
		return Reset{}, fmt.Errorf("reset partition %d: %w", r.Partition, err)
	}
	return out, nil
}

// PartitionStates returns the stored offsets of topic, by group and
// partition; groupID "" means every group.
func PartitionStates(ctx context.Context, pool *pgxpool.Pool, groupID, topic string) ([]PartitionState, error) {
	rows, err := pool.Query(ctx, `SELECT group_id, partition, next_offset, updated_at,
			halted_at, coalesce(halt_reason, ''), coalesce(halt_log_start, 0), coalesce(halt_log_end, 0)
		FROM consumer_offsets WHERE topic = $1 AND ($2 = '' OR group_id = $2)
		ORDER BY group_id, partition`, topic, groupID)
	if err != nil {
		return nil, fmt.Errorf("read stored offsets: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (PartitionState, error) {
		var s PartitionState
		var p int32
		var at *time.Time
		var h Halt
		err := row.Scan(&s.GroupID, &p, &s.Next, &s.UpdatedAt, &at, &h.Reason, &h.LogStart, &h.LogEnd)
		s.Partition = int(p)
		if at != nil {
			h.At = *at
			s.Halt = &h
		}
		return s, err
	})
}

// RecentResets returns the last limit resets of topic, newest first;
// groupID "" means every group.
func RecentResets(ctx context.Context, pool *pgxpool.Pool, groupID, topic string, limit int) ([]Reset, error) {
	rows, err := pool.Query(ctx, `SELECT group_id, topic, partition, from_offset, to_offset, target, log_start, log_end,
			coalesce(halt_cleared, ''), reason, reset_by, reset_at
		FROM consumer_offset_resets WHERE topic = $1 AND ($2 = '' OR group_id = $2)
		ORDER BY reset_at DESC, id DESC LIMIT $3`, topic, groupID, limit)
	if err != nil {
		return nil, fmt.Errorf("read offset resets: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Reset, error) {
		var r Reset
		var p int32
		err := row.Scan(&r.GroupID, &r.Topic, &p, &r.From, &r.To, &r.Target, &r.LogStart, &r.LogEnd, &r.HaltCleared, &r.Reason, &r.By, &r.At)
		r.Partition = int(p)
		return r, err
	})
}

// Anchor is a record applied below a stored offset: its offset and the
// SHA-256 of its key, value and timestamp.
type Anchor struct {
	Offset int64
	Hash   []byte
}

// Stored is a partition's row as a worker reads it.
type Stored struct {
	Next   int64
	Anchor *Anchor // nil until one is saved
	Halt   *Halt   // nil unless halted
}

// States reads the rows of parts; a partition never applied has none.
func (s Source) States(ctx context.Context, pool *pgxpool.Pool, parts []int) (map[int]Stored, error) {
	rows, err := pool.Query(ctx, `SELECT partition, next_offset, anchor_offset, anchor_hash,
			halted_at, coalesce(halt_reason, ''), coalesce(halt_log_start, 0), coalesce(halt_log_end, 0)
		FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int4[])`,
		s.Group, s.Topic, parts)
	if err != nil {
		return nil, fmt.Errorf("read stored offsets: %w", err)
	}
	out := map[int]Stored{}
	var p int32
	var st Stored
	var aOff *int64
	var aHash []byte
	var at *time.Time
	var h Halt
	_, err = pgx.ForEachRow(rows, []any{&p, &st.Next, &aOff, &aHash, &at, &h.Reason, &h.LogStart, &h.LogEnd}, func() error {
		s := Stored{Next: st.Next}
		if aOff != nil {
			s.Anchor = &Anchor{Offset: *aOff, Hash: aHash}
		}
		if at != nil {
			halt := h
			halt.At = *at
			s.Halt = &halt
		}
		out[int(p)] = s
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read stored offsets: %w", err)
	}
	return out, nil
}

// Offsets reads the offsets stored for parts; a partition never applied
// has none. Halted partitions are included.
func (s Source) Offsets(ctx context.Context, pool *pgxpool.Pool, parts []int) (Positions, error) {
	rows, err := pool.Query(ctx, `SELECT partition, next_offset FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int4[])`,
		s.Group, s.Topic, parts)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	stored := Positions{}
	return stored, scanPositions(rows, stored)
}

// Advance moves the stored offsets of the partitions of to from from, in
// one transaction that changes nothing unless every one of them is still
// at from and not halted (ErrFenced). It locks the rows as a batch does:
// created at from if missing, then in partition order.
func (s Source) Advance(ctx context.Context, pool *pgxpool.Pool, from, to Positions) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		stored := s.queueFence(b, from)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("advance stored offsets: %w", err)
		}
		for p, want := range from {
			if got, ok := stored[p]; !ok || got != want {
				return fmt.Errorf("%w (partition %d: stored %d, expected %d)", ErrFenced, p, got, want)
			}
		}
		b = &pgx.Batch{}
		if err := s.queueWrites(b, &Writes{Next: to}); err != nil {
			return err
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("advance stored offsets: %w", err)
		}
		return nil
	})
}

// SaveHalt halts partition p if its stored offset is still next; a
// partition already halted keeps its first halt. It reports false when the
// stored offset moved (an operator reset it meanwhile).
func (s Source) SaveHalt(ctx context.Context, pool *pgxpool.Pool, p int, next int64, h Halt) (bool, error) {
	tag, err := pool.Exec(ctx, `UPDATE consumer_offsets SET halted_at = coalesce(halted_at, $5),
			halt_reason = coalesce(halt_reason, $6), halt_log_start = coalesce(halt_log_start, $7),
			halt_log_end = coalesce(halt_log_end, $8)
		WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $4`,
		s.Group, s.Topic, p, next, h.At, h.Reason, h.LogStart, h.LogEnd)
	if err != nil {
		return false, fmt.Errorf("save halt of partition %d: %w", p, err)
	}
	return tag.RowsAffected() == 1, nil
}

// SaveAnchors stores anchors as the partitions' anchors where their stored
// offset is still pos and they are not halted. Anchors are an aid to
// checking a log, not part of the exactly-once state, so they are written
// outside the batch transaction.
func (s Source) SaveAnchors(ctx context.Context, pool *pgxpool.Pool, anchors map[int]Anchor, pos Positions) error {
	var parts []int32
	var offsets, nexts []int64
	var hashes [][]byte
	for _, p := range slices.Sorted(maps.Keys(anchors)) {
		parts, offsets, hashes, nexts = append(parts, int32(p)), append(offsets, anchors[p].Offset), append(hashes, anchors[p].Hash), append(nexts, pos[p])
	}
	_, err := pool.Exec(ctx, `UPDATE consumer_offsets AS c SET anchor_offset = u.a, anchor_hash = u.h
		FROM unnest($3::int4[], $4::int8[], $5::bytea[], $6::int8[]) AS u (p, a, h, n)
		WHERE c.group_id = $1 AND c.topic = $2 AND c.partition = u.p AND c.next_offset = u.n AND c.halted_at IS NULL`,
		s.Group, s.Topic, parts, offsets, hashes, nexts)
	if err != nil {
		return fmt.Errorf("save anchors: %w", err)
	}
	return nil
}

// AppliedTotal is the sum of the stored offsets of every group and topic:
// how many records have been applied, for a benchmark waiting for a run to
// drain on a fresh database.
func AppliedTotal(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets`).Scan(&n)
	return n, err
}
