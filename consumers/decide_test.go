package consumers

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
	"github.com/txpipe/txpipe/internal/schematest"
)

// These tests run the decision step alone: records and loaded state in,
// rows and messages out. No PostgreSQL, no Kafka.

// decideBatch decides values as consecutive records of partition 1 keyed
// by key, against st.
func decideBatch(t *testing.T, d decider, st *ledger.State, key string, dl *deadLetter, values ...string) *verdict {
	t.Helper()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Topic: "commands", Partition: 1, Offset: int64(10 + i), Key: []byte(key), Value: []byte(v), Time: fuzzNow.Add(-time.Second)}
	}
	in, err := readBatch(msgs, dl)
	if err != nil {
		t.Fatalf("readBatch() error = %v", err)
	}
	v, err := d.decide(in, st)
	if err != nil {
		t.Fatalf("decide() error = %v", err)
	}
	return v
}

// summary is what a verdict writes, by id, for comparing.
type summary struct {
	Opened, Changed, Created, Updated []string
	Decisions                         []string // command_id status reason
	Entries                           []string // account version amount balance
	DeadLettered                      []string // command_id reason
	Messages                          []string // topic key event_type (or dlq_reason)
	Counts                            map[string]int
}

func summarize(v *verdict) summary {
	var s summary
	ids := func(as []*domain.Account) (out []string) {
		for _, a := range as {
			out = append(out, a.ID)
		}
		return out
	}
	tids := func(ts []*domain.Transfer) (out []string) {
		for _, t := range ts {
			out = append(out, t.ID)
		}
		return out
	}
	w := v.writes
	s.Opened, s.Changed, s.Created, s.Updated = ids(w.Opened), ids(w.Changed), tids(w.Created), tids(w.Updated)
	for _, d := range w.Decisions {
		s.Decisions = append(s.Decisions, strings.TrimSpace(fmt.Sprint(d.Command.CommandID, " ", d.Result.Status, " ", d.Result.Reason)))
	}
	for _, e := range w.Entries {
		s.Entries = append(s.Entries, fmt.Sprint(e.Posting.AccountID, " v", e.Posting.AccountVersion, " ", e.Posting.Amount, " =", e.Posting.BalanceAfter))
	}
	for _, d := range w.DeadLettered {
		s.DeadLettered = append(s.DeadLettered, d.Identity.CommandID+" "+d.Reason)
	}
	for _, m := range w.Outbox {
		what := m.Headers["event_type"]
		if m.Topic == "dlq" {
			what = m.Headers[HeaderDLQReason]
		}
		s.Messages = append(s.Messages, m.Topic+" "+string(m.Key)+" "+what)
	}
	s.Counts = map[string]int{}
	for k, n := range v.counts {
		s.Counts[strings.TrimSuffix(k.outcome+" "+k.reason, " ")] = n
	}
	return s
}

func TestDecide(t *testing.T) {
	cmd := func(n int, body string) string { return fmt.Sprintf(`{"command_id":%q,%s}`, id(n), body) }
	tests := []struct {
		name   string
		key    string
		dl     *deadLetter
		values []string
		want   summary
	}{{
		name:   "a transfer posts two entries and announces each",
		key:    "alice",
		values: []string{transfer(1, "alice", "bob", 30)},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Created:   []string{id(1)},
			Decisions: []string{id(1) + " applied"},
			Entries:   []string{"alice v4 -30 =970", "bob v3 30 =230"},
			Messages: []string{"events alice transfer.applied", "postings alice posting.created", "postings bob posting.created",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1},
		},
	}, {
		name:   "each command sees the ones before it in the batch",
		key:    "bob",
		values: []string{transfer(1, "bob", "alice", 150), transfer(2, "bob", "alice", 100)},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Created:   []string{id(1)},
			Decisions: []string{id(1) + " applied", id(2) + " rejected insufficient_funds"},
			Entries:   []string{"bob v3 -150 =50", "alice v4 150 =1150"},
			Messages: []string{"events bob transfer.applied", "postings bob posting.created", "postings alice posting.created",
				"events bob transfer.rejected",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1, "rejected insufficient_funds": 1},
		},
	}, {
		name:   "a capture updates the hold it loaded",
		key:    "alice",
		values: []string{cmd(1, `"type":"capture","account_id":"alice","hold_id":"`+fuzzHold+`","amount":60`)},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Updated:   []string{fuzzHold},
			Decisions: []string{id(1) + " applied"},
			Entries:   []string{"alice v4 -60 =940", "bob v3 60 =260"},
			Messages: []string{"events alice capture.applied", "postings alice posting.created", "postings bob posting.created",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1},
		},
	}, {
		name: "a reference held by an applied command is refused, and so is one used earlier in the batch",
		key:  "alice",
		values: []string{`{"command_id":"` + id(1) + `","type":"transfer","from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR","reference":"order-9"}`,
			`{"command_id":"` + id(2) + `","type":"deposit","account_id":"alice","amount":1,"currency":"EUR","reference":"order-10"}`,
			`{"command_id":"` + id(3) + `","type":"withdraw","account_id":"alice","amount":1,"currency":"EUR","reference":"order-10"}`},
		want: summary{
			Changed:   []string{"@external:EUR", "alice"},
			Created:   []string{id(2)},
			Decisions: []string{id(1) + " rejected reference_exists", id(2) + " applied", id(3) + " rejected reference_exists"},
			Entries:   []string{"@external:EUR v1 -1 =-1301", "alice v4 1 =1001"},
			Messages: []string{"events alice transfer.rejected", "events alice deposit.applied", "postings @external:EUR posting.created",
				"postings alice posting.created", "events alice withdraw.rejected",
				"balances @external:EUR balance.updated", "balances alice balance.updated"},
			Counts: map[string]int{"applied": 1, "rejected reference_exists": 2},
		},
	}, {
		name:   "up_to moves what the debit account can spend",
		key:    "bob",
		values: []string{`{"command_id":"` + id(1) + `","type":"transfer","from_account_id":"bob","to_account_id":"alice","amount":1000,"currency":"EUR","amount_mode":"up_to","expected_version":2}`},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Created:   []string{id(1)},
			Decisions: []string{id(1) + " applied"},
			Entries:   []string{"bob v3 -200 =0", "alice v4 200 =1200"},
			Messages: []string{"events bob transfer.applied", "postings bob posting.created", "postings alice posting.created",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1},
		},
	}, {
		name:   "close_account sweeps the balance and closes in one step",
		key:    "bob",
		values: []string{`{"command_id":"` + id(1) + `","type":"close_account","account_id":"bob","sweep_to_account_id":"alice"}`},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Created:   []string{id(1)},
			Decisions: []string{id(1) + " applied"},
			Entries:   []string{"bob v3 -200 =0", "alice v4 200 =1200"},
			Messages: []string{"events bob close_account.applied", "postings bob posting.created", "postings alice posting.created",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1},
		},
	}, {
		name: "a transaction's legs post in order, and a rejected one leaves nothing",
		key:  "alice",
		values: []string{`{"command_id":"` + id(1) + `","type":"transaction","legs":[{"from_account_id":"alice","to_account_id":"bob","amount":100,"currency":"EUR"},` +
			`{"from_account_id":"bob","to_account_id":"alice","amount":250,"currency":"EUR"}]}`,
			`{"command_id":"` + id(2) + `","type":"transaction","legs":[{"from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR"},` +
				`{"from_account_id":"alice","to_account_id":"carol","amount":1,"currency":"EUR"}]}`},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Created:   []string{id(1)},
			Decisions: []string{id(1) + " applied", id(2) + " rejected currency_mismatch"},
			Entries:   []string{"alice v4 -100 =900", "bob v3 100 =300", "bob v4 -250 =50", "alice v5 250 =1150"},
			Messages: []string{"events alice transaction.applied", "postings alice posting.created", "postings bob posting.created",
				"postings bob posting.created", "postings alice posting.created", "events alice transaction.rejected",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1, "rejected currency_mismatch": 1},
		},
	}, {
		name:   "a command decided before has no effect",
		key:    "bob",
		values: []string{transfer(1, "bob", "alice", 5), transfer(1, "bob", "alice", 5)},
		want: summary{
			Changed:   []string{"alice", "bob"},
			Created:   []string{id(1)},
			Decisions: []string{id(1) + " applied"},
			Entries:   []string{"bob v3 -5 =195", "alice v4 5 =1005"},
			Messages: []string{"events bob transfer.applied", "postings bob posting.created", "postings alice posting.created",
				"balances alice balance.updated", "balances bob balance.updated"},
			Counts: map[string]int{"applied": 1, "duplicate": 1},
		},
	}, {
		name:   "other content under a decided id is a conflict, announced but not stored",
		key:    "bob",
		values: []string{fmt.Sprintf(`{"command_id":%q,"type":"freeze_account","account_id":"bob"}`, fuzzPrior)},
		want: summary{
			Messages: []string{"events bob freeze_account.rejected"},
			Counts:   map[string]int{"rejected idempotency_conflict": 1},
		},
	}, {
		name:   "a record that is no command goes to the DLQ, with an outcome when its id can be read",
		key:    "alice",
		values: []string{"not json", cmd(2, `"type":"transfer","from_account_id":"alice"`)},
		want: summary{
			DeadLettered: []string{id(2) + " invalid_command"},
			Messages:     []string{"dlq alice malformed", "dlq alice invalid_command", "events alice command.dead_lettered"},
			Counts:       map[string]int{"dlq malformed": 1, "dlq invalid_command": 1},
		},
	}, {
		name:   "a dead-lettered record under a decided id leaves that decision alone",
		key:    "alice",
		values: []string{fmt.Sprintf(`{"command_id":%q,"type":"transfer"}`, fuzzPrior)},
		want: summary{
			Messages: []string{"dlq alice invalid_command"},
			Counts:   map[string]int{"dlq invalid_command": 1},
		},
	}, {
		name:   "a batch sent to the DLQ whole decides nothing",
		key:    "alice",
		dl:     &deadLetter{reason: reasonApplyFailed, detail: "boom"},
		values: []string{transfer(1, "alice", "bob", 1)},
		want: summary{
			DeadLettered: []string{id(1) + " apply_failed"},
			Messages:     []string{"dlq alice apply_failed", "events alice command.dead_lettered"},
			Counts:       map[string]int{"dlq apply_failed": 1},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := decideBatch(t, testDecider(t), fuzzState(), tt.key, tt.dl, tt.values...)
			if diff := cmp.Diff(tt.want, summarize(v)); diff != "" {
				t.Errorf("decide() (-want +got):\n%s", diff)
			}
			if !v.writes.Now.Equal(fuzzNow) {
				t.Errorf("rows stamped %v, want the state's clock %v", v.writes.Now, fuzzNow)
			}
		})
	}
}

// TestDecideSealsMetadata: an account's metadata is stored and published
// only sealed, and the row and the event carry the same ciphertext.
func TestDecideSealsMetadata(t *testing.T) {
	open := `{"command_id":"` + id(1) + `","type":"open_account","account_id":"dave","currency":"EUR","metadata":{"secret":"s3cr3t"}}`
	d := testDecider(t)
	v := decideBatch(t, d, fuzzState(), "dave", nil, open)
	if got := summarize(v).Opened; !slices.Equal(got, []string{"dave"}) {
		t.Fatalf("opened = %v, want [dave]", got)
	}
	sealed, ok := v.writes.AccountMetadata["dave"]
	if !ok || sealed.KeyID == "" || len(sealed.Ciphertext) == 0 {
		t.Fatalf("sealed metadata of dave = %+v, %v; want a key id and a ciphertext", sealed, ok)
	}
	for _, m := range v.writes.Outbox {
		if bytes.Contains(m.Value, []byte("s3cr3t")) {
			t.Fatalf("%s message carries the metadata in plaintext: %s", m.Topic, m.Value)
		}
	}
	if ct := base64.StdEncoding.EncodeToString(sealed.Ciphertext); !bytes.Contains(v.writes.Outbox[0].Value, []byte(ct)) {
		t.Errorf("outcome event %s does not carry the row's ciphertext %s", v.writes.Outbox[0].Value, ct)
	}
	plain, err := d.keyring.Open(sealed.KeyID, sealed.Ciphertext, sealing.MetadataAAD("dave"))
	if err != nil || !bytes.Contains(plain, []byte("s3cr3t")) {
		t.Errorf("opened metadata = %s, %v; want the command's", plain, err)
	}
}

// TestDecideKeepsReferenceAndMetadataWithTheTransfer: a money command's
// reference is on its transfer and postings, its metadata sealed for the
// transfer's row under the transfer's id, never in clear on a message.
func TestDecideKeepsReferenceAndMetadataWithTheTransfer(t *testing.T) {
	d := testDecider(t)
	cmd := `{"command_id":"` + id(1) + `","type":"transfer","from_account_id":"alice","to_account_id":"bob","amount":5,"currency":"EUR",` +
		`"reference":"order 77","metadata":{"note":"s3cr3t"}}`
	v := decideBatch(t, d, fuzzState(), "alice", nil, cmd)
	if len(v.writes.Created) != 1 || v.writes.Created[0].Reference != "order 77" {
		t.Fatalf("created transfers %+v, want one with reference order 77", v.writes.Created)
	}
	for _, e := range v.writes.Entries {
		if e.Posting.Reference != "order 77" {
			t.Errorf("entry %+v carries reference %q", e.Posting, e.Posting.Reference)
		}
	}
	sealed, ok := v.writes.TransferMetadata[id(1)]
	if !ok || len(v.writes.AccountMetadata) != 0 {
		t.Fatalf("sealed metadata: transfers %v, accounts %v; want the transfer's only", v.writes.TransferMetadata, v.writes.AccountMetadata)
	}
	if plain, err := d.keyring.Open(sealed.KeyID, sealed.Ciphertext, sealing.TransferMetadataAAD(id(1))); err != nil || string(plain) != `{"note":"s3cr3t"}` {
		t.Errorf("transfer metadata opens to %s, %v; want the command's", plain, err)
	}
	for _, m := range v.writes.Outbox {
		if bytes.Contains(m.Value, []byte("s3cr3t")) {
			t.Fatalf("%s message carries the metadata in plaintext: %s", m.Topic, m.Value)
		}
		if m.Topic == "postings" && !bytes.Contains(m.Value, []byte(`"reference":"order 77"`)) {
			t.Errorf("posting %s lacks the reference", m.Value)
		}
	}
}

// TestDecideCountsWhatTheRecordsCameWith: a record keyed by another
// account than its debit account is applied and counted as misrouted; one
// replayed from the DLQ is counted as replayed; a key id the record
// carries is stored with its decision and entries, and a header that is no
// key id is ignored.
func TestDecideCountsWhatTheRecordsCameWith(t *testing.T) {
	const keyID = "0123456789abcdef"
	msgs := []kafka.Message{
		{Partition: 1, Offset: 1, Key: []byte("bob"), Value: []byte(transfer(1, "alice", "bob", 1)),
			Headers: []kafka.Header{{Key: domain.SubmittedByHeader, Value: []byte(keyID)}}},
		{Partition: 1, Offset: 2, Key: []byte("alice"), Value: []byte(transfer(2, "alice", "bob", 1)),
			Headers: []kafka.Header{{Key: HeaderReplayedFrom, Value: []byte("0@7")}, {Key: domain.SubmittedByHeader, Value: []byte("not a key id")}}},
	}
	in, err := readBatch(msgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := testDecider(t).decide(in, fuzzState())
	if err != nil {
		t.Fatal(err)
	}
	if v.misrouted != 1 {
		t.Errorf("misrouted = %d, want 1", v.misrouted)
	}
	if v.replayed["applied"] != 1 {
		t.Errorf("replayed = %v, want one applied", v.replayed)
	}
	if by := []string{v.writes.Decisions[0].SubmittedBy, v.writes.Decisions[1].SubmittedBy}; !slices.Equal(by, []string{keyID, ""}) {
		t.Errorf("decisions submitted by %q, want %q and none", by, keyID)
	}
	if by := v.writes.Entries[0].SubmittedBy; by != keyID {
		t.Errorf("entry submitted by %q, want %q", by, keyID)
	}
}

// TestDecidePanicNamesItsRecord: a panic while deciding a record stops the
// batch with a *recordPanic naming that record, so the batch can be split
// around it.
func TestDecidePanicNamesItsRecord(t *testing.T) {
	d := testDecider(t)
	d.keyring = nil // sealing metadata panics
	withMetadata := `{"command_id":"` + id(2) + `","type":"open_account","account_id":"dave","currency":"EUR","metadata":{"k":1}}`
	in, err := readBatch([]kafka.Message{{Value: []byte(open(1, "erin"))}, {Value: []byte(withMetadata)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.decide(in, fuzzState())
	rp, ok := err.(*recordPanic)
	if !ok || rp.index != 1 {
		t.Fatalf("decide() error = %v, want a *recordPanic at index 1", err)
	}
}

// TestDecideNamesTheFailingLeg: a rejected transaction's outcome event says
// which leg failed.
func TestDecideNamesTheFailingLeg(t *testing.T) {
	cmd := `{"command_id":"` + id(1) + `","type":"transaction","legs":[{"from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR"},` +
		`{"from_account_id":"bob","to_account_id":"nobody","amount":1,"currency":"EUR"}]}`
	v := decideBatch(t, testDecider(t), fuzzState(), "alice", nil, cmd)
	if len(v.writes.Outbox) != 1 || !bytes.Contains(v.writes.Outbox[0].Value, []byte(`"reason":"account_not_found","leg":1`)) {
		t.Errorf("outcome = %s, want account_not_found at leg 1", v.writes.Outbox[0].Value)
	}
}

// TestDecideKeepsAPlanSetOnAnAccountOpenedInTheBatch: the account opened
// and given a fee plan in one batch is written once, with its plan.
func TestDecideKeepsAPlanSetOnAnAccountOpenedInTheBatch(t *testing.T) {
	v := decideBatch(t, testDecider(t), fuzzState(), "dave", nil,
		`{"command_id":"`+id(1)+`","type":"open_account","account_id":"dave","currency":"EUR"}`,
		`{"command_id":"`+id(2)+`","type":"set_fee_plan","account_id":"dave","fee_plan":{"bps":10,"fixed":1,"revenue_account_id":"bob"}}`)
	if len(v.writes.Opened) != 1 || v.writes.Opened[0].FeePlan == nil || v.writes.Opened[0].FeePlan.RevenueAccountID != "bob" || len(v.writes.Changed) != 0 {
		t.Errorf("opened %+v, changed %+v; want dave opened once, with the plan", v.writes.Opened, v.writes.Changed)
	}
}

// TestDecideForbidsMovingMoneyOutsideTheKeysScope: a record claiming a
// scoped key's id is rejected forbidden when it moves money from an
// account outside the key's patterns, whatever else it would do; inside,
// it applies.
func TestDecideForbidsMovingMoneyOutsideTheKeysScope(t *testing.T) {
	const keyID = "0123456789abcdef"
	msg := func(n int, value string) kafka.Message {
		return kafka.Message{Partition: 1, Offset: int64(n), Key: []byte("alice"), Value: []byte(value),
			Headers: []kafka.Header{{Key: domain.SubmittedByHeader, Value: []byte(keyID)}}}
	}
	in, err := readBatch([]kafka.Message{
		msg(1, transfer(1, "alice", "bob", 1)),
		msg(2, transfer(2, "bob", "alice", 1)),
		msg(3, `{"command_id":"`+id(3)+`","type":"transaction","legs":[{"from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR"},`+
			`{"from_account_id":"bob","to_account_id":"alice","amount":1,"currency":"EUR"}]}`),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	in.scopes = map[string][]string{keyID: {"alice"}}
	v, err := testDecider(t).decide(in, fuzzState())
	if err != nil {
		t.Fatal(err)
	}
	got := summarize(v).Decisions
	want := []string{id(1) + " applied", id(2) + " rejected forbidden", id(3) + " rejected forbidden"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
}

// TestDecideForbidsClawingBackFromAnotherTenant: a scoped key may not
// reverse money it paid to an account outside its scope: a reversal takes
// the money from the receiver.
func TestDecideForbidsClawingBackFromAnotherTenant(t *testing.T) {
	const keyID = "0123456789abcdef"
	reverse := func(n int, target, extra string) kafka.Message {
		return kafka.Message{Partition: 1, Offset: int64(n), Key: []byte("alice"), Headers: []kafka.Header{{Key: domain.SubmittedByHeader, Value: []byte(keyID)}},
			Value: []byte(`{"command_id":"` + id(n) + `","type":"reverse","account_id":"alice","transfer_id":"` + target + `"` + extra + `}`)}
	}
	for _, tt := range []struct {
		name     string
		patterns []string
		msg      kafka.Message
		want     string
	}{
		{"a payment to bob, by a key of alice only", []string{"alice"}, reverse(1, fuzzTransfer, ""), "rejected forbidden"},
		{"a payment to bob, by a key of both", []string{"alice", "bob"}, reverse(1, fuzzTransfer, ""), "applied"},
		{"a transaction whose first leg paid bob", []string{"alice"}, reverse(1, fuzzTx, ""), "rejected forbidden"},
		{"only the leg bob paid back to alice", []string{"alice"}, reverse(1, fuzzTx, `,"leg_amounts":[0,4]`), "applied"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in, err := readBatch([]kafka.Message{tt.msg}, nil)
			if err != nil {
				t.Fatal(err)
			}
			in.scopes = map[string][]string{keyID: tt.patterns}
			v, err := testDecider(t).decide(in, fuzzState())
			if err != nil {
				t.Fatal(err)
			}
			if got := summarize(v).Decisions; len(got) != 1 || got[0] != id(1)+" "+tt.want {
				t.Errorf("decisions = %v, want %s", got, tt.want)
			}
		})
	}
}

// TestDecideClosesTheDayBefore: an account whose open statement period is
// of an earlier day has it closed by its first posting of the batch's day,
// with one statement.closed event (its id the same whoever closes it) that
// matches its schema, and a balance record per changed account; the
// closer's decision closes what is left of past days and nothing of today.
func TestDecideClosesTheDayBefore(t *testing.T) {
	st := fuzzState()
	alice := st.Book.Accounts["alice"]
	alice.Digest = strings.Repeat("ab", 32)
	alice.Period = domain.Period{Day: "2026-11-29", Opening: 900, FirstVersion: 2}
	alice.Period.Credits.Add(100) // 900 + 100 = alice's 1000
	d := testDecider(t)
	v := decideBatch(t, d, st, "alice", nil, transfer(1, "alice", "bob", 30))
	want := []string{"events alice transfer.applied", "events alice statement.closed", "postings alice posting.created", "postings bob posting.created",
		"balances alice balance.updated", "balances bob balance.updated"}
	if got := summarize(v).Messages; !slices.Equal(got, want) {
		t.Fatalf("messages = %v, want %v", got, want)
	}
	checkWrites(t, schematest.Load(t), v)
	var ev domain.Event
	var s domain.StatementData
	if err := json.Unmarshal(v.writes.Outbox[1].Value, &ev); err != nil || json.Unmarshal(ev.Data, &s) != nil {
		t.Fatalf("statement event %s: %v", v.writes.Outbox[1].Value, err)
	}
	if s.OpeningBalance != 900 || s.Credits.String() != "100" || s.Debits.String() != "0" ||
		s.ClosingBalance != 1000 || s.LastVersion != 3 || s.Entries != 2 || s.PeriodStart.Format(time.DateOnly) != "2026-11-29" ||
		s.LastDigest != strings.Repeat("ab", 32) || ev.CommandID != StatementID("alice", "2026-11-29") || alice.ClosedThrough != "2026-11-29" || alice.Period.Day != "2026-11-30" {
		t.Errorf("statement %+v (id %s), alice closed through %s with period %+v", s, ev.CommandID, alice.ClosedThrough, alice.Period)
	}

	bob := st.Book.Accounts["bob"] // bob's period is of today now: not closed
	carol := st.Book.Accounts["carol"]
	carol.Digest, carol.Period = strings.Repeat("cd", 32), domain.Period{Day: "2026-11-28", FirstVersion: 1}
	c := d.closeDays(st.Book, fuzzNow)
	if len(c.Closed) != 1 || c.Closed[0].ID != "carol" || len(c.Outbox) != 1 || bob.Period.Day != "2026-11-30" {
		t.Errorf("closeDays closed %d accounts (%d messages), bob's period %+v; want carol's alone", len(c.Closed), len(c.Outbox), bob.Period)
	}
}
