package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/internal/kafkafetch"
	"github.com/txpipe/txpipe/internal/retry"
)

// attemptTimeout bounds one transaction attempt. It is not tied to the
// generation's context, so a rebalance lets an in-flight batch finish
// rather than wasting it; the offset fence makes finishing safe.
const attemptTimeout = 20 * time.Second

// kafkaCommitInterval spaces the informational Kafka offset commits.
const kafkaCommitInterval = time.Second

// idleWait is how long a fetch waits at the broker when nothing is pending.
const idleWait = 500 * time.Millisecond

// lane consumes a set of partitions: one fetch request for all of them,
// and transactions that each apply records from any of them. A worker runs
// Options.Lanes lanes, each with its own share of the assigned partitions.
type lane struct {
	w     *Worker
	gen   *kafka.Generation
	all   []int // the lane's partitions
	parts []int // those it fetches: not halted, log checked (offsets.go)
	f     *kafkafetch.Fetcher
	kc    *kafka.Client // reads single records to check a log
	log   *slog.Logger

	pos      positions               // next offset to apply, as stored in PostgreSQL
	fetchPos positions               // next offset to fetch
	pending  map[int][]kafka.Message // fetched, not applied yet, in offset order
	retryAt  map[int]time.Time       // partitions whose fetch failed, left out until then
	rr       int                     // where take starts, for fairness
	halted   map[int]laneHalt        // partitions no worker may fetch until a reset
	suspect  map[int]bool            // partitions whose log must be checked before a fetch (true: the check failed)
	applied  map[int]anchor          // the last record applied of each partition
	anchors  map[int]*anchor         // the anchors stored in PostgreSQL
	checkAt  time.Time               // when check runs next
	anchorAt time.Time               // when check next moves stored anchors
	commit   struct {
		at  time.Time
		pos positions
	} // last Kafka offset commit
}

// runLane consumes parts until the generation ends.
func (w *Worker) runLane(ctx context.Context, gen *kafka.Generation, parts []int) {
	l := &lane{
		w: w, gen: gen, all: parts, parts: slices.Clone(parts),
		f:       kafkafetch.New(w.opts.Brokers, w.opts.Transport, w.opts.CommandsTopic).WithStats(&w.metrics.fetch),
		kc:      &kafka.Client{Addr: kafka.TCP(w.opts.Brokers...), Transport: w.opts.Transport, Timeout: 10 * time.Second},
		log:     w.opts.Log.With("partitions", fmt.Sprint(parts), "generation", gen.ID),
		pending: map[int][]kafka.Message{},
		retryAt: map[int]time.Time{},
		halted:  map[int]laneHalt{},
		suspect: map[int]bool{},
		applied: map[int]anchor{},
		anchors: map[int]*anchor{},
	}
	defer w.setStuck(parts, nil)
	defer func() {
		for _, p := range parts { // another worker reports these now
			w.metrics.lag.DeleteLabelValues(strconv.Itoa(p))
			w.metrics.halted.DeleteLabelValues(strconv.Itoa(p))
			w.metrics.openTxn.DeleteLabelValues(strconv.Itoa(p))
		}
	}()
	if err := l.resume(ctx); err != nil {
		return // the generation ended while PostgreSQL or Kafka was unreachable
	}
	l.log.Info("partitions started", "offsets", fmt.Sprint(l.pos))
	defer l.commitKafka(true)
	l.run(ctx)
}

// run is the lane's loop: check the partitions' rows and logs, fetch,
// apply a batch (or, with nothing to apply, store positions moved past
// transaction markers), and start over from the stored offsets when that
// fails.
func (l *lane) run(ctx context.Context) {
	restart := retry.Policy(5 * time.Second) // paces start-overs after failed rounds
	fetchBackoff := retry.Policy(5 * time.Second)
	for ctx.Err() == nil {
		l.guard(ctx)
		if err := l.guardedFill(ctx); err != nil {
			if ctx.Err() == nil {
				l.fetchFailed(ctx, err, fetchBackoff.NextBackOff())
			}
			continue
		}
		l.distrust()
		fetchBackoff.Reset()
		msgs := l.take(l.w.opts.BatchSize)
		if len(msgs) == 0 {
			if !l.idle(ctx, restart) {
				return
			}
			continue
		}
		switch err := l.apply(ctx, msgs); {
		case err == nil:
			l.w.setStuck(l.healthy(), nil)
			restart.Reset()
		case ctx.Err() != nil:
			return
		case !l.startOver(ctx, err, restart):
			return
		}
	}
}

// idle stores positions moved past transaction markers when nothing is
// pending. When that fails (PostgreSQL unreachable, or the stored offset
// moved), the lane waits a backoff and re-reads the stored offsets. It
// returns false when the generation ended.
func (l *lane) idle(ctx context.Context, restart backoff.BackOff) bool {
	err := l.advanceOverMarkers(ctx)
	if err == nil {
		l.w.setStuck(l.healthy(), nil)
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	l.log.Warn("storing offsets past transaction markers failed; re-reading the stored offsets", "err", err)
	retry.Sleep(ctx, restart.NextBackOff())
	return l.resume(ctx) == nil
}

// fetchFailed leaves every partition out for d after a fetch no broker
// answered, and waits.
func (l *lane) fetchFailed(ctx context.Context, err error, d time.Duration) {
	l.w.setStuck(l.parts, err)
	for _, p := range l.parts {
		l.retryAt[p] = time.Now().Add(d)
	}
	l.distrust()
	l.log.Warn("fetch failed, will retry", "err", err, "retry_in", d)
	retry.Sleep(ctx, d)
}

// apply applies msgs (process) and moves the lane past them.
func (l *lane) apply(ctx context.Context, msgs []kafka.Message) error {
	next, err := l.w.process(ctx, l.pos, msgs, l.log)
	if err != nil {
		return err
	}
	l.advance(next)
	l.remember(msgs)
	l.commitKafka(false)
	return nil
}

// startOver follows a batch that failed, fenced or out of retries:
// PostgreSQL decides where the lane stands, so it re-reads the stored
// offsets, at once when another worker moved them, after a backoff
// otherwise. It returns false when the generation ended meanwhile.
func (l *lane) startOver(ctx context.Context, err error, restart backoff.BackOff) bool {
	l.w.setStuck(l.parts, err)
	if errors.Is(err, ledger.ErrFenced) {
		l.w.metrics.retries.WithLabelValues("fenced").Inc()
		l.log.Warn("stored offset moved under this worker; re-reading it", "err", err)
	} else {
		l.log.Error("batch keeps failing; re-reading the stored offsets and starting over", "err", err)
		retry.Sleep(ctx, restart.NextBackOff())
	}
	return l.resume(ctx) == nil
}

// resume sets every partition's position to the offset stored in
// PostgreSQL, else the start of the log, and forgets what was fetched.
// Kafka's committed offset is not trusted: after a database restore it would
// skip the commands the restore lost, while replaying from the start
// re-applies exactly those (the others are absorbed by processed_commands).
// A stored offset is trusted only for the log it counts in: partitions
// halted stay out, and the others are fetched once checkLogs finds their
// log unchanged (offsets.go).
func (l *lane) resume(ctx context.Context) error {
	bo := backoff.WithContext(retry.Policy(5*time.Second), ctx)
	return backoff.RetryNotify(func() error {
		states, err := l.w.source.States(ctx, l.w.opts.Pool, l.all)
		if err != nil {
			return err
		}
		stored := positions{}
		var unknown []int
		for _, p := range l.all {
			if s, ok := states[p]; ok {
				stored[p] = s.Next
			} else {
				unknown = append(unknown, p)
			}
		}
		if len(unknown) > 0 {
			first, _, err := l.f.Bounds(ctx, unknown)
			if err != nil {
				return err
			}
			maps.Copy(stored, first)
		}
		l.pos, l.fetchPos = stored, maps.Clone(stored)
		clear(l.pending)
		l.restart(states)
		return nil
	}, bo, func(err error, d time.Duration) {
		l.w.setStuck(l.parts, err)
		l.log.Warn("read stored offsets failed, will retry", "err", err, "retry_in", d)
	})
}

// partitionRetry is how long a partition whose fetch failed is left out.
const partitionRetry = time.Second

// healthy lists the lane's partitions whose fetches are not failing.
func (l *lane) healthy() []int {
	var ok []int
	for _, p := range l.parts {
		if _, bad := l.retryAt[p]; !bad {
			ok = append(ok, p)
		}
	}
	return ok
}

// fill fetches more records when fewer than a batch are pending: it waits
// up to idleWait for the first, and once some are pending, up to
// BatchLinger for more. A partition the broker answers with an error is
// left out for partitionRetry (and reported stuck) while the others go on;
// fill fails only when no broker answered at all.
func (l *lane) fill(ctx context.Context) error {
	size, linger := l.w.opts.BatchSize, l.w.opts.BatchLinger
	now := time.Now()
	n, want, wake := l.wanted(now)
	if n >= size || (n > 0 && (len(want) == 0 || linger == 0)) {
		return nil
	}
	if len(want) == 0 {
		retry.Sleep(ctx, time.Until(wake)) // every partition waits to retry
		return nil
	}
	maxWait, minBytes := idleWait, 1
	if n > 0 {
		maxWait, minBytes = linger, kafkafetch.PartitionMaxBytes
	}
	got, err := l.f.Fetch(ctx, want, maxWait, minBytes)
	if err != nil && len(got.HighWater) == 0 && len(got.Errs) == 0 {
		return err // no broker answered
	}
	if err != nil {
		l.log.Warn("fetch from a broker failed; the other partitions go on", "err", err)
	}
	l.keep(got)
	l.fetchErrors(ctx, want, got, err, now)
	return nil
}

// wanted counts the records pending, and lists the partitions to fetch
// (those with less than a batch pending and not waiting to retry) and when
// the first of those waiting may retry.
func (l *lane) wanted(now time.Time) (n int, want positions, wake time.Time) {
	want, wake = positions{}, now.Add(idleWait)
	for _, p := range l.parts {
		n += len(l.pending[p])
		if at, bad := l.retryAt[p]; bad && now.Before(at) {
			if at.Before(wake) {
				wake = at
			}
			continue
		}
		if len(l.pending[p]) < l.w.opts.BatchSize {
			want[p] = l.fetchPos[p]
		}
	}
	return n, want, wake
}

// keep adds what a fetch returned to the pending records, and sets the
// lag of the partitions it answered for.
func (l *lane) keep(got kafkafetch.Result) {
	for p, next := range got.Next {
		// The fetch steps over transaction markers and aborted records, so
		// next may be past the last record returned, or move with none.
		if missing := got.Missing[p]; missing > 0 {
			// Offsets between the fetch position and next that no record
			// holds are gone from the log: those records can be neither
			// applied nor dead-lettered. Say so loudly.
			l.w.metrics.offsetGaps.Add(float64(missing))
			l.log.Error("records missing from the log were skipped", "partition", p, "from_offset", l.fetchPos[p], "to_offset", next, "missing", missing)
		}
		l.pending[p] = append(l.pending[p], got.Msgs[p]...)
		l.fetchPos[p] = next
	}
	for p := range got.HighWater {
		// The last stable offset: records of an open transaction cannot
		// be read yet.
		l.w.metrics.lag.WithLabelValues(strconv.Itoa(p)).Set(float64(max(0, got.LastStable[p]-l.pos[p])))
		l.w.metrics.openTxn.WithLabelValues(strconv.Itoa(p)).Set(float64(max(0, got.HighWater[p]-got.LastStable[p])))
		if _, failed := got.Errs[p]; !failed {
			delete(l.retryAt, p)
		}
	}
}

// fetchErrors leaves out, for partitionRetry, each partition of want the
// fetch failed for (err: the fetch's own error, when some broker did not
// answer), and handles a position out of the log's range.
func (l *lane) fetchErrors(ctx context.Context, want positions, got kafkafetch.Result, err error, now time.Time) {
	for p := range want {
		perr := got.Errs[p]
		if errors.Is(perr, kafka.OffsetOutOfRange) {
			perr = l.outOfRange(ctx, p)
		}
		if _, answered := got.HighWater[p]; perr == nil && !answered && err != nil {
			perr = err // its broker did not answer
		}
		if perr == nil {
			continue
		}
		if _, already := l.retryAt[p]; !already {
			l.log.Warn("partition fetch failed; retrying it alone", "partition", p, "err", perr, "retry_in", partitionRetry)
		}
		l.retryAt[p] = now.Add(partitionRetry)
		l.w.setStuck([]int{p}, fmt.Errorf("fetch: %w", perr))
	}
}

// guardedFill is fill with a panic (a record batch that kafka-go's decoder
// chokes on, say) turned into a fetch failure, logged with its stack:
// the lane retries with backoff and the process lives.
func (l *lane) guardedFill(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			l.w.metrics.panics.Inc()
			l.log.Error("fetch panicked; retrying", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("fetch panicked: %v", r)
		}
	}()
	return l.fill(ctx)
}

// outOfRange handles a fetch position the log no longer (or does not yet)
// hold. Below the log start, retention removed records never applied: they
// are skipped, loudly. Past the end, the topic was recreated or truncated:
// the partition halts, in PostgreSQL, so that nothing is skipped when the
// new log grows past the position, until an operator decides.
func (l *lane) outOfRange(ctx context.Context, p int) error {
	first, next, err := l.f.Bounds(ctx, []int{p})
	if err != nil {
		return err
	}
	from := l.fetchPos[p]
	if from < first[p] {
		l.w.metrics.offsetGaps.Add(float64(first[p] - from))
		l.log.Error("records missing from the log were skipped", "partition", p, "from_offset", from, "to_offset", first[p])
		l.fetchPos[p] = first[p]
		return nil
	}
	reason := fmt.Sprintf("fetch position %d (stored offset %d) is past the end of the log (%d): was the topic recreated or truncated?", from, l.pos[p], next[p])
	return l.halt(ctx, p, ledger.Halt{At: time.Now().UTC(), Reason: reason, LogStart: first[p], LogEnd: next[p]})
}

// take removes up to n pending records for one transaction: a run of
// consecutive records from each partition, visiting partitions from a
// rotating start so that none waits behind a busy one.
func (l *lane) take(n int) []kafka.Message {
	var msgs []kafka.Message
	for i := range l.parts {
		p := l.parts[(l.rr+i)%len(l.parts)]
		k := min(n-len(msgs), len(l.pending[p]))
		msgs = append(msgs, l.pending[p][:k]...)
		if len(msgs) == n {
			break
		}
	}
	l.rr++
	return msgs
}

// advance moves to next after a committed transaction and drops the pending
// records it applied.
func (l *lane) advance(next positions) {
	for p, off := range next {
		l.pos[p] = off
		q := l.pending[p]
		i := 0
		for i < len(q) && q[i].Offset < off {
			i++
		}
		l.pending[p] = q[i:]
	}
}

// commitKafka records the positions in Kafka's group offsets at most once
// a second (always with final). PostgreSQL holds the offsets that matter;
// this only keeps lag tools (kafka-consumer-groups, kcat) truthful, so a
// failure is logged and ignored.
func (l *lane) commitKafka(final bool) {
	if !final && time.Since(l.commit.at) < kafkaCommitInterval {
		return
	}
	changed := map[int]int64{}
	for p, off := range l.pos {
		if old, ok := l.commit.pos[p]; !ok || old != off {
			changed[p] = off
		}
	}
	l.commit.at = time.Now()
	if len(changed) == 0 {
		return
	}
	if err := l.gen.CommitOffsets(map[string]map[int]int64{l.w.opts.CommandsTopic: changed}); err != nil {
		l.log.Debug("commit kafka offsets", "err", err)
		return
	}
	l.commit.pos = maps.Clone(l.pos)
}

// advanceOverMarkers stores, for partitions with nothing pending, a fetch
// position that moved past offsets holding no record to apply (transaction
// markers, aborted records, offsets gone from the log): else a log that ends
// in a commit marker would show a lag of 1 for ever, and tools that wait for
// the stored offset to reach the log's end would wait with it. Fenced like
// a batch: nothing moves unless the stored offset is where this lane
// believes.
func (l *lane) advanceOverMarkers(ctx context.Context) error {
	from, to := positions{}, positions{}
	for _, p := range l.parts {
		if len(l.pending[p]) == 0 && l.fetchPos[p] > l.pos[p] {
			from[p], to[p] = l.pos[p], l.fetchPos[p]
		}
	}
	if len(to) == 0 {
		return nil
	}
	if err := l.w.source.Advance(ctx, l.w.opts.Pool, from, to); err != nil {
		return err
	}
	maps.Copy(l.pos, to)
	return nil
}
