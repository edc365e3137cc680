package consumers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/apikey"
	"github.com/txpipe/txpipe/internal/pgtx"
	"github.com/txpipe/txpipe/internal/sealing"
	"github.com/txpipe/txpipe/internal/uuidv7"
	"github.com/txpipe/txpipe/outbox"
)

// errFenced means the partition's stored offset is not where this worker
// believes the partition stands: another worker (or an earlier attempt of
// this one) has moved it. The batch is abandoned, nothing committed.
var errFenced = errors.New("stored offset moved: this worker's position is stale")

// deadLetter forces every record of a batch to the DLQ with this reason.
type deadLetter struct{ reason, detail string }

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
	out       []outbox.Message
	counts    map[outcomeKey]int
	replay    bool           // the record being decided came back from the DLQ
	by        string         // the API key that submitted it, if any
	replayed  map[string]int // outcome → replayed records
}

// count records the outcome of the record being decided.
func (wr *batchWrites) count(outcome, reason string) {
	wr.counts[outcomeKey{outcome, reason}]++
	if wr.replay {
		wr.replayed[outcome]++
	}
}

// replayedFrom is the header txpipe dlq replay puts on the records it sends
// back: the DLQ record's partition@offset.
const replayedFrom = "replayed_from"

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
		if h.Key == replayedFrom {
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
// a record that cannot be applied).
func (w *Worker) applyBatch(ctx context.Context, pos positions, msgs []kafka.Message, dl *deadLetter) (positions, error) {
	start := time.Now()
	now := start.UTC()
	next := positions{}
	for _, m := range msgs {
		if _, ok := next[m.Partition]; !ok {
			if _, ok := pos[m.Partition]; !ok {
				return nil, fmt.Errorf("record of partition %d, whose position is unknown", m.Partition)
			}
		}
		next[m.Partition] = m.Offset + 1
	}
	expected := positions{}
	for p := range next {
		expected[p] = pos[p]
	}
	cmds := make([]*domain.Command, len(msgs))
	var invalid map[int]deadLetter
	if dl == nil {
		for i, m := range msgs {
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
				continue
			}
			cmds[i] = &cmd
		}
	}
	wr := batchWrites{touched: make(map[string]bool), opened: make(map[string]bool), sealed: make(map[string]domain.Sealed), transfers: make(map[string]bool), counts: make(map[outcomeKey]int), replayed: make(map[string]int)}
	// load queues BEGIN and write queues COMMIT (internal/pgtx).
	err := pgtx.Run(ctx, w.opts.Pool, func(tx *pgxpool.Conn) error {
		priors, book, loaded, err := w.load(ctx, tx, expected, cmds)
		if err != nil {
			return err
		}
		for i, m := range msgs {
			wr.replay, wr.by = isReplay(m), submittedBy(m)
			switch {
			case dl != nil:
				wr.deadLetter(w, m, dl.reason, dl.detail, now)
			case cmds[i] == nil:
				wr.deadLetter(w, m, invalid[i].reason, invalid[i].detail, now)
			default:
				wr.command(w, *cmds[i], m, priors, book, now)
			}
		}
		return w.write(ctx, tx, next, book, loaded, &wr, now)
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
	w.metrics.lastProcessed.SetToCurrentTime()
	out := maps.Clone(pos)
	maps.Copy(out, next)
	return out, nil
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
func (w *Worker) load(ctx context.Context, tx batchSender, expected positions, cmds []*domain.Command) (map[string]prior, *domain.Book, map[string]bool, error) {
	var ids, accounts, transfers, currencies []string
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

	book := domain.NewBook()
	loaded := make(map[string]bool)
	b := &pgx.Batch{}
	b.Queue("BEGIN") // see pgtx
	parts, offsets := offsetColumns(expected)
	b.Queue(`INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
		SELECT $1, $2, p, o FROM unnest($3::int4[], $4::int8[]) AS u (p, o)
		ORDER BY p
		ON CONFLICT DO NOTHING`, w.opts.GroupID, w.opts.CommandsTopic, parts, offsets)
	stored := positions{}
	b.Queue(`SELECT partition, next_offset FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2 AND partition = ANY($3::int4[])
		ORDER BY partition FOR UPDATE`,
		w.opts.GroupID, w.opts.CommandsTopic, parts).Query(func(rows pgx.Rows) error { return scanPositions(rows, stored) })
	priors := make(map[string]prior)
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
		return nil, nil, nil, fmt.Errorf("load batch state: %w", err)
	}
	for p, want := range expected {
		if got, ok := stored[p]; !ok || got != want {
			return nil, nil, nil, fmt.Errorf("%w (partition %d: stored %d, expected %d)", errFenced, p, got, want)
		}
	}
	if len(transfers) > 0 {
		for _, t := range book.Transfers {
			accounts = append(accounts, t.FromAccountID, t.ToAccountID)
		}
		b := &pgx.Batch{}
		queueLockAccounts(b, sortedUnique(accounts), book)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, nil, nil, fmt.Errorf("lock accounts: %w", err)
		}
	}
	return priors, book, loaded, nil
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// command decides one command: a replay of a known command_id has no
// effect, other content under a known id is an idempotency conflict, and a
// new command runs the ledger rules.
func (wr *batchWrites) command(w *Worker, cmd domain.Command, m kafka.Message, priors map[string]prior, book *domain.Book, now time.Time) {
	fp := cmd.Fingerprint()
	if p, seen := priors[cmd.CommandID]; seen {
		if bytes.Equal(p.fingerprint, fp) {
			wr.count("duplicate", "")
			return
		}
		res := domain.Result{Status: domain.StatusRejected, Reason: domain.ReasonIdempotencyConflict}
		wr.outcome(w, cmd, res, m.Time, now)
		return
	}
	res := book.Apply(cmd, now)
	priors[cmd.CommandID] = prior{fingerprint: fp, status: res.Status, reason: res.Reason}
	wr.processed = append(wr.processed, processedRow{cmd: cmd, fingerprint: fp, res: res, acceptedAt: m.Time, partition: m.Partition, offset: m.Offset, by: wr.by})
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
	wr.outcome(w, cmd, res, m.Time, now)
	for _, p := range res.Postings {
		ev := domain.NewPostingEvent(uuidv7.New(), cmd, p, now)
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
	ev := domain.NewOutcomeEvent(uuidv7.New(), cmd, sealed, res, acceptedAt, now)
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

// maxDLQValue bounds the copy of a record kept for the DLQ, so the DLQ
// record (with its headers) stays under the broker's default 1 MiB limit and
// can never block the relay.
const maxDLQValue = 900 << 10

// deadLetter queues the original record for the DLQ topic, with headers that
// say why and where it came from. A record with a null value is kept with an
// empty one; a record too large to republish is cut, and says so.
func (wr *batchWrites) deadLetter(w *Worker, m kafka.Message, reason, detail string, now time.Time) {
	value := m.Value
	if value == nil {
		value = []byte{}
	}
	headers := map[string]string{
		"dlq_reason":       reason,
		"dlq_detail":       detail,
		"dlq_at":           now.Format(time.RFC3339Nano),
		"source_topic":     m.Topic,
		"source_partition": strconv.Itoa(m.Partition),
		"source_offset":    strconv.FormatInt(m.Offset, 10),
	}
	if len(value) > maxDLQValue {
		headers["dlq_truncated_from"] = strconv.Itoa(len(value))
		value = value[:maxDLQValue]
	}
	wr.out = append(wr.out, outbox.Message{Topic: w.opts.DLQTopic, Key: m.Key, Value: value, Headers: headers})
	wr.count("dlq", reason)
}

// write stores the batch's effects and advances the stored offset, in one
// round trip.
func (w *Worker) write(ctx context.Context, tx batchSender, next positions, book *domain.Book, loaded map[string]bool, wr *batchWrites, now time.Time) error {
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
