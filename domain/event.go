package domain

import (
	"encoding/json"
	"time"
)

// Event is the envelope of every record on ledger.events.v1 and
// ledger.postings.v1. EventID is unique per event and stays the same when the
// relay publishes the event again, so consumers dedupe on it.
type Event struct {
	EventID    string    `json:"event_id"`
	Type       string    `json:"type"`
	CommandID  string    `json:"command_id"`
	OccurredAt time.Time `json:"occurred_at"`
	// SubmittedBy is the id of the API key that submitted the command;
	// empty for records produced straight to the commands topic.
	SubmittedBy string          `json:"submitted_by,omitempty"`
	Data        json.RawMessage `json:"data"`
}

// SubmittedByHeader carries, on a command record, the id of the API key
// that submitted it. The workers copy it into the command's rows and events;
// a record produced straight to Kafka by anyone else has none.
const SubmittedByHeader = "txpipe_submitted_by"

// KeyIDLen is the length of an API key's id: hex digits.
const KeyIDLen = 16

// ValidKeyID reports whether id has the shape of an API key's id, the only
// value SubmittedByHeader may carry into a command's rows and events.
func ValidKeyID(id string) bool {
	if len(id) != KeyIDLen {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// EventTypePosting is the type of every event on the postings topic.
const EventTypePosting = "posting.created"

// OutcomeType is the event type of a command's outcome, e.g. "transfer.applied"
// or "deposit.rejected".
func OutcomeType(t Type, s Status) string { return string(t) + "." + string(s) }

// OutcomeData is the data of an outcome event: what was asked, what happened,
// and the postings it made, so one event explains the whole command.
type OutcomeData struct {
	CommandType Type   `json:"command_type"`
	Status      Status `json:"status"`
	Reason      Reason `json:"reason,omitempty"`
	// Leg is the index of the transaction leg a rejection is about.
	Leg      *int            `json:"leg,omitempty"`
	Command  json.RawMessage `json:"command"`
	Postings []PostingData   `json:"postings"`
	// Transfer is the state, after this command, of the transfer or hold
	// it created or changed.
	Transfer *TransferData `json:"transfer,omitempty"`
	// AcceptedAt is when ingest had the command acknowledged by Kafka (the
	// record's timestamp), for end-to-end latency.
	AcceptedAt *time.Time `json:"accepted_at,omitempty"`
}

// PostingData is the data of a posting event: one change of one account.
// AccountVersion is contiguous per account starting at 1, and BalanceAfter is
// the balance once this posting applied, so the postings topic alone rebuilds
// every balance and shows any gap.
type PostingData struct {
	AccountID      string `json:"account_id"`
	AccountVersion int64  `json:"account_version"`
	Currency       string `json:"currency"`
	Amount         int64  `json:"amount"`
	BalanceAfter   int64  `json:"balance_after"`
	CommandType    Type   `json:"command_type"`
	// Reference is the reference of the transfer this posting moves money
	// for; absent when it has none.
	Reference string `json:"reference,omitempty"`
	// Digest chains the account's postings (PostingDigest).
	Digest string `json:"digest"`
}

// Sealed is a value encrypted at rest (domain/sealing): the id of the key
// that sealed it and the sealed bytes, base64 in JSON.
type Sealed struct {
	KeyID      string `json:"key_id"`
	Ciphertext []byte `json:"ciphertext"`
}

// shownCommand is a command as its outcome event shows it: as sent, except
// its metadata, which may hold personal data and is shown only sealed. The
// outer Metadata field shadows the command's and is always empty, so no
// outcome event carries the plaintext. (A record dead-lettered keeps its
// original bytes, so that it can be replayed: docs/security.md.)
type shownCommand struct {
	Command
	Metadata       json.RawMessage `json:"metadata,omitempty"`
	MetadataSealed *Sealed         `json:"metadata_sealed,omitempty"`
}

// NewOutcomeEvent builds the outcome event of cmd. For an idempotency
// conflict, cmd is the command as delivered, not the one first applied.
// sealedMetadata is cmd's metadata sealed, shown in its place; nil when cmd
// has none.
func NewOutcomeEvent(eventID string, cmd Command, sealedMetadata *Sealed, res Result, acceptedAt, now time.Time) Event {
	data := OutcomeData{
		CommandType: cmd.Type,
		Status:      res.Status,
		Reason:      res.Reason,
		Leg:         res.Leg,
		Command:     mustJSON(shownCommand{Command: cmd, MetadataSealed: sealedMetadata}),
		Postings:    make([]PostingData, 0, len(res.Postings)),
	}
	if !acceptedAt.IsZero() {
		t := acceptedAt.UTC()
		data.AcceptedAt = &t
	}
	for _, p := range res.Postings {
		data.Postings = append(data.Postings, postingData(cmd.Type, p))
	}
	if res.Transfer != nil {
		td := NewTransferData(res.Transfer)
		data.Transfer = &td
	}
	return Event{
		EventID:    eventID,
		Type:       OutcomeType(cmd.Type, res.Status),
		CommandID:  cmd.CommandID,
		OccurredAt: now.UTC(),
		Data:       data.encode(),
	}
}

// encode is d's JSON, as json.Marshal writes it but for one scan less:
// encoding/json compacts again whatever a json.Marshaler (Command, a
// json.RawMessage) returns, so the command, already compact, is spliced in
// between the fields before it and those after it.
func (d OutcomeData) encode() json.RawMessage {
	head := mustJSON(outcomeHead{CommandType: d.CommandType, Status: d.Status, Reason: d.Reason, Leg: d.Leg})
	tail := mustJSON(outcomeTail{Postings: d.Postings, Transfer: d.Transfer, AcceptedAt: d.AcceptedAt})
	out := make([]byte, 0, len(head)+len(d.Command)+len(tail)+16)
	out = append(out, head[:len(head)-1]...) // without its "}"
	out = append(out, `,"command":`...)
	out = appendRaw(out, d.Command)
	out = append(out, ',')
	return append(out, tail[1:]...) // without its "{"
}

// outcomeHead and outcomeTail are OutcomeData's fields before and after
// Command, in its order (TestOutcomeEncodingIsJSONMarshal holds them to
// it). Neither is ever the empty object: command_type, status and
// postings are never omitted.
type outcomeHead struct {
	CommandType Type   `json:"command_type"`
	Status      Status `json:"status"`
	Reason      Reason `json:"reason,omitempty"`
	Leg         *int   `json:"leg,omitempty"`
}

type outcomeTail struct {
	Postings   []PostingData `json:"postings"`
	Transfer   *TransferData `json:"transfer,omitempty"`
	AcceptedAt *time.Time    `json:"accepted_at,omitempty"`
}

// appendRaw appends raw, JSON that mustJSON made (compact, valid), or null
// when it is empty, as json.RawMessage encodes.
func appendRaw(out []byte, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return append(out, "null"...)
	}
	return append(out, raw...)
}

// TransferData describes a transfer, deposit, withdrawal or hold and where
// it stands; GET /v1/transfers/{id} answers it too.
type TransferData struct {
	TransferID     string         `json:"transfer_id"`
	Kind           TransferKind   `json:"kind"`
	FromAccountID  string         `json:"from_account_id"`
	ToAccountID    string         `json:"to_account_id"`
	Currency       string         `json:"currency"`
	Amount         int64          `json:"amount"`
	CapturedAmount int64          `json:"captured_amount"`
	ReversedAmount int64          `json:"reversed_amount"`
	Status         TransferStatus `json:"status"`
	ExpiresAt      *time.Time     `json:"expires_at,omitempty"`
	Reference      string         `json:"reference,omitempty"`
	// Fee is what the debit account paid on top of amount under its fee
	// plan; absent when none.
	Fee int64 `json:"fee,omitempty"`
	// Legs are a transaction's legs (its row's fields describe the first).
	Legs []LegData `json:"legs,omitempty"`
}

// LegData describes one leg of a transaction.
type LegData struct {
	Leg
	Fee            int64 `json:"fee,omitempty"`
	ReversedAmount int64 `json:"reversed_amount"`
}

// NewTransferData describes t.
func NewTransferData(t *Transfer) TransferData {
	return TransferData{
		TransferID: t.ID, Kind: t.Kind, FromAccountID: t.FromAccountID, ToAccountID: t.ToAccountID,
		Currency: t.Currency, Amount: t.Amount, CapturedAmount: t.CapturedAmount, ReversedAmount: t.ReversedAmount,
		Status: t.Status, ExpiresAt: t.ExpiresAt, Reference: t.Reference, Fee: t.Fee, Legs: legData(t.Legs),
	}
}

func legData(legs []TransferLeg) []LegData {
	if legs == nil {
		return nil
	}
	out := make([]LegData, len(legs))
	for i, l := range legs {
		out[i] = LegData{Leg: l.Leg, Fee: l.Fee, ReversedAmount: l.ReversedAmount}
	}
	return out
}

// EventTypeHoldExpired is the type of the event the expirer publishes when a
// hold runs out; its command_id is the hold's.
const EventTypeHoldExpired = "hold.expired"

// ExpiryData is the data of a hold.expired event.
type ExpiryData struct {
	Hold TransferData `json:"hold"`
}

// NewExpiryEvent builds the event of hold t expiring at now.
func NewExpiryEvent(eventID string, t *Transfer, now time.Time) Event {
	return Event{
		EventID:    eventID,
		Type:       EventTypeHoldExpired,
		CommandID:  t.ID,
		OccurredAt: now.UTC(),
		Data:       mustJSON(ExpiryData{Hold: NewTransferData(t)}),
	}
}

// NewPostingEvent builds the event of one posting made by cmd.
func NewPostingEvent(eventID string, cmd Command, p Posting, now time.Time) Event {
	return Event{
		EventID:    eventID,
		Type:       EventTypePosting,
		CommandID:  cmd.CommandID,
		OccurredAt: now.UTC(),
		Data:       mustJSON(postingData(cmd.Type, p)),
	}
}

func postingData(t Type, p Posting) PostingData {
	return PostingData{
		AccountID:      p.AccountID,
		AccountVersion: p.AccountVersion,
		Currency:       p.Currency,
		Amount:         p.Amount,
		BalanceAfter:   p.BalanceAfter,
		CommandType:    t,
		Reference:      p.Reference,
		Digest:         p.Digest,
	}
}

// Encode returns the event's JSON, as json.Marshal writes it but without
// scanning Data again: every Event is built here, its Data by mustJSON or
// OutcomeData.encode, compact and valid already.
func (e Event) Encode() []byte {
	head := mustJSON(eventHead{EventID: e.EventID, Type: e.Type, CommandID: e.CommandID,
		OccurredAt: e.OccurredAt.Format(time.RFC3339Nano), SubmittedBy: e.SubmittedBy})
	out := make([]byte, 0, len(head)+len(e.Data)+16)
	out = append(out, head[:len(head)-1]...) // without its "}"
	out = append(out, `,"data":`...)
	out = appendRaw(out, e.Data)
	return append(out, '}')
}

// eventHead is Event without Data, in its order; OccurredAt as
// time.Time's MarshalJSON writes it.
type eventHead struct {
	EventID     string `json:"event_id"`
	Type        string `json:"type"`
	CommandID   string `json:"command_id"`
	OccurredAt  string `json:"occurred_at"`
	SubmittedBy string `json:"submitted_by,omitempty"`
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the plain structs of this file reach here.
		panic("encode event: " + err.Error())
	}
	return b
}

// EventTypeDeadLettered is the type of the event published when a record
// whose command_id can be read goes to the DLQ.
const EventTypeDeadLettered = "command.dead_lettered"

// DeadLetteredData is the data of a command.dead_lettered event: why the
// record went to the DLQ and where it came from. CommandType is set when
// the record names a known command type.
type DeadLetteredData struct {
	Status          Status     `json:"status"` // always StatusDeadLettered
	Reason          string     `json:"reason"`
	Detail          string     `json:"detail"`
	CommandType     Type       `json:"command_type,omitempty"`
	SourceTopic     string     `json:"source_topic"`
	SourcePartition int        `json:"source_partition"`
	SourceOffset    int64      `json:"source_offset"`
	AcceptedAt      *time.Time `json:"accepted_at,omitempty"`
}

// NewDeadLetteredEvent builds the event of the record identified by id
// going to the DLQ. acceptedAt is the record's time (RecordTime), zero when
// unknown.
func NewDeadLetteredEvent(eventID string, id Identity, data DeadLetteredData, acceptedAt, now time.Time) Event {
	data.Status = StatusDeadLettered
	data.CommandType = id.Type
	if !acceptedAt.IsZero() {
		t := acceptedAt.UTC()
		data.AcceptedAt = &t
	}
	return Event{
		EventID:    eventID,
		Type:       EventTypeDeadLettered,
		CommandID:  id.CommandID,
		OccurredAt: now.UTC(),
		Data:       mustJSON(data),
	}
}

// EventTypeStatementClosed is the type of the event that closes an
// account's statement of a UTC day (statement.go); its command_id is the
// statement's id, the same whichever worker closed it.
const EventTypeStatementClosed = "statement.closed"

// StatementData is the data of a statement.closed event. The period is
// [PeriodStart, PeriodEnd): one UTC day. OpeningBalance + Credits - Debits
// = ClosingBalance; Entries postings, versions FirstVersion to
// LastVersion, the last with digest LastDigest. Debits and Credits are
// integers that may exceed 2^63.
type StatementData struct {
	AccountID      string    `json:"account_id"`
	Currency       string    `json:"currency"`
	PeriodStart    time.Time `json:"period_start"`
	PeriodEnd      time.Time `json:"period_end"`
	OpeningBalance int64     `json:"opening_balance"`
	ClosingBalance int64     `json:"closing_balance"`
	Debits         Sum       `json:"debits"`
	Credits        Sum       `json:"credits"`
	Entries        int64     `json:"entries"`
	FirstVersion   int64     `json:"first_version"`
	LastVersion    int64     `json:"last_version"`
	LastDigest     string    `json:"last_digest"`
}

// NewStatementEvent builds the event of statement s, whose id is
// statementID, closed at now.
func NewStatementEvent(eventID, statementID string, s Statement, now time.Time) Event {
	start, _ := time.Parse(time.DateOnly, s.Day) // a day the rules wrote
	return Event{
		EventID:    eventID,
		Type:       EventTypeStatementClosed,
		CommandID:  statementID,
		OccurredAt: now.UTC(),
		Data: mustJSON(StatementData{AccountID: s.AccountID, Currency: s.Currency,
			PeriodStart: start, PeriodEnd: start.AddDate(0, 0, 1),
			OpeningBalance: s.Opening, ClosingBalance: s.Closing, Debits: s.Debits, Credits: s.Credits,
			Entries: s.Entries(), FirstVersion: s.FirstVersion, LastVersion: s.LastVersion, LastDigest: s.LastDigest}),
	}
}

// EventTypeBalance is the type (in its CloudEvents headers) of every record
// of the balances topic.
const EventTypeBalance = "balance.updated"

// Balance is a record of the log-compacted balances topic, keyed by
// account: the account's balance after the batch that last changed it.
// Version is its count of postings; a hold changes Available without a
// posting, so two records may share a version: per account, the later
// record is the newer.
type Balance struct {
	AccountID string `json:"account_id"`
	Currency  string `json:"currency"`
	Balance   int64  `json:"balance"`
	Available int64  `json:"available"`
	Version   int64  `json:"version"`
}

// NewBalance is a's balance record.
func NewBalance(a *Account) Balance {
	return Balance{AccountID: a.ID, Currency: a.Currency, Balance: a.Balance, Available: a.Available(), Version: a.Version}
}
