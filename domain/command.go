// Package domain holds txpipe's commands, their strict validation, the ledger
// rules that turn a command and the current account state into an outcome, and
// the events that describe outcomes. It imports only the standard library and
// does no I/O: every function here is a pure computation that the ingest API,
// the workers and the tests share.
package domain

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Type names a command.
type Type string

// The command types of the contract (docs/api.md, docs/ledger.md).
const (
	TypeOpenAccount     Type = "open_account"
	TypeDeposit         Type = "deposit"
	TypeWithdraw        Type = "withdraw"
	TypeTransfer        Type = "transfer"
	TypeHold            Type = "hold"
	TypeCapture         Type = "capture"
	TypeRelease         Type = "release"
	TypeReverse         Type = "reverse"
	TypeFreezeAccount   Type = "freeze_account"
	TypeUnfreezeAccount Type = "unfreeze_account"
	TypeCloseAccount    Type = "close_account"
	TypeTransaction     Type = "transaction"
	TypeSetFeePlan      Type = "set_fee_plan"
)

// Limits on command fields.
const (
	// MaxAmount is the largest amount a command may carry: 2^53-1, so that
	// every amount survives a round trip through a JavaScript number.
	MaxAmount = 9007199254740991
	// MaxMetadataBytes bounds a command's metadata object.
	MaxMetadataBytes = 4096
	// MaxReferenceLen bounds a money command's reference.
	MaxReferenceLen = 128
	// MaxCommandBytes bounds one encoded command, on the API and on Kafka.
	MaxCommandBytes = 64 << 10
	maxAccountIDLen = 64
)

// Command is one decoded, validated command. Its JSON encoding (Encode) is the
// value of a record on the commands topic.
type Command struct {
	CommandID       string          `json:"command_id"`
	Type            Type            `json:"type"`
	AccountID       string          `json:"account_id,omitempty"`
	FromAccountID   string          `json:"from_account_id,omitempty"`
	ToAccountID     string          `json:"to_account_id,omitempty"`
	Amount          int64           `json:"amount,omitempty"`
	Currency        string          `json:"currency,omitempty"`
	OverdraftLimit  int64           `json:"overdraft_limit,omitempty"`
	DailyDebitLimit int64           `json:"daily_debit_limit,omitempty"`
	Metadata        json.RawMessage `json:"metadata,omitempty"`
	HoldID          string          `json:"hold_id,omitempty"`
	TransferID      string          `json:"transfer_id,omitempty"`
	ExpiresAt       *time.Time      `json:"expires_at,omitempty"`
	// Reference is the sender's business reference of a money command (an
	// order or invoice number): unique among applied money commands.
	Reference string `json:"reference,omitempty"`
	// AmountMode is AmountUpTo for a withdraw or transfer that moves what
	// the debit account can spend, at most Amount; "" moves Amount exactly
	// ("exact" is decoded as "").
	AmountMode string `json:"amount_mode,omitempty"`
	// ExpectedVersion, when set, is the version the debit account must
	// still have (its number of postings) for the command to apply.
	ExpectedVersion *int64 `json:"expected_version,omitempty"`
	// SweepToAccountID is where close_account moves the remaining balance.
	SweepToAccountID string `json:"sweep_to_account_id,omitempty"`
	// Legs are a transaction's movements, applied all or nothing, in order.
	Legs []Leg `json:"legs,omitempty"`
	// LegAmounts reverses a transaction leg by leg (0: leave a leg alone).
	LegAmounts []int64 `json:"leg_amounts,omitempty"`
	// FeePlan is what set_fee_plan sets; nil (null or absent) removes it.
	FeePlan *FeePlan `json:"fee_plan,omitempty"`
}

// FeePlan is the fee an account pays on what it sends (FeePlan.Fee),
// posted to RevenueAccountID.
type FeePlan struct {
	// Bps is the proportional part, in basis points (0–10000).
	Bps int64 `json:"bps"`
	// Fixed is added to every fee, in minor units.
	Fixed int64 `json:"fixed"`
	// Min and Max bound the fee when set.
	Min              *int64 `json:"min,omitempty"`
	Max              *int64 `json:"max,omitempty"`
	RevenueAccountID string `json:"revenue_account_id"`
}

// Fee is the fee on amount: fixed + amount × bps / 10 000 rounded half up,
// then raised to min and lowered to max where the plan sets them, and never
// above MaxAmount (so that every fee survives a JavaScript number, as every
// amount does). Exact in int64 for every amount up to MaxAmount: amount is
// split so that no product exceeds 2^53 × 10^4 / 10^4.
func (p FeePlan) Fee(amount int64) int64 {
	q, r := amount/10000, amount%10000
	fee := p.Fixed + q*p.Bps + (r*p.Bps+5000)/10000
	if p.Min != nil && fee < *p.Min {
		fee = *p.Min
	}
	if p.Max != nil && fee > *p.Max {
		fee = *p.Max
	}
	return min(fee, MaxAmount)
}

// Leg is one movement of a transaction.
type Leg struct {
	FromAccountID string `json:"from_account_id"`
	ToAccountID   string `json:"to_account_id"`
	Amount        int64  `json:"amount"`
	Currency      string `json:"currency"`
}

// MaxLegs bounds a transaction's legs.
const MaxLegs = 64

// AmountUpTo is the amount_mode that moves what can be moved, at most the
// command's amount.
const AmountUpTo = "up_to"

// spec says which fields a command type takes. Fields absent from both lists
// are refused, so a typo never silently drops an intent.
type spec struct {
	required []string
	optional []string
}

var specs = map[Type]spec{
	TypeOpenAccount:     {required: []string{"account_id", "currency"}, optional: []string{"overdraft_limit", "daily_debit_limit", "metadata"}},
	TypeDeposit:         {required: []string{"account_id", "amount", "currency"}, optional: moneyOptional},
	TypeWithdraw:        {required: []string{"account_id", "amount", "currency"}, optional: append([]string{"amount_mode", "expected_version"}, moneyOptional...)},
	TypeTransfer:        {required: []string{"from_account_id", "to_account_id", "amount", "currency"}, optional: append([]string{"amount_mode", "expected_version"}, moneyOptional...)},
	TypeHold:            {required: []string{"from_account_id", "to_account_id", "amount", "currency"}, optional: append([]string{"expires_at", "expected_version"}, moneyOptional...)},
	TypeCapture:         {required: []string{"account_id", "hold_id"}, optional: []string{"amount"}},
	TypeRelease:         {required: []string{"account_id", "hold_id"}},
	TypeReverse:         {required: []string{"account_id", "transfer_id"}, optional: []string{"amount", "leg_amounts"}},
	TypeFreezeAccount:   {required: []string{"account_id"}},
	TypeUnfreezeAccount: {required: []string{"account_id"}},
	TypeCloseAccount:    {required: []string{"account_id"}, optional: []string{"sweep_to_account_id"}},
	TypeTransaction:     {required: []string{"legs"}, optional: moneyOptional},
	TypeSetFeePlan:      {required: []string{"account_id"}, optional: []string{"fee_plan"}},
}

// moneyOptional are the fields every command that moves or reserves money
// may carry: the sender's reference and metadata, kept with its transfer.
var moneyOptional = []string{"reference", "metadata"}

// Types lists every command type in a stable order.
func Types() []Type {
	ts := make([]Type, 0, len(specs))
	for t := range specs {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// FieldError is one problem with one part of a command, located by a JSON
// pointer (RFC 6901) relative to the command object.
type FieldError struct {
	Pointer string `json:"pointer"`
	Detail  string `json:"detail"`
}

// Why a command was refused, in the words of a DLQ record's dlq_reason and
// the consumer metrics' reason label.
const (
	InvalidTooLarge    = "too_large"       // over MaxCommandBytes
	InvalidMalformed   = "malformed"       // not a single JSON object
	InvalidUnknownType = "unknown_type"    // a type that is no command type
	InvalidFields      = "invalid_command" // fields missing, unknown, of the wrong type or out of range
)

// ValidationError lists everything wrong with a command. Its messages are
// written for the client: they never contain Go or driver error strings.
type ValidationError struct {
	// Kind is the broad reason: one of the Invalid… constants.
	Kind   string
	Errors []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		parts[i] = fe.Detail // the whole document
		if fe.Pointer != "" {
			parts[i] = fe.Pointer + ": " + fe.Detail
		}
	}
	return "invalid command: " + strings.Join(parts, "; ")
}

func (e *ValidationError) add(pointer, format string, args ...any) {
	e.Errors = append(e.Errors, FieldError{Pointer: pointer, Detail: fmt.Sprintf(format, args...)})
}

// DecodeCommand parses and validates one command strictly: the input must be a
// single JSON object with no duplicate, unknown or misplaced fields, no
// trailing data, and values of the right type and range. Both the ingest API
// and the workers use it, so a record produced straight to Kafka is held to the
// same rules as an HTTP request. The error is a *ValidationError.
func DecodeCommand(data []byte) (Command, error) {
	verr := &ValidationError{Kind: InvalidTooLarge}
	if len(data) > MaxCommandBytes {
		verr.add("", "command is larger than %d bytes", MaxCommandBytes)
		return Command{}, verr
	}
	verr.Kind = InvalidMalformed
	if !utf8.Valid(data) {
		verr.add("", "is not valid UTF-8")
		return Command{}, verr
	}
	fields, order, ok := splitObject(data, verr)
	if !ok {
		return Command{}, verr
	}
	verr.Kind = InvalidFields
	if problem := textProblem(data); problem != "" {
		// Checked on the whole document, so that it covers field names and
		// nested metadata alike, and no NUL ever reaches a pointer.
		verr.add("", "%s", problem)
		return Command{}, verr
	}
	var cmd Command
	rawType, ok := fields["type"]
	if !ok {
		verr.add("/type", "is required")
		return Command{}, verr
	}
	typ, ok := unquote(rawType)
	if !ok {
		verr.add("/type", "must be a string")
		return Command{}, verr
	}
	cmd.Type = Type(typ)
	sp, known := specs[cmd.Type]
	if !known {
		verr.Kind = InvalidUnknownType
		verr.add("/type", "unknown command type %q", truncate(typ, 40))
		return Command{}, verr
	}
	allowed := map[string]bool{"command_id": true, "type": true}
	for _, f := range sp.required {
		allowed[f] = true
	}
	for _, f := range sp.optional {
		allowed[f] = true
	}
	for _, name := range order {
		if !allowed[name] {
			verr.add(pointer(name), "is not a field of a %s command", cmd.Type)
		}
	}
	for _, name := range append([]string{"command_id"}, sp.required...) {
		if _, ok := fields[name]; !ok {
			verr.add(pointer(name), "is required")
		}
	}
	for _, name := range order {
		if allowed[name] && name != "type" {
			decodeField(&cmd, name, fields[name], verr)
		}
	}
	if cmd.Type == TypeHold && cmd.ExpiresAt != nil && !cmd.ExpiresAt.After(time.Unix(0, 0)) {
		verr.add("/expires_at", "must be a time after 1970-01-01T00:00:00Z")
	}
	if len(verr.Errors) > 0 {
		return Command{}, verr
	}
	return cmd, nil
}

// splitObject reads a single JSON object into its raw members, keeping the
// order in which names appear, and refusing duplicates and trailing data.
// A valid object goes by scanObject; anything else by splitStrictly, which
// says what is wrong.
func splitObject(data []byte, verr *ValidationError) (map[string]json.RawMessage, []string, bool) {
	if fields, order, ok := scanObject(data); ok {
		return fields, order, true
	}
	return splitStrictly(data, verr)
}

// scanObject splits data into its members when data is one valid JSON
// object whose names are distinct, and returns false otherwise. It
// checks the syntax with json.Valid and then finds each name and value in
// one pass over the bytes, which need no checking any more: json.Decoder's
// tokens, which splitStrictly reads, were a fifth of the worker's CPU.
// The values alias data.
func scanObject(data []byte) (map[string]json.RawMessage, []string, bool) {
	if !json.Valid(data) {
		return nil, nil, false
	}
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return nil, nil, false
	}
	fields := make(map[string]json.RawMessage, 8)
	order := make([]string, 0, 8)
	i = skipSpace(data, i+1)
	if data[i] == '}' {
		return fields, order, true
	}
	for {
		end := stringEnd(data, i) // data[i] is the name's quote
		name, ok := unquote(data[i:end])
		if !ok {
			return nil, nil, false
		}
		i = skipSpace(data, skipSpace(data, end)+1) // past the colon
		end = valueEnd(data, i)
		if _, dup := fields[name]; dup {
			return nil, nil, false
		}
		fields[name] = data[i:end:end]
		order = append(order, name)
		i = skipSpace(data, end)
		if data[i] == '}' {
			return fields, order, true
		}
		i = skipSpace(data, i+1) // past the comma
	}
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace (len(data) if none).
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the JSON string that starts at
// data[i]. It checks no bound: data must have passed json.Valid, as in
// scanObject, which guarantees the closing quote (and so for valueEnd).
func stringEnd(data []byte, i int) int {
	for j := i + 1; ; j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
}

// valueEnd returns the index just past the valid JSON value that starts at
// data[i].
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return stringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; ; j++ {
			switch data[j] {
			case '"':
				j = stringEnd(data, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
	}
	j := i // a number, true, false or null
	for j < len(data) && !strings.ContainsRune(",}] \t\n\r", rune(data[j])) {
		j++
	}
	return j
}

// unquote reads raw, a valid JSON value, as a string; false when it is
// not one. A string of valid UTF-8 without escapes is its bytes between
// the quotes; the rest go through encoding/json, so null is "" and an
// invalid byte U+FFFD as json.Unmarshal has them.
func unquote(raw []byte) (string, bool) {
	if len(raw) >= 2 && raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	return s, json.Unmarshal(raw, &s) == nil
}

// splitStrictly is splitObject by json.Decoder's tokens, for data that
// scanObject turned down: it says where the problem is.
func splitStrictly(data []byte, verr *ValidationError) (map[string]json.RawMessage, []string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		verr.add("", "must be a JSON object")
		return nil, nil, false
	}
	fields := make(map[string]json.RawMessage)
	var order []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			verr.add("", "is not valid JSON")
			return nil, nil, false
		}
		name, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			verr.add(pointer(name), "is not valid JSON")
			return nil, nil, false
		}
		if _, dup := fields[name]; dup {
			verr.add(pointer(name), "appears more than once")
			return nil, nil, false
		}
		fields[name] = raw
		order = append(order, name)
	}
	if _, err := dec.Token(); err != nil {
		verr.add("", "is not valid JSON")
		return nil, nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		verr.add("", "has data after the command object")
		return nil, nil, false
	}
	return fields, order, true
}

// nestedObject is splitObject for an object inside a command (a leg, a fee
// plan) at pointer p: as strict, its errors located under p.
func nestedObject(raw json.RawMessage, p string, verr *ValidationError) (map[string]json.RawMessage, []string, bool) {
	sub := &ValidationError{}
	fields, order, ok := splitObject(raw, sub)
	for _, fe := range sub.Errors {
		verr.add(p+fe.Pointer, "%s", fe.Detail)
	}
	return fields, order, ok
}

func decodeField(cmd *Command, name string, raw json.RawMessage, verr *ValidationError) {
	p := pointer(name)
	switch name {
	case "command_id":
		cmd.CommandID = decodeUUID(raw, p, verr)
	case "account_id":
		cmd.AccountID = decodeAccountID(raw, p, verr)
	case "from_account_id":
		cmd.FromAccountID = decodeAccountID(raw, p, verr)
	case "to_account_id":
		cmd.ToAccountID = decodeAccountID(raw, p, verr)
	case "hold_id":
		cmd.HoldID = decodeUUID(raw, p, verr)
	case "transfer_id":
		cmd.TransferID = decodeUUID(raw, p, verr)
	case "amount":
		cmd.Amount = decodeInt(raw, p, 1, verr)
	case "overdraft_limit":
		cmd.OverdraftLimit = decodeInt(raw, p, 0, verr)
	case "daily_debit_limit":
		cmd.DailyDebitLimit = decodeInt(raw, p, 1, verr)
	case "currency":
		cmd.Currency = decodeCurrency(raw, p, verr)
	case "metadata":
		md, ok := canonicalObject(raw)
		switch {
		case !ok:
			verr.add(p, "must be a JSON object")
		case len(md) > MaxMetadataBytes:
			verr.add(p, "must be at most %d bytes", MaxMetadataBytes)
		case !finiteNumbers(raw):
			verr.add(p, "must hold only numbers that a 64-bit floating point value can represent (|x| < 1.8e308, not below 1e-307 unless 0)")
		default:
			cmd.Metadata = md
		}
	case "legs":
		cmd.Legs = decodeLegs(raw, p, verr)
	case "fee_plan":
		cmd.FeePlan = decodeFeePlan(raw, p, verr)
	case "leg_amounts":
		cmd.LegAmounts = decodeLegAmounts(raw, p, verr)
	case "sweep_to_account_id":
		cmd.SweepToAccountID = decodeAccountID(raw, p, verr)
	case "expected_version":
		if v := decodeInt(raw, p, 0, verr); !verrAt(verr, p) {
			cmd.ExpectedVersion = &v
		}
	case "amount_mode":
		s, ok := unquote(raw)
		switch {
		case !ok:
			verr.add(p, "must be a string")
		case s == "exact":
		case s == AmountUpTo:
			cmd.AmountMode = AmountUpTo
		default:
			verr.add(p, "must be \"exact\" or \"up_to\"")
		}
	case "reference":
		if s, ok := unquote(raw); !ok {
			verr.add(p, "must be a string")
		} else if !ValidReference(s) {
			verr.add(p, "must be 1 to %d printable ASCII characters", MaxReferenceLen)
		} else {
			cmd.Reference = s
		}
	case "expires_at":
		s, ok := unquote(raw)
		if !ok {
			verr.add(p, "must be an RFC 3339 time string")
			return
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			verr.add(p, "must be an RFC 3339 time such as \"2026-01-02T15:04:05Z\"")
			return
		}
		// PostgreSQL keeps microseconds: the command holds what is stored.
		t = t.UTC().Truncate(time.Microsecond)
		if reason := storableTime(t); reason != "" {
			verr.add(p, "%s", reason)
			return
		}
		cmd.ExpiresAt = &t
	}
}

// decodeLegs reads a transaction's legs: a JSON array of 1 to MaxLegs
// objects, each with exactly from_account_id, to_account_id, amount and
// currency, held to the rules of the same fields of a transfer.
func decodeLegs(raw json.RawMessage, p string, verr *ValidationError) []Leg {
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		verr.add(p, "must be an array of legs")
		return nil
	}
	if len(items) == 0 || len(items) > MaxLegs {
		verr.add(p, "must hold 1 to %d legs", MaxLegs)
		return nil
	}
	legs := make([]Leg, len(items))
	for i, item := range items {
		lp := fmt.Sprintf("%s/%d", p, i)
		fields, order, ok := nestedObject(item, lp, verr)
		if !ok {
			continue
		}
		for _, name := range order {
			switch name {
			case "from_account_id":
				legs[i].FromAccountID = decodeAccountID(fields[name], lp+pointer(name), verr)
			case "to_account_id":
				legs[i].ToAccountID = decodeAccountID(fields[name], lp+pointer(name), verr)
			case "amount":
				legs[i].Amount = decodeInt(fields[name], lp+pointer(name), 1, verr)
			case "currency":
				legs[i].Currency = decodeCurrency(fields[name], lp+pointer(name), verr)
			default:
				verr.add(lp+pointer(name), "is not a field of a leg")
			}
		}
		for _, name := range []string{"from_account_id", "to_account_id", "amount", "currency"} {
			if _, ok := fields[name]; !ok {
				verr.add(lp+pointer(name), "is required")
			}
		}
	}
	return legs
}

// decodeFeePlan reads set_fee_plan's plan: null, or an object with bps
// (0–10000), fixed, revenue_account_id and optional min and max (min ≤
// max), nothing else.
func decodeFeePlan(raw json.RawMessage, p string, verr *ValidationError) *FeePlan {
	if string(raw) == "null" {
		return nil
	}
	fields, order, ok := nestedObject(raw, p, verr)
	if !ok {
		return nil
	}
	plan := &FeePlan{}
	for _, name := range order {
		fp := p + pointer(name)
		switch name {
		case "bps":
			if plan.Bps = decodeInt(fields[name], fp, 0, verr); plan.Bps > 10000 {
				verr.add(fp, "must be between 0 and 10000 (basis points)")
			}
		case "fixed":
			plan.Fixed = decodeInt(fields[name], fp, 0, verr)
		case "min":
			v := decodeInt(fields[name], fp, 0, verr)
			plan.Min = &v
		case "max":
			v := decodeInt(fields[name], fp, 0, verr)
			plan.Max = &v
		case "revenue_account_id":
			plan.RevenueAccountID = decodeAccountID(fields[name], fp, verr)
		default:
			verr.add(fp, "is not a field of a fee plan")
		}
	}
	for _, name := range []string{"bps", "fixed", "revenue_account_id"} {
		if _, ok := fields[name]; !ok {
			verr.add(p+pointer(name), "is required")
		}
	}
	if plan.Min != nil && plan.Max != nil && *plan.Min > *plan.Max {
		verr.add(p+"/min", "must not be above max")
	}
	return plan
}

// decodeLegAmounts reads a reversal's amounts per leg: 1 to MaxLegs JSON
// integers from 0 to MaxAmount, not all 0.
func decodeLegAmounts(raw json.RawMessage, p string, verr *ValidationError) []int64 {
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil || len(items) == 0 || len(items) > MaxLegs {
		verr.add(p, "must be an array of 1 to %d integers", MaxLegs)
		return nil
	}
	out := make([]int64, len(items))
	some := false
	for i, item := range items {
		out[i] = decodeInt(item, fmt.Sprintf("%s/%d", p, i), 0, verr)
		some = some || out[i] > 0
	}
	if !some {
		verr.add(p, "must reverse something: at least one amount above 0")
	}
	return out
}

// verrAt reports whether verr holds an error at pointer p.
func verrAt(verr *ValidationError, p string) bool {
	for _, fe := range verr.Errors {
		if fe.Pointer == p {
			return true
		}
	}
	return false
}

// canonicalObject re-encodes a JSON object with sorted keys, no spaces and
// numbers kept digit for digit. Re-encoding also replaces invalid UTF-16
// escapes (a lone surrogate) with U+FFFD, which PostgreSQL's jsonb would
// otherwise refuse after the API had accepted the command.
func canonicalObject(raw json.RawMessage) ([]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return nil, false
	}
	b, err := json.Marshal(obj)
	return b, err == nil
}

func decodeCurrency(raw json.RawMessage, p string, verr *ValidationError) string {
	s, ok := unquote(raw)
	switch {
	case !ok:
		verr.add(p, "must be a string")
	case !ValidCurrency(s):
		verr.add(p, "must be an ISO 4217 currency code such as \"EUR\"")
	default:
		return s
	}
	return ""
}

func decodeUUID(raw json.RawMessage, p string, verr *ValidationError) string {
	s, ok := unquote(raw)
	if !ok {
		verr.add(p, "must be a string")
		return ""
	}
	id, ok := CanonicalUUID(s)
	if !ok {
		verr.add(p, "must be a UUID such as \"0190b1c2-0000-7000-8000-000000000001\"")
	}
	return id
}

func decodeAccountID(raw json.RawMessage, p string, verr *ValidationError) string {
	s, ok := unquote(raw)
	if !ok {
		verr.add(p, "must be a string")
		return ""
	}
	if !ValidAccountID(s) {
		verr.add(p, "must be 1 to %d characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'", maxAccountIDLen)
	}
	return s
}

// decodeInt accepts only a plain JSON integer literal between lo and MaxAmount:
// no fraction, no exponent, no string. Money never passes through a float.
func decodeInt(raw json.RawMessage, p string, lo int64, verr *ValidationError) int64 {
	s := string(raw)
	if strings.HasPrefix(s, `"`) {
		verr.add(p, "must be a JSON integer (minor units), not a string")
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if strings.ContainsAny(s, ".eE") {
			verr.add(p, "must be an integer number of minor units, without fraction or exponent")
		} else if strings.Trim(s, "-0123456789") == "" {
			verr.add(p, "must be between %d and %d", lo, MaxAmount)
		} else {
			verr.add(p, "must be a JSON integer")
		}
		return 0
	}
	if n < lo || n > MaxAmount {
		verr.add(p, "must be between %d and %d", lo, MaxAmount)
		return 0
	}
	return n
}

// ValidReference reports whether s is 1–MaxReferenceLen printable ASCII
// characters (space to tilde).
func ValidReference(s string) bool {
	if len(s) == 0 || len(s) > MaxReferenceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidAccountID reports whether s is 1–64 characters of [A-Za-z0-9._:-].
func ValidAccountID(s string) bool {
	if len(s) == 0 || len(s) > maxAccountIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// CanonicalUUID returns s in the canonical lowercase 8-4-4-4-12 form when it is
// a UUID in that layout (any case).
func CanonicalUUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return "", false
			}
		}
	}
	return string(b), true
}

func pointer(name string) string {
	name = strings.ReplaceAll(name, "~", "~0")
	return "/" + strings.ReplaceAll(name, "/", "~1")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// DebitAccount is the account a command takes money from or acts on; it is the
// Kafka key of the command and of its outcome event, so that one account's
// commands are applied, and its events published, in the order accepted.
func (c Command) DebitAccount() string {
	if len(c.Legs) > 0 {
		return c.Legs[0].FromAccountID
	}
	if c.FromAccountID != "" {
		return c.FromAccountID
	}
	return c.AccountID
}

// Encode returns the command's canonical JSON, the value of its Kafka record.
func (c Command) Encode() []byte {
	b, err := json.Marshal(c)
	if err != nil {
		// Command holds only strings, integers, a compacted raw object and a
		// time: Marshal cannot fail on a decoded command.
		panic(fmt.Sprintf("encode command: %v", err))
	}
	return b
}

// Fingerprint identifies the command's content. Two commands with the same
// command_id and the same fingerprint are one command delivered twice; a
// different fingerprint under the same id is an idempotency conflict.
func (c Command) Fingerprint() []byte {
	sum := sha256.Sum256(c.Encode())
	return sum[:]
}

// Identity is what can be read of a record that did not decode as a
// command: its command_id when that is a UUID, its type when it is a command
// type, and its debit account when that is a valid account id. Fields that
// cannot be read are empty.
type Identity struct {
	CommandID      string
	Type           Type
	DebitAccountID string
}

// Identify reads what it can of data, a record that may be anything: a
// dead-lettered record whose command_id can be read gets the outcome
// dead_lettered under that id.
func Identify(data []byte) Identity {
	var fields map[string]json.RawMessage
	if json.Unmarshal(data, &fields) != nil {
		return Identity{}
	}
	str := func(name string) string {
		var s string
		if json.Unmarshal(fields[name], &s) != nil {
			return ""
		}
		return s
	}
	var id Identity
	if s, ok := CanonicalUUID(str("command_id")); ok {
		id.CommandID = s
	}
	if _, known := specs[Type(str("type"))]; known {
		id.Type = Type(str("type"))
	}
	for _, name := range []string{"from_account_id", "account_id"} {
		if s := str(name); ValidAccountID(s) {
			id.DebitAccountID = s
			break
		}
	}
	var legs []struct {
		From string `json:"from_account_id"`
	}
	if id.DebitAccountID == "" && json.Unmarshal(fields["legs"], &legs) == nil && len(legs) > 0 && ValidAccountID(legs[0].From) {
		id.DebitAccountID = legs[0].From
	}
	return id
}

// DebitAccounts are the accounts cmd moves money from or acts on, which a
// key scoped to accounts must cover: every leg's debit account for a
// transaction, the account for the others (for open_account and deposit
// too: the account they create or fund).
func (c Command) DebitAccounts() []string {
	if len(c.Legs) > 0 {
		out := make([]string, 0, len(c.Legs))
		for _, l := range c.Legs {
			out = append(out, l.FromAccountID)
		}
		return out
	}
	return []string{c.DebitAccount()}
}

// PatternsCover reports whether account matches patterns, the accounts a
// scoped API key may act on: nil matches every account; otherwise one
// pattern equals account exactly, or ends in "*" and account starts with
// what comes before it. Bytes are compared as they are: account ids are
// ASCII and case matters ("Merchant-42" is not "merchant-42"), and an
// exact pattern never matches a longer id ("merchant-4" does not cover
// "merchant-42").
func PatternsCover(patterns []string, account string) bool {
	if patterns == nil {
		return true
	}
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(account, prefix) {
				return true
			}
		} else if p == account {
			return true
		}
	}
	return false
}
