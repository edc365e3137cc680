package consumers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/apikey"
	"github.com/txpipe/txpipe/internal/pgtx"
	"github.com/txpipe/txpipe/internal/sealing"
	"github.com/txpipe/txpipe/outbox"
)

// idleInTransactionTimeout bounds how long a batch's transaction may sit
// idle between its statements: above attemptTimeout, far above the time
// one batch takes to decide.
const idleInTransactionTimeout = `SET LOCAL idle_in_transaction_session_timeout = '30s'`

// errFenced means the partition's stored offset is not where this worker
// believes the partition stands: another worker (or an earlier attempt of
// this one) has moved it. The batch is abandoned, nothing committed.
var errFenced = errors.New("stored offset moved: this worker's position is stale")

// deadLetter sends a record to the DLQ with this reason. bare sends only
// the record, without its dead_lettered outcome: the last resort for a
// record whose dead-lettering itself panicked.
type deadLetter struct {
	reason, detail string
	bare           bool
}

// The DLQ reason of a record the worker panicked on (a bug in txpipe,
// never the sender's fault); the others are domain.Invalid… and
// apply_failed.
const (
	reasonInternalError = "internal_error"
	reasonApplyFailed   = "apply_failed"
)

// batchState is what a batch's decisions read: the stored decisions of
// its command ids, the accounts and transfers it touches (locked), and the
// time of the decisions.
type batchState struct {
	priors map[string]prior
	book   *domain.Book
	loaded map[string]bool // transfers read from the database
	now    time.Time
	// idents are what can be read of the records that go to the DLQ, by
	// index in the batch (identifyDead).
	idents []domain.Identity
}

// prior is the decision stored for a command_id.
type prior struct {
	fingerprint []byte
	status      domain.Status
	reason      domain.Reason
}

// batchWrites accumulates a batch's effects, written in one round trip.
type batchWrites struct {
	touched map[string]bool // accounts whose row changed
	opened  map[string]bool // accounts this batch created
	// sealed is the metadata of accounts this batch created, sealed: the
	// plaintext is never written.
	sealed    map[string]domain.Sealed
	transfers map[string]bool // transfers created or changed
	entries   []entryRow
	processed []processedRow
	dead      []deadRow
	out       []outbox.Message
	counts    map[outcomeKey]int
	replay    bool           // the record being decided came back from the DLQ
	by        string         // the API key that submitted it, if any
	replayed  map[string]int // outcome → replayed records
	misrouted int            // valid commands not keyed by their debit account
}

// count records the outcome of the record being decided.
func (wr *batchWrites) count(outcome, reason string) {
	wr.counts[outcomeKey{outcome, reason}]++
	if wr.replay {
		wr.replayed[outcome]++
	}
}

// HeaderReplayedFrom is the header txpipe dlq replay puts on the records it sends
// back: the DLQ record's partition@offset.
const HeaderReplayedFrom = "replayed_from"

// submittedBy is the API key id ingest put on m, or "" when it has none or
// it is not a key id (the header of a record produced by someone else).
func submittedBy(m kafka.Message) string {
	for _, h := range m.Headers {
		if h.Key == domain.SubmittedByHeader {
			if apikey.ValidID(string(h.Value)) {
				return string(h.Value)
			}
		}
	}
	return ""
}

func isReplay(m kafka.Message) bool {
	for _, h := range m.Headers {
		if h.Key == HeaderReplayedFrom {
			return true
		}
	}
	return false
}

type entryRow struct {
	cmd     domain.Command
	posting domain.Posting
	by      string
}

type processedRow struct {
	cmd         domain.Command
	fingerprint []byte
	res         domain.Result
	acceptedAt  time.Time
	partition   int
	offset      int64
	by          string
}

type outcomeKey struct{ outcome, reason string }

// deadRow is the dead_lettered outcome of a record whose command id could
// be read.
type deadRow struct {
	id             domain.Identity
	reason, detail string
	partition      int
	offset         int64
	by             string
}

func newBatchWrites() *batchWrites {
	return &batchWrites{touched: make(map[string]bool), opened: make(map[string]bool), sealed: make(map[string]domain.Sealed),
		transfers: make(map[string]bool), counts: make(map[outcomeKey]int), replayed: make(map[string]int)}
}

// batchSender runs a batch of statements on one connection.
type batchSender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// positions maps a partition to the offset of its next record to apply.
type positions map[int]int64

// applyBatch applies msgs in one transaction and returns the positions
// after it. msgs hold, for each partition they come from, consecutive
// records in offset order starting at or after pos[partition]; the stored
// offset of each of those partitions must equal pos or nothing commits
// (errFenced). With dl set, every record goes to the DLQ instead (isolating
// a record that cannot be applied). A panic while deciding is returned as a
// *recordPanic, naming its record when it is known, and nothing commits.
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
	var cmds []*domain.Command
	var invalid map[int]deadLetter
	if dl == nil {
		if cmds, invalid, err = decodeAll(msgs); err != nil {
			return pos, err
		}
	}
	idents := identifyDead(msgs, cmds)
	wr := newBatchWrites()
	// load queues BEGIN and write queues COMMIT (internal/pgtx).
	err = pgtx.Run(ctx, w.opts.Pool, func(tx *pgxpool.Conn) error {
		st, err := w.load(ctx, tx, expected, cmds, idents)
		if err != nil {
			return err
		}
		if err := wr.decideAll(w, msgs, cmds, invalid, dl, st); err != nil {
			return err
		}
		return w.write(ctx, tx, next, st, wr)
	})
	if err != nil {
		return pos, err
	}
	elapsed := time.Since(start).Seconds()
	w.metrics.batchSize.Observe(float64(len(msgs)))
	w.metrics.batchDuration.Observe(elapsed)
	for k, n := range wr.counts {
		w.metrics.records.WithLabelValues(k.outcome, k.reason).Add(float64(n))
	}
	for outcome, n := range wr.replayed {
		w.metrics.replayed.WithLabelValues(outcome).Add(float64(n))
	}
	w.metrics.misrouted.Add(float64(wr.misrouted))
	w.metrics.lastProcessed.SetToCurrentTime()
	out := maps.Clone(pos)
	maps.Copy(out, next)
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

// recordPanic is a panic recovered while deciding a batch. index is the
// record being decided (in the batch's msgs), or -1 when no one record was.
type recordPanic struct {
	index int
	value any
	stack []byte
}

func (e *recordPanic) Error() string { return fmt.Sprintf("panic while deciding: %v", e.value) }

// guardRecord runs f, the handling of record i, and returns a panic in it as a
// *recordPanic.
func guardRecord(i int, f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &recordPanic{index: i, value: r, stack: debug.Stack()}
		}
	}()
	f()
	return nil
}

// identifyDead reads what it can of each record that will go to the DLQ
// (cmds[i] nil, or every record when cmds is nil: a batch dead-lettered
// whole), so that load reads any decision stored under its command id.
func identifyDead(msgs []kafka.Message, cmds []*domain.Command) []domain.Identity {
	idents := make([]domain.Identity, len(msgs))
	for i, m := range msgs {
		if cmds == nil || cmds[i] == nil {
			// A panic here only loses the identity: the record still
			// goes to the DLQ, without its dead_lettered outcome.
			_ = guardRecord(i, func() { idents[i] = domain.Identify(m.Value) })
		}
	}
	return idents
}

// decodeAll decodes msgs into commands; the records that are not valid
// commands are left nil in cmds and say why in invalid.
func decodeAll(msgs []kafka.Message) (cmds []*domain.Command, invalid map[int]deadLetter, err error) {
	cmds = make([]*domain.Command, len(msgs))
	for i, m := range msgs {
		err := guardRecord(i, func() {
			cmd, err := domain.DecodeCommand(m.Value)
			if err != nil {
				if invalid == nil {
					invalid = make(map[int]deadLetter)
				}
				reason := domain.InvalidFields
				var verr *domain.ValidationError
				if errors.As(err, &verr) && verr.Kind != "" {
					reason = verr.Kind
				}
				invalid[i] = deadLetter{reason: reason, detail: err.Error()}
				return
			}
			cmds[i] = &cmd
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return cmds, invalid, nil
}

// decideAll decides every record of the batch against the state loaded
// for it, in order: each record's outcome is a pure function of that state
// and the records before it. A panic stops the batch as a *recordPanic
// naming the record; the book may then be half changed, so the batch is
// never written.
func (wr *batchWrites) decideAll(w *Worker, msgs []kafka.Message, cmds []*domain.Command, invalid map[int]deadLetter, dl *deadLetter, st *batchState) error {
	for i, m := range msgs {
		err := guardRecord(i, func() {
			wr.replay, wr.by = isReplay(m), submittedBy(m)
			switch {
			case dl != nil:
				wr.deadLetter(w, m, *dl, st, i)
			case cmds[i] == nil:
				wr.deadLetter(w, m, invalid[i], st, i)
			default:
				wr.command(w, *cmds[i], m, st.priors, st.book, st.now)
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// offsetColumns returns pos as parallel arrays in partition order, the
// order in which a transaction locks consumer_offsets rows.
func offsetColumns(pos positions) (parts []int32, offsets []int64) {
	for _, p := range slices.Sorted(maps.Keys(pos)) {
		parts = append(parts, int32(p))
		offsets = append(offsets, pos[p])
	}
	return parts, offsets
}

// load checks the fence and reads the stored decisions for the batch's
// command ids, then loads and locks what the batch touches in the lock order
// of store.go: the transfers it names, then every account. A batch that
// names no transfer does it all in one round trip; otherwise the accounts
// of the named transfers are known only once those are read, so the
// account locks take a second round trip.
func (w *Worker) load(ctx context.Context, tx batchSender, expected positions, cmds []*domain.Command, idents []domain.Identity) (*batchState, error) {
	var ids, accounts, transfers, currencies []string
	for _, id := range idents {
		if id.CommandID != "" {
			ids = append(ids, id.CommandID) // a decision wins over a dead-lettering
		}
	}
	for _, c := range cmds {
		if c == nil {
			continue
		}
		ids = append(ids, c.CommandID)
		as, ts := domain.Refs(*c)
		accounts = append(accounts, as...)
		transfers = append(transfers, ts...)
		if c.Type == domain.TypeDeposit || c.Type == domain.TypeWithdraw {
			currencies = append(currencies, c.Currency)
		}
	}
	slices.Sort(transfers)
	transfers = slices.Compact(transfers)
	slices.Sort(currencies)
	currencies = slices.Compact(currencies)

	st := &batchState{book: domain.NewBook(), loaded: make(map[string]bool), priors: make(map[string]prior), idents: idents}
	book, loaded, priors := st.book, st.loaded, st.priors
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL READ COMMITTED") // see pgtx; whatever the server's default_transaction_isolation
	// A worker paused between this batch and its COMMIT (SIGSTOP, a frozen
	// VM) would hold its offset and account locks, stalling every other
	// partition that touches those accounts, for as long as the pause:
	// PostgreSQL ends such a session instead. Deciding takes milliseconds.
	b.Queue(idleInTransactionTimeout)
	// One clock decides: every worker takes the time of its decisions (daily
	// limits, expiries, processed_at) from PostgreSQL, not from its host.
	b.Queue(`SELECT now()`).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(&st.now); err != nil {
			return err
		}
		st.now = st.now.UTC()
		return nil
	})
	parts, offsets := offsetColumns(expected)
	b.Queue(`INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
		SELECT $1, $2, p, o FROM unnest($3::int4[], $4::int8[]) AS u (p, o)
		ORDER BY p
		ON CONFLICT DO NOTHING`, w.opts.GroupID, w.opts.CommandsTopic, parts, offsets)
	stored := positions{}
	// A halted partition (offsets.go) reads as missing: fenced, so a
	// zombie that still holds it after a halt applies nothing.
	b.Queue(`SELECT partition, next_offset FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int4[]) AND halted_at IS NULL
		ORDER BY partition FOR UPDATE`,
		w.opts.GroupID, w.opts.CommandsTopic, parts).Query(func(rows pgx.Rows) error { return scanPositions(rows, stored) })
	if len(ids) > 0 {
		b.Queue(`SELECT command_id::text, fingerprint, status, coalesce(reason, '') FROM processed_commands
			WHERE command_id = ANY($1::uuid[])`, ids).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id, status, reason string
				var fp []byte
				if err := rows.Scan(&id, &fp, &status, &reason); err != nil {
					return err
				}
				priors[id] = prior{fingerprint: fp, status: domain.Status(status), reason: domain.Reason(reason)}
			}
			return rows.Err()
		})
	}
	if len(currencies) > 0 {
		// Cheap when the rows exist (no lock is taken on conflict), and
		// right after a restore too, which a cache would not be.
		b.Queue(`INSERT INTO accounts (account_id, currency, status, external)
			SELECT $1 || c, c, 'active', true FROM unnest($2::text[]) AS c
			ON CONFLICT (account_id) DO NOTHING`, domain.ExternalPrefix, currencies)
	}
	if len(transfers) > 0 {
		queueLockTransfers(b, transfers, book, loaded)
	} else if len(accounts) > 0 {
		queueLockAccounts(b, sortedUnique(accounts), book)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load batch state: %w", err)
	}
	for p, want := range expected {
		if got, ok := stored[p]; !ok || got != want {
			return nil, fmt.Errorf("%w (partition %d: stored %d or halted, expected %d)", errFenced, p, got, want)
		}
	}
	if len(transfers) > 0 {
		for _, t := range book.Transfers {
			accounts = append(accounts, t.FromAccountID, t.ToAccountID)
		}
		b := &pgx.Batch{}
		queueLockAccounts(b, sortedUnique(accounts), book)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, fmt.Errorf("lock accounts: %w", err)
		}
	}
	return st, nil
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// command decides one command: a replay of a known command_id has no
// effect, other content under a known id is an idempotency conflict, and a
// new command runs the ledger rules.
func (wr *batchWrites) command(w *Worker, cmd domain.Command, m kafka.Message, priors map[string]prior, book *domain.Book, now time.Time) {
	acceptedAt := domain.RecordTime(m.Time)
	if string(m.Key) != cmd.DebitAccount() {
		wr.misrouted++ // applied all the same: the producer broke the key contract, not the command
	}
	fp := cmd.Fingerprint()
	if p, seen := priors[cmd.CommandID]; seen {
		if bytes.Equal(p.fingerprint, fp) {
			wr.count("duplicate", "")
			return
		}
		res := domain.Result{Status: domain.StatusRejected, Reason: domain.ReasonIdempotencyConflict}
		wr.outcome(w, cmd, res, acceptedAt, now)
		return
	}
	res := book.Apply(cmd, now)
	priors[cmd.CommandID] = prior{fingerprint: fp, status: res.Status, reason: res.Reason}
	wr.processed = append(wr.processed, processedRow{cmd: cmd, fingerprint: fp, res: res, acceptedAt: acceptedAt, partition: m.Partition, offset: m.Offset, by: wr.by})
	if res.Opened != nil {
		wr.opened[res.Opened.ID] = true
	}
	for _, id := range res.Changed {
		wr.touched[id] = true
	}
	if res.Transfer != nil {
		wr.transfers[res.Transfer.ID] = true
	}
	for _, p := range res.Postings {
		wr.entries = append(wr.entries, entryRow{cmd: cmd, posting: p, by: wr.by})
	}
	wr.outcome(w, cmd, res, acceptedAt, now)
	for _, p := range res.Postings {
		ev := domain.NewPostingEvent(uuid.Must(uuid.NewV7()).String(), cmd, p, now)
		ev.SubmittedBy = wr.by
		wr.out = append(wr.out, eventMessage(w.opts.PostingsTopic, p.AccountID, ev, time.Time{}))
	}
}

func (wr *batchWrites) outcome(w *Worker, cmd domain.Command, res domain.Result, acceptedAt, now time.Time) {
	var sealed *domain.Sealed
	if len(cmd.Metadata) > 0 {
		keyID, ct := w.opts.Keyring.Seal(cmd.Metadata, sealing.MetadataAAD(cmd.AccountID))
		sealed = &domain.Sealed{KeyID: keyID, Ciphertext: ct}
		if res.Opened != nil {
			wr.sealed[res.Opened.ID] = *sealed
		}
	}
	ev := domain.NewOutcomeEvent(uuid.Must(uuid.NewV7()).String(), cmd, sealed, res, acceptedAt, now)
	ev.SubmittedBy = wr.by
	wr.out = append(wr.out, eventMessage(w.opts.EventsTopic, cmd.DebitAccount(), ev, acceptedAt))
	wr.count(string(res.Status), string(res.Reason))
}

func eventMessage(topic, key string, ev domain.Event, acceptedAt time.Time) outbox.Message {
	return outbox.Message{
		Topic:      topic,
		Key:        []byte(key),
		Value:      ev.Encode(),
		Headers:    map[string]string{"event_id": ev.EventID, "event_type": ev.Type, "command_id": ev.CommandID},
		AcceptedAt: acceptedAt,
	}
}

// Bounds on a DLQ record, so that with its headers it stays under the
// broker's default 1 MiB limit and the relay's batch (maxBatchBytes) and can
// never be parked: the original value and key are cut beyond them, and a
// header says so; the detail is cut too.
const (
	maxDLQValue  = 900 << 10
	maxDLQKey    = 16 << 10
	maxDLQDetail = 2 << 10
)

// DLQ record headers (docs/operations.md, txpipe dlq list and replay).
const (
	HeaderDLQReason           = "dlq_reason"
	HeaderDLQDetail           = "dlq_detail"
	HeaderDLQAt               = "dlq_at"
	HeaderSourceTopic         = "source_topic"
	HeaderSourcePartition     = "source_partition"
	HeaderSourceOffset        = "source_offset"
	HeaderDLQTruncatedFrom    = "dlq_truncated_from"
	HeaderDLQKeyTruncatedFrom = "dlq_key_truncated_from"
)

// deadLetter queues the original record for the DLQ topic, with headers that
// say why and where it came from and which key submitted it (so a replay
// keeps it). A record with a null value is kept with an empty one; a value
// or key too large to republish is cut, and says so. Unless dl is bare, a
// record whose command id can be read also gets its dead_lettered outcome:
// a row that GET /v1/commands/{id} answers and a command.dead_lettered event.
func (wr *batchWrites) deadLetter(w *Worker, m kafka.Message, dl deadLetter, st *batchState, i int) {
	now := st.now
	detail := headerText(dl.detail, maxDLQDetail)
	value, key := m.Value, m.Key
	if value == nil {
		value = []byte{}
	}
	headers := map[string]string{
		HeaderDLQReason:       dl.reason,
		HeaderDLQDetail:       detail,
		HeaderDLQAt:           now.Format(time.RFC3339Nano),
		HeaderSourceTopic:     m.Topic,
		HeaderSourcePartition: strconv.Itoa(m.Partition),
		HeaderSourceOffset:    strconv.FormatInt(m.Offset, 10),
	}
	if wr.by != "" {
		headers[domain.SubmittedByHeader] = wr.by
	}
	if len(value) > maxDLQValue {
		headers[HeaderDLQTruncatedFrom] = strconv.Itoa(len(value))
		value = value[:maxDLQValue]
	}
	if len(key) > maxDLQKey {
		headers[HeaderDLQKeyTruncatedFrom] = strconv.Itoa(len(key))
		key = key[:maxDLQKey]
	}
	wr.out = append(wr.out, outbox.Message{Topic: w.opts.DLQTopic, Key: key, Value: value, Headers: headers})
	wr.count(OutcomeDLQ, dl.reason)
	if dl.bare {
		return
	}
	var id domain.Identity
	if i < len(st.idents) {
		id = st.idents[i]
	}
	if id.CommandID == "" {
		return
	}
	if _, decided := st.priors[id.CommandID]; decided {
		// A record that reuses the id of a decided command (a conflict,
		// or someone else's id) must not make that command look
		// undecided: the DLQ record says what happened to the record.
		return
	}
	wr.dead = append(wr.dead, deadRow{id: id, reason: dl.reason, detail: detail, partition: m.Partition, offset: m.Offset, by: wr.by})
	ev := domain.NewDeadLetteredEvent(uuid.Must(uuid.NewV7()).String(), id, domain.DeadLetteredData{
		Reason: dl.reason, Detail: detail, SourceTopic: m.Topic, SourcePartition: m.Partition, SourceOffset: m.Offset,
	}, domain.RecordTime(m.Time), now)
	ev.SubmittedBy = wr.by
	eventKey := id.DebitAccountID
	if eventKey == "" {
		eventKey = id.CommandID
	}
	wr.out = append(wr.out, eventMessage(w.opts.EventsTopic, eventKey, ev, domain.RecordTime(m.Time)))
}

// headerText makes s fit a Kafka header, a PostgreSQL text column and a
// JSON string unchanged: valid UTF-8 with no NUL, at most limit bytes
// (cut on a character boundary, marked with …).
func headerText(s string, limit int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= limit {
		return s
	}
	cut := limit - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// write stores the batch's effects and advances the stored offset, in one
// round trip.
func (w *Worker) write(ctx context.Context, tx batchSender, next positions, st *batchState, wr *batchWrites) error {
	book, loaded, now := st.book, st.loaded, st.now
	b := &pgx.Batch{}
	var created, changed []*domain.Account
	for id := range wr.opened {
		created = append(created, book.Accounts[id])
	}
	for id := range wr.touched {
		if !wr.opened[id] {
			changed = append(changed, book.Accounts[id])
		}
	}
	var newTransfers, changedTransfers []*domain.Transfer
	for id := range wr.transfers {
		if loaded[id] {
			changedTransfers = append(changedTransfers, book.Transfers[id])
		} else {
			newTransfers = append(newTransfers, book.Transfers[id])
		}
	}
	if len(created) > 0 {
		queueInsertAccounts(b, created, wr.sealed, now)
	}
	if len(changed) > 0 {
		queueUpdateAccounts(b, changed, now)
	}
	if len(newTransfers) > 0 {
		queueInsertTransfers(b, newTransfers, now)
	}
	if len(changedTransfers) > 0 {
		queueUpdateTransfers(b, changedTransfers, now)
	}
	if len(wr.entries) > 0 {
		queueEntries(b, wr.entries, now)
	}
	if len(wr.processed) > 0 {
		queueProcessed(b, wr.processed, now)
	}
	if len(wr.dead) > 0 {
		queueDeadLettered(b, wr.dead, now)
	}
	outbox.Queue(b, wr.out)
	parts, offsets := offsetColumns(next)
	b.Queue(`UPDATE consumer_offsets AS c SET next_offset = u.o, updated_at = now()
		FROM unnest($3::int4[], $4::int8[]) AS u (p, o)
		WHERE c.group_id = $1 AND c.topic = $2 AND c.partition = u.p`, w.opts.GroupID, w.opts.CommandsTopic, parts, offsets)
	b.Queue("COMMIT") // see pgtx
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write batch effects: %w", err)
	}
	return nil
}

func queueEntries(b *pgx.Batch, rows []entryRow, now time.Time) {
	n := len(rows)
	accounts, commandIDs, types, currencies, by := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	versions, amounts, after := make([]int64, n), make([]int64, n), make([]int64, n)
	for i, r := range rows {
		accounts[i], commandIDs[i], types[i], currencies[i], by[i] = r.posting.AccountID, r.cmd.CommandID, string(r.cmd.Type), r.posting.Currency, r.by
		versions[i], amounts[i], after[i] = r.posting.AccountVersion, r.posting.Amount, r.posting.BalanceAfter
	}
	b.Queue(`INSERT INTO entries (account_id, account_version, command_id, command_type, currency, amount, balance_after, created_at, submitted_by)
		SELECT a, v, c::uuid, t, cur, amt, bal, $8, s
		FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $9::text[]) AS u (a, v, c, t, cur, amt, bal, s)`,
		accounts, versions, commandIDs, types, currencies, amounts, after, now, by)
}

func queueProcessed(b *pgx.Batch, rows []processedRow, now time.Time) {
	n := len(rows)
	ids, types, statuses, reasons, debit, accepted, by := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	fps := make([][]byte, n)
	offsets, partitions := make([]int64, n), make([]int32, n)
	for i, r := range rows {
		ids[i], types[i], statuses[i], reasons[i] = r.cmd.CommandID, string(r.cmd.Type), string(r.res.Status), string(r.res.Reason)
		debit[i], fps[i], offsets[i], partitions[i], by[i] = r.cmd.DebitAccount(), r.fingerprint, r.offset, int32(r.partition), r.by
		if !r.acceptedAt.IsZero() {
			accepted[i] = r.acceptedAt.UTC().Format(time.RFC3339Nano)
		}
	}
	b.Queue(`INSERT INTO processed_commands (command_id, type, fingerprint, status, reason, debit_account_id,
			accepted_at, processed_at, source_partition, source_offset, submitted_by)
		SELECT id::uuid, t, fp, st, nullif(r, ''), d, nullif(acc, '')::timestamptz, $8, p, o, s
		FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[], $9::int4[], $10::int8[], $11::text[])
			WITH ORDINALITY AS u (id, t, fp, st, r, d, acc, p, o, s, n)
		ORDER BY n`,
		ids, types, fps, statuses, reasons, debit, accepted, now, partitions, offsets, by)
}

// queueDeadLettered records the dead_lettered outcome of records whose
// command id could be read; the latest dead-lettering of an id wins. A
// decision in processed_commands, earlier or later, always wins over it
// (the API reads that first).
func queueDeadLettered(b *pgx.Batch, rows []deadRow, now time.Time) {
	n := len(rows)
	ids, types, debit, reasons, details, by := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	partitions, offsets := make([]int32, n), make([]int64, n)
	for i, r := range rows {
		ids[i], types[i], debit[i], reasons[i], details[i], by[i] = r.id.CommandID, string(r.id.Type), r.id.DebitAccountID, r.reason, r.detail, r.by
		partitions[i], offsets[i] = int32(r.partition), r.offset
	}
	// DISTINCT ON keeps one row per id (the last in the batch): ON CONFLICT
	// cannot change one row twice in a statement.
	b.Queue(`INSERT INTO dead_lettered_commands (command_id, type, debit_account_id, reason, detail,
			source_partition, source_offset, submitted_by, dead_lettered_at)
		SELECT DISTINCT ON (id) id::uuid, nullif(t, ''), nullif(d, ''), r, dt, p, o, nullif(s, ''), $9
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[], $8::text[])
			WITH ORDINALITY AS u (id, t, d, r, dt, p, o, s, n)
		ORDER BY id, n DESC
		ON CONFLICT (command_id) DO UPDATE SET type = excluded.type, debit_account_id = excluded.debit_account_id,
			reason = excluded.reason, detail = excluded.detail, source_partition = excluded.source_partition,
			source_offset = excluded.source_offset, submitted_by = excluded.submitted_by, dead_lettered_at = excluded.dead_lettered_at`,
		ids, types, debit, reasons, details, partitions, offsets, by, now)
}
