package consumers

// The decision step: a batch's records and the state loaded for them in,
// the rows and messages to write out. No I/O: it reads only its arguments
// (and draws event ids and sealing nonces), so it is tested without
// services (decide_test.go, FuzzDecide).

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
	"github.com/txpipe/txpipe/outbox"
)

// decider decides batches. Its fields are what the decisions need besides
// the batch: where outcomes are published and the keyring that seals
// account metadata.
type decider struct {
	eventsTopic, postingsTopic, balancesTopic, dlqTopic string
	keyring                                             *sealing.Keyring
}

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

// verdict is a batch's decisions: what to write, and what to count.
type verdict struct {
	writes    ledger.Writes
	counts    map[outcomeKey]int
	replayed  map[string]int // outcome → replayed records
	misrouted int            // valid commands not keyed by their debit account

	// Being decided: what the record comes with, and the rows changed so
	// far (written once each, in id order, by finish).
	replay    bool   // the record came back from the DLQ
	by        string // the API key that submitted it, if any
	touched   map[string]bool
	opened    map[string]bool
	transfers map[string]bool
}

type outcomeKey struct{ outcome, reason string }

// count records the outcome of the record being decided.
func (v *verdict) count(outcome, reason string) {
	v.counts[outcomeKey{outcome, reason}]++
	if v.replay {
		v.replayed[outcome]++
	}
}

// decide decides every record of r against st, in order: each record's
// outcome is a pure function of st and the records before it, and st.Book
// and st.Priors move with them. A panic stops the batch as a *recordPanic
// naming the record; the book may then be half changed, so the verdict is
// never written.
func (d decider) decide(r batchInput, st *ledger.State) (*verdict, error) {
	v := &verdict{counts: make(map[outcomeKey]int), replayed: make(map[string]int),
		touched: make(map[string]bool), opened: make(map[string]bool), transfers: make(map[string]bool)}
	v.writes.AccountMetadata, v.writes.TransferMetadata = make(map[string]domain.Sealed), make(map[string]domain.Sealed)
	for i, m := range r.msgs {
		err := guardRecord(i, func() {
			v.replay, v.by = isReplay(m), submittedBy(m)
			switch {
			case r.dl != nil:
				d.deadLetter(v, m, *r.dl, st, r.idents[i])
			case r.cmds[i] == nil:
				d.deadLetter(v, m, r.invalid[i], st, r.idents[i])
			default:
				d.command(v, *r.cmds[i], m, st, r.scopes[v.by])
			}
		})
		if err != nil {
			return nil, err
		}
	}
	d.finish(v, st)
	return v, nil
}

// finish lists the accounts and transfers the batch changed, in id order,
// and publishes the balance each account is left with.
func (d decider) finish(v *verdict, st *ledger.State) {
	for _, id := range slices.Sorted(maps.Keys(v.touched)) {
		if !v.opened[id] {
			v.writes.Changed = append(v.writes.Changed, st.Book.Accounts[id])
		}
	}
	for _, id := range slices.Sorted(maps.Keys(v.opened)) {
		v.writes.Opened = append(v.writes.Opened, st.Book.Accounts[id])
	}
	v.writes.Outbox = d.balances(v.writes.Outbox, v.writes.Changed, st.Now)
	v.writes.Outbox = d.balances(v.writes.Outbox, v.writes.Opened, st.Now)
	for _, id := range slices.Sorted(maps.Keys(v.transfers)) {
		if st.Loaded[id] {
			v.writes.Updated = append(v.writes.Updated, st.Book.Transfers[id])
		} else {
			v.writes.Created = append(v.writes.Created, st.Book.Transfers[id])
		}
	}
	v.writes.Locked = st.Locked
	v.writes.Now = st.Now
}

// command decides one command: a replay of a known command_id has no
// effect, other content under a known id is an idempotency conflict, a new
// command submitted by a key scoped to accounts (patterns) that does not
// cover every account it moves money from is forbidden, and any other
// runs the ledger rules.
func (d decider) command(v *verdict, cmd domain.Command, m kafka.Message, st *ledger.State, patterns []string) {
	acceptedAt := domain.RecordTime(m.Time)
	if string(m.Key) != cmd.DebitAccount() {
		v.misrouted++ // applied all the same: the producer broke the key contract, not the command
	}
	fp := cmd.Fingerprint()
	if p, seen := st.Priors[cmd.CommandID]; seen {
		if bytes.Equal(p.Fingerprint, fp) {
			v.count("duplicate", "")
			return
		}
		res := domain.Result{Status: domain.StatusRejected, Reason: domain.ReasonIdempotencyConflict}
		d.outcome(v, cmd, res, acceptedAt, st.Now)
		return
	}
	res := domain.Result{Status: domain.StatusRejected, Reason: domain.ReasonForbidden}
	if covers(patterns, cmd, st.Book) {
		res = st.Book.Apply(cmd, st.Now)
	}
	st.Priors[cmd.CommandID] = ledger.Prior{Fingerprint: fp, Status: res.Status, Reason: res.Reason}
	v.writes.Decisions = append(v.writes.Decisions, ledger.Decision{Command: cmd, Fingerprint: fp, Result: res,
		AcceptedAt: acceptedAt, Partition: m.Partition, Offset: m.Offset, SubmittedBy: v.by})
	if res.Opened != nil {
		v.opened[res.Opened.ID] = true
	}
	for _, id := range res.Changed {
		v.touched[id] = true
	}
	if res.Transfer != nil {
		v.transfers[res.Transfer.ID] = true
	}
	for _, p := range res.Postings {
		v.writes.Entries = append(v.writes.Entries, ledger.Entry{Posting: p, CommandID: cmd.CommandID, CommandType: cmd.Type, SubmittedBy: v.by})
	}
	d.outcome(v, cmd, res, acceptedAt, st.Now)
	for _, s := range res.Statements {
		v.writes.Outbox = append(v.writes.Outbox, d.statement(s, st.Now))
	}
	for _, p := range res.Postings {
		ev := domain.NewPostingEvent(uuid.Must(uuid.NewV7()).String(), cmd, p, st.Now)
		ev.SubmittedBy = v.by
		v.writes.Outbox = append(v.writes.Outbox, eventMessage(d.postingsTopic, p.AccountID, ev, time.Time{}))
	}
}

// balances appends to out the balance record of each of accounts.
func (d decider) balances(out []outbox.Message, accounts []*domain.Account, now time.Time) []outbox.Message {
	if d.balancesTopic == "" {
		return out // turned off (docs/events.md)
	}
	for _, a := range accounts {
		out = append(out, BalanceMessage(d.balancesTopic, a, now))
	}
	return out
}

// BalanceMessage is the record of a's balance on the balances topic, as of
// now: keyed by the account, with its CloudEvents attributes.
func BalanceMessage(topic string, a *domain.Account, now time.Time) outbox.Message {
	js, _ := json.Marshal(domain.NewBalance(a)) // strings and integers: cannot fail
	return outbox.Message{Topic: topic, Key: []byte(a.ID), Value: js,
		Headers: map[string]string{outbox.HeaderEventID: uuid.Must(uuid.NewV7()).String(), outbox.HeaderEventType: domain.EventTypeBalance,
			outbox.HeaderEventTime: now.UTC().Format(time.RFC3339Nano)}}
}

// statementSpace is the namespace of statement ids (UUIDv5 of the account
// id and the day).
var statementSpace = uuid.MustParse("5f0c7a8e-3b1d-4d0e-9a47-6f2e1c9b8d30")

// StatementID is the id of the statement of account on day (2006-01-02),
// the command_id of its statement.closed event: the same whichever worker
// closes it, so that it names the statement.
func StatementID(account, day string) string {
	return uuid.NewSHA1(statementSpace, []byte(account+"\x00"+day)).String()
}

// statement is the statement.closed event of s, closed at now, keyed by
// its account.
func (d decider) statement(s domain.Statement, now time.Time) outbox.Message {
	ev := domain.NewStatementEvent(uuid.Must(uuid.NewV7()).String(), StatementID(s.AccountID, s.Day), s, now)
	return eventMessage(d.eventsTopic, s.AccountID, ev, time.Time{})
}

// covers reports whether patterns (a scoped key's; nil: every account)
// cover every account cmd moves money from: its debit accounts, and for a
// reversal the accounts that received the money it takes back (each leg's
// receiver it reverses, for a transaction), which only the loaded transfer
// names. A key may not claw back what it paid to another tenant.
func covers(patterns []string, cmd domain.Command, book *domain.Book) bool {
	if patterns == nil {
		return true
	}
	accounts := cmd.DebitAccounts()
	if t := book.Transfers[cmd.TransferID]; cmd.Type == domain.TypeReverse && t != nil {
		if len(t.Legs) == 0 {
			accounts = append(accounts, t.ToAccountID)
		}
		for i, l := range t.Legs {
			if cmd.LegAmounts == nil || (i < len(cmd.LegAmounts) && cmd.LegAmounts[i] > 0) {
				accounts = append(accounts, l.ToAccountID)
			}
		}
	}
	for _, a := range accounts {
		if !domain.PatternsCover(patterns, a) {
			return false
		}
	}
	return true
}

// outcome publishes the outcome event of cmd, with its metadata sealed
// (and keeps the sealed metadata of an account it opened for its row).
func (d decider) outcome(v *verdict, cmd domain.Command, res domain.Result, acceptedAt, now time.Time) {
	var sealed *domain.Sealed
	if len(cmd.Metadata) > 0 {
		aad := sealing.TransferMetadataAAD(cmd.CommandID) // a money command's: its transfer's
		if cmd.Type == domain.TypeOpenAccount {
			aad = sealing.MetadataAAD(cmd.AccountID)
		}
		keyID, ct := d.keyring.Seal(cmd.Metadata, aad)
		sealed = &domain.Sealed{KeyID: keyID, Ciphertext: ct}
		switch {
		case res.Opened != nil:
			v.writes.AccountMetadata[res.Opened.ID] = *sealed
		case res.Status == domain.StatusApplied && res.Transfer != nil && res.Transfer.ID == cmd.CommandID:
			v.writes.TransferMetadata[res.Transfer.ID] = *sealed // the transfer this command made
		}
	}
	ev := domain.NewOutcomeEvent(uuid.Must(uuid.NewV7()).String(), cmd, sealed, res, acceptedAt, now)
	ev.SubmittedBy = v.by
	v.writes.Outbox = append(v.writes.Outbox, eventMessage(d.eventsTopic, cmd.DebitAccount(), ev, acceptedAt))
	v.count(string(res.Status), string(res.Reason))
}

func eventMessage(topic, key string, ev domain.Event, acceptedAt time.Time) outbox.Message {
	return outbox.Message{
		Topic: topic,
		Key:   []byte(key),
		Value: ev.Encode(),
		Headers: map[string]string{outbox.HeaderEventID: ev.EventID, outbox.HeaderEventType: ev.Type, "command_id": ev.CommandID,
			outbox.HeaderEventTime: ev.OccurredAt.Format(time.RFC3339Nano)},
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

// HeaderReplayedFrom is the header txpipe dlq replay puts on the records it sends
// back: the DLQ record's partition@offset.
const HeaderReplayedFrom = "replayed_from"

// submittedBy is the API key id ingest put on m, or "" when it has none or
// it is not a key id (the header of a record produced by someone else).
func submittedBy(m kafka.Message) string {
	for _, h := range m.Headers {
		if h.Key == domain.SubmittedByHeader {
			if domain.ValidKeyID(string(h.Value)) {
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

// deadLetter queues the original record for the DLQ topic, with headers that
// say why and where it came from and which key submitted it (so a replay
// keeps it). A record with a null value is kept with an empty one; a value
// or key too large to republish is cut, and says so. Unless dl is bare, a
// record whose command id can be read (id) also gets its dead_lettered
// outcome: a row that GET /v1/commands/{id} answers and a
// command.dead_lettered event.
func (d decider) deadLetter(v *verdict, m kafka.Message, dl deadLetter, st *ledger.State, id domain.Identity) {
	detail := headerText(dl.detail, maxDLQDetail)
	v.writes.Outbox = append(v.writes.Outbox, d.dlqRecord(m, dl.reason, detail, v.by, st.Now))
	v.count(OutcomeDLQ, dl.reason)
	if dl.bare || id.CommandID == "" {
		return
	}
	if _, decided := st.Priors[id.CommandID]; decided {
		// A record that reuses the id of a decided command (a conflict,
		// or someone else's id) must not make that command look
		// undecided: the DLQ record says what happened to the record.
		return
	}
	v.writes.DeadLettered = append(v.writes.DeadLettered, ledger.DeadLettered{Identity: id, Reason: dl.reason, Detail: detail,
		Partition: m.Partition, Offset: m.Offset, SubmittedBy: v.by})
	ev := domain.NewDeadLetteredEvent(uuid.Must(uuid.NewV7()).String(), id, domain.DeadLetteredData{
		Reason: dl.reason, Detail: detail, SourceTopic: m.Topic, SourcePartition: m.Partition, SourceOffset: m.Offset,
	}, domain.RecordTime(m.Time), st.Now)
	ev.SubmittedBy = v.by
	eventKey := id.DebitAccountID
	if eventKey == "" {
		eventKey = id.CommandID
	}
	v.writes.Outbox = append(v.writes.Outbox, eventMessage(d.eventsTopic, eventKey, ev, domain.RecordTime(m.Time)))
}

// dlqRecord is m as the DLQ topic gets it.
func (d decider) dlqRecord(m kafka.Message, reason, detail, by string, now time.Time) outbox.Message {
	value, key := m.Value, m.Key
	if value == nil {
		value = []byte{}
	}
	headers := map[string]string{
		HeaderDLQReason:       reason,
		HeaderDLQDetail:       detail,
		HeaderDLQAt:           now.Format(time.RFC3339Nano),
		HeaderSourceTopic:     m.Topic,
		HeaderSourcePartition: strconv.Itoa(m.Partition),
		HeaderSourceOffset:    strconv.FormatInt(m.Offset, 10),
	}
	if by != "" {
		headers[domain.SubmittedByHeader] = by
	}
	if len(value) > maxDLQValue {
		headers[HeaderDLQTruncatedFrom] = strconv.Itoa(len(value))
		value = value[:maxDLQValue]
	}
	if len(key) > maxDLQKey {
		headers[HeaderDLQKeyTruncatedFrom] = strconv.Itoa(len(key))
		key = key[:maxDLQKey]
	}
	return outbox.Message{Topic: d.dlqTopic, Key: key, Value: value, Headers: headers}
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
