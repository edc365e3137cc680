package consumers

// A batch's way through the worker: applyBatch runs one transaction (read
// the records, load their state, decide, write); applyWithRetry retries it
// through infrastructure failures; process splits a batch that fails
// because of a record until that record is alone, and sends it to the DLQ.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/internal/pgtx"
	"github.com/txpipe/txpipe/internal/retry"
)

// positions maps a partition to the offset of its next record to apply.
type positions = ledger.Positions

// process applies msgs from pos and returns the positions after them. An
// infrastructure failure retries the whole batch; a batch that fails
// because of a record (recordFault) is split until that record is alone,
// and it goes to the DLQ while its neighbours apply. A panic that names its
// record splits the batch around it at once; other record faults halve it.
// Splits keep each partition's records in order: msgs holds a run per
// partition, so a prefix of msgs is a prefix of every run.
func (w *Worker) process(ctx context.Context, pos positions, msgs []kafka.Message, log *slog.Logger) (positions, error) {
	if len(msgs) == 0 {
		return pos, nil
	}
	next, err := w.applyWithRetry(ctx, pos, msgs, nil)
	if err == nil || errors.Is(err, ledger.ErrFenced) || errors.Is(err, errRetriesExhausted) || ctx.Err() != nil {
		return next, err
	}
	w.metrics.retries.WithLabelValues("split").Inc()
	if len(msgs) == 1 {
		return w.deadLetterOne(ctx, pos, msgs[0], err, log)
	}
	var rp *recordPanic
	if errors.As(err, &rp) && rp.index >= 0 && rp.index < len(msgs) {
		i := rp.index
		for _, part := range [][]kafka.Message{msgs[:i], msgs[i : i+1]} {
			if pos, err = w.process(ctx, pos, part, log); err != nil {
				return pos, err
			}
		}
		return w.process(ctx, pos, msgs[i+1:], log)
	}
	mid := len(msgs) / 2
	if pos, err = w.process(ctx, pos, msgs[:mid], log); err != nil {
		return pos, err
	}
	return w.process(ctx, pos, msgs[mid:], log)
}

// deadLetterOne sends m, a record whose batch failed because of it (cause),
// to the DLQ. A panic is logged here with its stack, once per record, and
// counted; if dead-lettering the record fails because of it too (a panic, a
// value the database refuses), the record goes to the DLQ bare, without its
// dead_lettered outcome, so the partition goes on.
func (w *Worker) deadLetterOne(ctx context.Context, pos positions, m kafka.Message, cause error, log *slog.Logger) (positions, error) {
	dl := &deadLetter{reason: reasonApplyFailed, detail: publicDetail(cause)}
	var rp *recordPanic
	switch {
	case errors.As(cause, &rp):
		dl = &deadLetter{reason: reasonInternalError, detail: "txpipe failed on this record (a bug, not the sender's fault); the worker's log has the stack"}
		w.metrics.panics.Inc()
		log.Error("record made the worker panic; sending it to the DLQ", "partition", m.Partition, "offset", m.Offset,
			"panic", fmt.Sprint(rp.value), "stack", string(rp.stack))
	case lockBroken(cause):
		dl = &deadLetter{reason: reasonInternalError, detail: "txpipe wrote outside the rows it had locked for this record (a bug in txpipe, not the sender's fault): " + publicDetail(cause)}
		log.Error("the batch wrote outside the rows it had locked; sending the record to the DLQ", "partition", m.Partition, "offset", m.Offset, "err", cause)
	default:
		log.Error("record cannot be applied; sending it to the DLQ", "partition", m.Partition, "offset", m.Offset, "err", cause)
	}
	msgs := []kafka.Message{m}
	next, err := w.applyWithRetry(ctx, pos, msgs, dl)
	if recordFault(err) {
		// Its dead_lettered row or event is what fails (a panic, or a
		// value the database refuses): the record alone still goes.
		if errors.As(err, &rp) {
			log.Error("dead-lettering the record panicked; sending it to the DLQ bare", "partition", m.Partition, "offset", m.Offset,
				"panic", fmt.Sprint(rp.value), "stack", string(rp.stack))
		} else {
			log.Error("dead-lettering the record failed; sending it to the DLQ bare", "partition", m.Partition, "offset", m.Offset, "err", err)
		}
		dl.bare = true
		next, err = w.applyWithRetry(ctx, pos, msgs, dl)
	}
	return next, err
}

// errRetriesExhausted ends one round of retries of an infrastructure
// failure; the lane then starts over from the stored offsets, so a
// PostgreSQL outage never sends good records to the DLQ.
var errRetriesExhausted = errors.New("transient failures: retries exhausted")

// applyWithRetry runs one batch transaction, retrying infrastructure
// failures up to 10 times (100 ms doubling to 5 s, about 30 s in all).
func (w *Worker) applyWithRetry(ctx context.Context, pos positions, msgs []kafka.Message, dl *deadLetter) (positions, error) {
	bo := backoff.WithContext(backoff.WithMaxRetries(retry.Policy(5*time.Second), 10), ctx)
	var next positions
	var lastErr error
	parts := batchPartitions(msgs)
	err := backoff.RetryNotify(func() error {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attemptTimeout)
		defer cancel()
		n, err := w.applyBatch(actx, pos, msgs, dl)
		if err == nil {
			next = n
			return nil
		}
		lastErr = err
		if errors.Is(err, ledger.ErrFenced) || recordFault(err) {
			return backoff.Permanent(err)
		}
		return err
	}, bo, func(err error, d time.Duration) {
		w.metrics.retries.WithLabelValues("transient").Inc()
		w.setStuck(parts, err)
		w.opts.Log.Warn("batch failed, will retry", "partitions", fmt.Sprint(parts), "records", len(msgs), "err", err, "retry_in", d)
	})
	if err == nil {
		return next, nil
	}
	if ctx.Err() != nil {
		return pos, ctx.Err()
	}
	if errors.Is(lastErr, ledger.ErrFenced) || recordFault(lastErr) {
		return pos, lastErr
	}
	return pos, fmt.Errorf("%w: %w", errRetriesExhausted, lastErr)
}

// batchPartitions lists the partitions msgs come from, in order.
func batchPartitions(msgs []kafka.Message) []int {
	var parts []int
	for _, m := range msgs {
		parts = append(parts, m.Partition)
	}
	slices.Sort(parts)
	return slices.Compact(parts)
}

// applyBatch applies msgs in one transaction and returns the positions
// after it. msgs hold, for each partition they come from, consecutive
// records in offset order starting at or after pos[partition]; the stored
// offset of each of those partitions must equal pos or nothing commits
// (ledger.ErrFenced). With dl set, every record goes to the DLQ instead. A
// panic while deciding is returned as a *recordPanic, naming its record
// when it is known, and nothing commits.
func (w *Worker) applyBatch(ctx context.Context, pos positions, msgs []kafka.Message, dl *deadLetter) (_ positions, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &recordPanic{index: -1, value: r, stack: debug.Stack()}
		}
	}()
	start := time.Now()
	next, expected, err := batchPositions(pos, msgs)
	if err != nil {
		return pos, err
	}
	recs, err := readBatch(msgs, dl)
	if err != nil {
		return pos, err
	}
	if recs.scopes, err = w.scopesOf(ctx, msgs); err != nil {
		return pos, err
	}
	var v *verdict
	// Load queues BEGIN and Write queues COMMIT (internal/pgtx).
	err = pgtx.Run(ctx, w.opts.Pool, func(tx *pgxpool.Conn) error {
		st, err := w.source.Load(ctx, tx, recs.loadRequest(expected))
		if err != nil {
			return err
		}
		if st.ClockRaised {
			w.metrics.clockRaised.Inc()
		}
		if v, err = w.decider.decide(recs, st); err != nil {
			return err
		}
		v.writes.Next = next
		return w.source.Write(ctx, tx, &v.writes)
	})
	if err != nil {
		return pos, err
	}
	w.metrics.observeBatch(v, len(msgs), time.Since(start))
	out := maps.Clone(pos)
	maps.Copy(out, next)
	return out, nil
}

// scopesOf reads the account patterns of the scoped API keys msgs claim
// (through Options.Scopes, which caches them); an error is transient.
func (w *Worker) scopesOf(ctx context.Context, msgs []kafka.Message) (map[string][]string, error) {
	if w.opts.Scopes == nil {
		return nil, nil
	}
	var out map[string][]string
	seen := map[string]bool{}
	for _, m := range msgs {
		id := submittedBy(m)
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		patterns, err := w.opts.Scopes.Accounts(ctx, id)
		if err != nil {
			return nil, err
		}
		if patterns != nil {
			if out == nil {
				out = map[string][]string{}
			}
			out[id] = patterns
		}
	}
	return out, nil
}

// batchPositions returns, for the partitions msgs come from, the position
// after them and the position the stored offset must hold now.
func batchPositions(pos positions, msgs []kafka.Message) (next, expected positions, err error) {
	next = positions{}
	for _, m := range msgs {
		if _, ok := next[m.Partition]; !ok {
			if _, ok := pos[m.Partition]; !ok {
				return nil, nil, fmt.Errorf("record of partition %d, whose position is unknown", m.Partition)
			}
		}
		next[m.Partition] = m.Offset + 1
	}
	expected = positions{}
	for p := range next {
		expected[p] = pos[p]
	}
	return next, expected, nil
}
