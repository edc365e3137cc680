package consumers

// Whether a stored offset still fits its log, and who may move it.
//
// A stored offset (consumer_offsets.next_offset) counts records of one log.
// When the commands topic is recreated or truncated the number stays and the
// log under it changes: resuming there would skip, silently, every record of
// the new log below it. So before a lane fetches a partition with a stored
// offset (after it resumes, and after a fetch of it failed, which is how a
// deleted topic shows), it checks the log:
//
//   - the stored offset must not lie past the log's end, and
//   - the partition's anchor, a record applied below the stored offset
//     (offset and SHA-256 of key, value and timestamp), must still be in the
//     log at its offset. This recognises a recreated topic whose new log is
//     already longer than the stored offset, which no offset comparison can.
//
// Every checkInterval a lane also re-reads its partitions' rows (to follow
// an operator's reset), and every anchorInterval it makes the last record
// it applied of each partition the new anchor, after finding the previous
// anchor unchanged: a log swapped between two fetches without any fetch
// failing is caught there,
// with the records applied meanwhile replayable by a reset (their commands
// are deduplicated by command_id).
//
// A partition that fails the check is halted in PostgreSQL: no worker, this
// one or one started later, fetches or applies it until an operator decides
// where it resumes with ResetOffset (txpipe offsets reset), which is
// recorded in consumer_offset_resets.
//
// Kafka's topic ID would say "recreated" directly, but kafka-go v0.4.51
// speaks Metadata only up to v8 and Fetch without topic IDs: it never sees
// one.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"golang.org/x/sync/errgroup"

	"github.com/txpipe/txpipe/consumers/ledger"
)

// checkInterval spaces a lane's re-reads of its partitions' rows: how soon
// a reset reaches a running lane. A partition without an anchor gets one at
// the first check after it applied records.
const checkInterval = 2 * time.Second

// anchorInterval spaces the moves of an anchor already stored, each of
// which reads the old anchor's record back from Kafka (a fetch per
// partition) and writes the hot consumer_offsets row: how soon a log
// swapped between two fetches without any fetch failing is caught.
const anchorInterval = 30 * time.Second

// anchor is a record applied below a stored offset: its offset and
// recordHash.
type anchor = ledger.Anchor

func anchorOf(m kafka.Message) anchor {
	return anchor{Offset: m.Offset, Hash: recordHash(m.Key, m.Value, m.Time)}
}

// recordHash identifies a record by its key, value and timestamp (to the
// millisecond, as Kafka keeps it). A recreated topic may hold the same
// command at the same offset only if it was copied record for record,
// timestamps included: then it is the same log.
func recordHash(key, value []byte, t time.Time) []byte {
	h := sha256.New()
	var n [8]byte
	for _, b := range [][]byte{key, value} {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	binary.BigEndian.PutUint64(n[:], uint64(t.UnixMilli()))
	h.Write(n[:])
	return h.Sum(nil)
}

// anchorCheckable says whether a's record must be read to judge the log
// [first, end) under stored offset next: a is known and still in the log,
// and next does not already lie past its end.
func anchorCheckable(next int64, a *anchor, first, end int64) bool {
	return a != nil && next <= end && a.Offset >= first && a.Offset < end
}

// logVerdict judges whether the log [first, end) is the one the stored
// offset next counts in. got is the recordHash of the record now at the
// anchor's offset (nil: none there), read when anchorCheckable. It returns
// why not, or "" when it is, or cannot be told apart (no anchor, or
// retention removed it).
func logVerdict(next int64, a *anchor, first, end int64, got []byte) string {
	switch {
	case next > end:
		return fmt.Sprintf("stored offset %d is past the end of the log (%d): was the topic recreated or truncated?", next, end)
	case !anchorCheckable(next, a, first, end):
		return ""
	case got == nil:
		return fmt.Sprintf("the record applied at offset %d is missing from the log: was the topic recreated?", a.Offset)
	case !bytes.Equal(got, a.Hash):
		return fmt.Sprintf("the log holds another record at offset %d than the one applied there: the topic was recreated (its log now spans %d to %d)", a.Offset, first, end)
	}
	return ""
}

// haltError is what readiness and fetch errors say of a halted partition.
func haltError(p int, h ledger.Halt) error {
	return fmt.Errorf("%w until an operator decides where it resumes (txpipe offsets reset --partition %d): %s", errHalted, p, h.Reason)
}

// errHalted marks the readiness error of a halted partition.
var errHalted = errors.New("halted")

// laneHalt is a halt a lane holds; saved once it is in PostgreSQL.
type laneHalt struct {
	ledger.Halt
	saved bool
}

// recordHashAt reads the record at offset off of partition p and returns its
// recordHash, or nil when the log has no record at off (the first one there
// is later).
func (l *lane) recordHashAt(ctx context.Context, p int, off int64) ([]byte, error) {
	res, err := l.kc.Fetch(ctx, &kafka.FetchRequest{Topic: l.w.opts.CommandsTopic, Partition: p, Offset: off,
		MinBytes: 1, MaxBytes: 1, MaxWait: idleWait}) // the broker returns at least one record batch
	if err == nil {
		err = res.Error
	}
	if err != nil {
		return nil, fmt.Errorf("read record %d of partition %d: %w", off, p, err)
	}
	for {
		r, err := res.Records.ReadRecord()
		if err != nil {
			return nil, fmt.Errorf("read record %d of partition %d: %w", off, p, err) // io.EOF too: nothing came back
		}
		if r.Offset < off {
			continue // earlier in the same record batch
		}
		if r.Offset > off {
			return nil, nil
		}
		key, kerr := readAll(r.Key)
		value, verr := readAll(r.Value)
		if err := errors.Join(kerr, verr); err != nil {
			return nil, fmt.Errorf("read record %d of partition %d: %w", off, p, err)
		}
		return recordHash(key, value, r.Time), nil
	}
}

func readAll(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	defer b.Close()
	return protocol.ReadAll(b)
}

// restart sets the lane's halts, suspects and anchors from the rows just
// read by resume: halted partitions stay out, every other partition with a
// stored offset waits for checkLogs, and those never applied are fetched.
func (l *lane) restart(states map[int]ledger.Stored) {
	clear(l.halted)
	clear(l.suspect)
	clear(l.applied)
	clear(l.anchors)
	l.parts = l.parts[:0:0]
	for _, p := range l.all {
		s, ok := states[p]
		switch {
		case !ok:
			l.parts = append(l.parts, p)
		case s.Halt != nil:
			l.halted[p] = laneHalt{Halt: *s.Halt, saved: true}
		default:
			l.suspect[p] = false
			l.anchors[p] = s.Anchor
		}
	}
	for _, p := range l.all {
		label := strconv.Itoa(p)
		if h, ok := l.halted[p]; ok {
			l.w.metrics.halted.WithLabelValues(label).Set(1)
			l.w.setStuck([]int{p}, haltError(p, h.Halt))
		} else {
			l.w.metrics.halted.WithLabelValues(label).Set(0)
		}
	}
	l.checkAt = time.Now().Add(checkInterval)
}

// guard runs before each fetch: every checkInterval it checks the rows
// (check), and it checks the log of each partition that waits for it
// (checkLogs).
func (l *lane) guard(ctx context.Context) {
	if !time.Now().Before(l.checkAt) {
		l.check(ctx)
		l.checkAt = time.Now().Add(checkInterval)
	}
	l.checkLogs(ctx)
}

// distrust takes the partitions whose fetch just failed out of the fetch
// until checkLogs finds their log unchanged: a failing fetch is how a
// deleted topic shows. What was fetched of them is fetched again.
func (l *lane) distrust() {
	for _, p := range slices.Clone(l.parts) {
		if _, failed := l.retryAt[p]; failed {
			l.suspectPartition(p)
		}
	}
}

func (l *lane) suspectPartition(p int) {
	l.parts = slices.DeleteFunc(l.parts, func(q int) bool { return q == p })
	if _, ok := l.suspect[p]; !ok {
		l.suspect[p] = false
	}
	delete(l.pending, p)
	l.fetchPos[p] = l.pos[p]
}

// checkLogs judges the log of every suspect partition whose retry time has
// come, and returns it to the fetch, halts it, or leaves it out for
// partitionRetry when Kafka cannot tell.
func (l *lane) checkLogs(ctx context.Context) {
	now := time.Now()
	var due []int
	for p := range l.suspect {
		if at, wait := l.retryAt[p]; !wait || !now.Before(at) {
			due = append(due, p)
		}
	}
	if len(due) == 0 {
		return
	}
	slices.Sort(due)
	first, end, err := l.f.Bounds(ctx, due)
	var kerr kafka.Error
	alone := err != nil && len(due) > 1 && errors.As(err, &kerr) // a broker refused one partition
	for _, p := range due {
		f, e, perr := first, end, err
		if alone { // ask alone: one leaderless partition must not hold up the others
			f, e, perr = l.f.Bounds(ctx, []int{p})
		}
		if perr != nil {
			l.checkFailed(p, perr)
			continue
		}
		l.checkLog(ctx, p, f[p], e[p])
	}
}

// checkLog judges partition p's log [first, end) against its stored offset
// and its latest anchor (the last record applied, else the stored one).
func (l *lane) checkLog(ctx context.Context, p int, first, end int64) {
	a := l.anchors[p]
	if last, ok := l.applied[p]; ok {
		a = &last
	}
	next := l.pos[p]
	var got []byte
	if anchorCheckable(next, a, first, end) {
		h, err := l.recordHashAt(ctx, p, a.Offset)
		if err != nil {
			l.checkFailed(p, err)
			return
		}
		got = h
	}
	if reason := logVerdict(next, a, first, end, got); reason != "" {
		_ = l.halt(ctx, p, ledger.Halt{At: time.Now().UTC(), Reason: reason, LogStart: first, LogEnd: end})
		return
	}
	if a == nil && next > first && next <= end {
		// No anchor yet (never saved, or reset): take the record below
		// the stored offset from the log as it is now.
		if h, err := l.recordHashAt(ctx, p, next-1); err == nil && h != nil {
			l.applied[p] = anchor{Offset: next - 1, Hash: h}
		}
	}
	delete(l.suspect, p)
	delete(l.retryAt, p)
	l.parts = append(l.parts, p)
	slices.Sort(l.parts)
}

func (l *lane) checkFailed(p int, err error) {
	if !l.suspect[p] {
		l.log.Warn("cannot check the partition's log before fetching it; retrying", "partition", p, "err", err, "retry_in", partitionRetry)
		l.suspect[p] = true
	}
	l.retryAt[p] = time.Now().Add(partitionRetry)
	l.w.setStuck([]int{p}, fmt.Errorf("check the log before fetching: %w", err))
}

// halt stops partition p: it leaves the fetch, what was fetched of it is
// dropped, and the halt is saved in PostgreSQL (retried by check when that
// fails). It returns the halt as an error.
func (l *lane) halt(ctx context.Context, p int, h ledger.Halt) error {
	l.parts = slices.DeleteFunc(l.parts, func(q int) bool { return q == p })
	delete(l.suspect, p)
	delete(l.pending, p)
	delete(l.applied, p)
	l.fetchPos[p] = l.pos[p]
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	saved, err := l.w.source.SaveHalt(ctx, l.w.opts.Pool, p, l.pos[p], h)
	if err != nil {
		l.log.Warn("save halt failed; will retry", "partition", p, "err", err)
	}
	l.halted[p] = laneHalt{Halt: h, saved: saved}
	l.log.Error("partition halted: its stored offset does not fit the log, and only an operator may decide what to skip (txpipe offsets reset)",
		"partition", p, "stored_offset", l.pos[p], "log_start", h.LogStart, "log_end", h.LogEnd, "reason", h.Reason)
	l.w.metrics.halted.WithLabelValues(strconv.Itoa(p)).Set(1)
	herr := haltError(p, h)
	l.w.setStuck([]int{p}, herr)
	return herr
}

// remember keeps the last record of each partition in msgs, just applied,
// as the partition's next anchor. Only those are hashed.
func (l *lane) remember(msgs []kafka.Message) {
	done := map[int]bool{}
	for i := len(msgs) - 1; i >= 0; i-- {
		if m := msgs[i]; !done[m.Partition] {
			done[m.Partition] = true
			l.applied[m.Partition] = anchorOf(m)
		}
	}
}

// check re-reads the lane's rows. A stored offset or halt changed by
// someone else (an operator's reset, another worker's halt) makes the lane
// start over from what is stored. Otherwise it saves the halts not saved
// yet, and each partition's last applied record becomes its anchor once the
// previous anchor is found unchanged in the log; if it is not, the lane
// applied records of another log since the last check, and the partition
// halts (a reset to the new log's start replays them; their commands are
// deduplicated).
func (l *lane) check(laneCtx context.Context) {
	ctx, cancel := context.WithTimeout(laneCtx, attemptTimeout)
	defer cancel()
	states, err := l.w.source.States(ctx, l.w.opts.Pool, l.all)
	if err != nil {
		l.log.Warn("check stored offsets failed; will retry", "err", err)
		return
	}
	if p, ok := l.changedUnder(states); ok {
		l.log.Info("stored offset or halt changed under this lane; resuming from what is stored", "partition", p)
		_ = l.resume(laneCtx) // fails only when the generation ends
		return
	}
	for p, h := range l.halted {
		if !h.saved {
			if saved, err := l.w.source.SaveHalt(ctx, l.w.opts.Pool, p, l.pos[p], h.Halt); err == nil && saved {
				l.halted[p] = laneHalt{Halt: h.Halt, saved: true}
			}
		}
	}
	moveAnchors := !time.Now().Before(l.anchorAt)
	if moveAnchors {
		l.anchorAt = time.Now().Add(anchorInterval)
	}
	var verify []int
	for p, a := range l.applied {
		if old := states[p].Anchor; moveAnchors && old != nil && old.Offset != a.Offset && slices.Contains(l.parts, p) {
			verify = append(verify, p)
		}
	}
	if len(verify) > 0 && !l.verifyAnchors(ctx, states, verify) {
		return // Kafka cannot tell now; next time
	}
	save := map[int]anchor{}
	for p, a := range l.applied {
		if old := states[p].Anchor; slices.Contains(l.parts, p) && (old == nil || moveAnchors && old.Offset != a.Offset) {
			save[p] = a
		}
	}
	if len(save) == 0 {
		return
	}
	if err := l.w.source.SaveAnchors(ctx, l.w.opts.Pool, save, l.pos); err != nil {
		l.log.Warn("save anchors failed; will retry", "err", err)
		return
	}
	for p, a := range save {
		l.anchors[p] = &a
	}
}

// verifyAnchors reads back, for each partition of parts, the record its
// stored anchor names, and halts the partition when the log no longer
// holds it. It returns false when Kafka could not tell for one of them;
// the others are judged all the same, so a partition whose record cannot
// be read never holds back another's halt. The records are read all at
// once: the lane applies nothing meanwhile, and one fetch after another
// over twelve partitions held it up to 100 ms.
func (l *lane) verifyAnchors(ctx context.Context, states map[int]ledger.Stored, parts []int) bool {
	first, end, err := l.f.Bounds(ctx, parts)
	if err != nil {
		return false
	}
	hashes, unread := make([][]byte, len(parts)), make([]bool, len(parts))
	var g errgroup.Group // no shared cancellation: one failed read does not fail the others
	for i, p := range parts {
		if old := states[p].Anchor; anchorCheckable(l.pos[p], old, first[p], end[p]) {
			g.Go(func() (err error) {
				hashes[i], err = l.recordHashAt(ctx, p, old.Offset)
				unread[i] = err != nil
				return err
			})
		}
	}
	told := g.Wait() == nil
	for i, p := range parts {
		if unread[i] {
			continue // Kafka could not tell: judged at the next move
		}
		old, got := states[p].Anchor, hashes[i]
		if reason := logVerdict(l.pos[p], old, first[p], end[p], got); reason != "" {
			_ = l.halt(ctx, p, ledger.Halt{At: time.Now().UTC(), Reason: reason + "; records of the new log may have been applied since", LogStart: first[p], LogEnd: end[p]})
		}
	}
	return told
}

// changedUnder returns a partition whose row says other than the lane
// believes: halted by another, its halt cleared, or its stored offset moved.
func (l *lane) changedUnder(states map[int]ledger.Stored) (int, bool) {
	for _, p := range l.all {
		s, stored := states[p]
		if !stored {
			continue // never applied: nothing stored to change
		}
		h, halted := l.halted[p]
		switch {
		case s.Halt != nil && !halted,
			s.Halt == nil && halted && h.saved,
			s.Next != l.pos[p]:
			return p, true
		}
	}
	return 0, false
}
