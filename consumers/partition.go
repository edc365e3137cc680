package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/retry"
)

// attemptTimeout bounds one transaction attempt. It is not tied to the
// generation's context, so a rebalance lets an in-flight batch finish
// rather than wasting it; the offset fence makes finishing safe.
const attemptTimeout = 20 * time.Second

// kafkaCommitInterval spaces the informational Kafka offset commits.
const kafkaCommitInterval = time.Second

// runPartition consumes one partition until the generation ends.
func (w *Worker) runPartition(ctx context.Context, gen *kafka.Generation, pa kafka.PartitionAssignment) {
	log := w.opts.Log.With("partition", pa.ID, "generation", gen.ID)
	defer w.setStuck(pa.ID, nil)
	pos, err := w.resumeOffset(ctx, pa, log)
	if err != nil {
		return // the generation ended while PostgreSQL was unreachable
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:       w.opts.Brokers,
		Dialer:        w.opts.Dialer,
		Topic:         w.opts.CommandsTopic,
		Partition:     pa.ID,
		MinBytes:      1,
		MaxBytes:      16 << 20,
		MaxWait:       500 * time.Millisecond,
		QueueCapacity: max(100, 2*w.opts.BatchSize),
		ErrorLogger:   kafka.LoggerFunc(func(msg string, args ...any) { log.Warn("kafka reader", "detail", fmt.Sprintf(msg, args...)) }),
	})
	defer r.Close()
	if err := r.SetOffset(pos); err != nil {
		log.Error("seek partition", "offset", pos, "err", err)
		return
	}
	log.Info("partition started", "offset", pos)
	committed, lastCommit := int64(-1), time.Time{}
	restart := retry.Policy(5 * time.Second) // paces start-overs after failed rounds
	defer func() {
		if committed != pos {
			w.commitKafkaOffset(gen, pa.ID, pos)
		}
	}()
	for {
		msgs, err := fetchBatch(ctx, r, w.opts.BatchSize, w.opts.BatchLinger)
		if err != nil {
			if ctx.Err() == nil {
				// Returning ends the whole generation: the worker rejoins
				// the group and every partition resumes from PostgreSQL.
				log.Warn("fetch failed; ending the generation to rejoin", "err", err)
			}
			return
		}
		msgs = dropBefore(msgs, pos)
		if len(msgs) == 0 {
			continue
		}
		if pos >= 0 && msgs[0].Offset > pos {
			// Records between pos and here are gone from the log
			// (retention, or a recreated topic): they can be neither applied
			// nor dead-lettered. Say so loudly.
			w.metrics.offsetGaps.Add(float64(msgs[0].Offset - pos))
			log.Error("records missing from the log were skipped", "from_offset", pos, "to_offset", msgs[0].Offset)
		}
		next, err := w.process(ctx, pa.ID, pos, msgs, log)
		switch {
		case err == nil:
			pos = next
			w.setStuck(pa.ID, nil)
			restart.Reset()
			last := msgs[len(msgs)-1]
			w.metrics.lag.WithLabelValues(fmt.Sprint(pa.ID)).Set(float64(max(0, last.HighWaterMark-pos)))
			if time.Since(lastCommit) >= kafkaCommitInterval {
				w.commitKafkaOffset(gen, pa.ID, pos)
				committed, lastCommit = pos, time.Now()
			}
		case ctx.Err() != nil:
			return
		default:
			// Fenced, or retries exhausted: PostgreSQL decides where we are.
			w.setStuck(pa.ID, err)
			if errors.Is(err, errFenced) {
				w.metrics.retries.WithLabelValues("fenced").Inc()
				log.Warn("stored offset moved under this worker; re-reading it", "offset", pos)
			} else {
				log.Error("batch keeps failing; re-reading the stored offset and starting over", "offset", pos, "err", err)
				retry.Sleep(ctx, restart.NextBackOff())
			}
			if pos, err = w.resumeOffset(ctx, pa, log); err != nil {
				return
			}
			if err := r.SetOffset(pos); err != nil {
				log.Error("seek partition", "offset", pos, "err", err)
				return
			}
		}
	}
}

// fetchBatch returns the next records: it waits for the first one, then
// takes what arrives within linger, up to size records.
func fetchBatch(ctx context.Context, r *kafka.Reader, size int, linger time.Duration) ([]kafka.Message, error) {
	first, err := r.FetchMessage(ctx)
	if err != nil {
		return nil, err
	}
	msgs := []kafka.Message{first}
	if size == 1 || linger == 0 {
		return msgs, nil
	}
	lctx, cancel := context.WithTimeout(ctx, linger)
	defer cancel()
	for len(msgs) < size {
		m, err := r.FetchMessage(lctx)
		if err != nil {
			break // linger over (a record not taken stays queued in the reader)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// dropBefore removes records below pos, which a reader can hand out again
// around a seek; they were applied already.
func dropBefore(msgs []kafka.Message, pos int64) []kafka.Message {
	i := 0
	for i < len(msgs) && msgs[i].Offset < pos {
		i++
	}
	return msgs[i:]
}

// resumeOffset is where the partition continues: the offset stored in
// PostgreSQL, else the start of the log. Kafka's committed offset is not
// trusted: after a database restore it would skip the commands the restore
// lost, while replaying from the start re-applies exactly those (the others
// are absorbed by processed_commands).
func (w *Worker) resumeOffset(ctx context.Context, pa kafka.PartitionAssignment, log *slog.Logger) (int64, error) {
	bo := backoff.WithContext(retry.Policy(5*time.Second), ctx)
	var next int64
	err := backoff.RetryNotify(func() error {
		err := w.opts.Pool.QueryRow(ctx, `SELECT next_offset FROM consumer_offsets
			WHERE group_id = $1 AND topic = $2 AND partition = $3`,
			w.opts.GroupID, w.opts.CommandsTopic, pa.ID).Scan(&next)
		if errors.Is(err, pgx.ErrNoRows) {
			next = kafka.FirstOffset
			return nil
		}
		return err
	}, bo, func(err error, d time.Duration) {
		w.setStuck(pa.ID, err)
		log.Warn("read stored offset failed, will retry", "err", err, "retry_in", d)
	})
	return next, err
}

// process applies msgs, whose first record is at or after pos, and returns
// the next offset. An infrastructure failure retries the whole batch; a
// batch that fails because of a record (recordFault) is split in halves
// until that record is alone, and it goes to the DLQ while its neighbours
// apply.
func (w *Worker) process(ctx context.Context, partition int, pos int64, msgs []kafka.Message, log *slog.Logger) (int64, error) {
	next, err := w.applyWithRetry(ctx, partition, pos, msgs, nil)
	if err == nil || errors.Is(err, errFenced) || errors.Is(err, errRetriesExhausted) || ctx.Err() != nil {
		return next, err
	}
	w.metrics.retries.WithLabelValues("split").Inc()
	if len(msgs) == 1 {
		log.Error("record cannot be applied; sending it to the DLQ", "offset", msgs[0].Offset, "err", err)
		return w.applyWithRetry(ctx, partition, pos, msgs, &deadLetter{reason: "apply_failed", detail: publicDetail(err)})
	}
	mid := len(msgs) / 2
	if pos, err = w.process(ctx, partition, pos, msgs[:mid], log); err != nil {
		return pos, err
	}
	return w.process(ctx, partition, pos, msgs[mid:], log)
}

// errRetriesExhausted ends one round of retries of an infrastructure
// failure; the partition loop then starts over from the stored offset, so a
// PostgreSQL outage never sends good records to the DLQ.
var errRetriesExhausted = errors.New("transient failures: retries exhausted")

// applyWithRetry runs one batch transaction, retrying infrastructure
// failures up to 10 times (100 ms doubling to 5 s, about 30 s in all).
func (w *Worker) applyWithRetry(ctx context.Context, partition int, pos int64, msgs []kafka.Message, dl *deadLetter) (int64, error) {
	bo := backoff.WithContext(backoff.WithMaxRetries(retry.Policy(5*time.Second), 10), ctx)
	var next int64
	var lastErr error
	err := backoff.RetryNotify(func() error {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attemptTimeout)
		defer cancel()
		n, err := w.applyBatch(actx, partition, pos, msgs, dl)
		if err == nil {
			next = n
			return nil
		}
		lastErr = err
		if errors.Is(err, errFenced) || recordFault(err) {
			return backoff.Permanent(err)
		}
		return err
	}, bo, func(err error, d time.Duration) {
		w.metrics.retries.WithLabelValues("transient").Inc()
		w.setStuck(partition, err)
		w.opts.Log.Warn("batch failed, will retry", "partition", partition, "offset", pos, "records", len(msgs), "err", err, "retry_in", d)
	})
	if err == nil {
		return next, nil
	}
	if ctx.Err() != nil {
		return pos, ctx.Err()
	}
	if errors.Is(lastErr, errFenced) || recordFault(lastErr) {
		return pos, lastErr
	}
	return pos, fmt.Errorf("%w: %w", errRetriesExhausted, lastErr)
}
