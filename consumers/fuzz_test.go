package consumers

import (
	"errors"
	"maps"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/schematest"
	"github.com/txpipe/txpipe/internal/sealingtest"
)

// Ids of the state FuzzDecide decides against.
const (
	fuzzHold     = "0190b1c2-0000-7000-8000-00000000f001" // alice's pending hold to bob
	fuzzTransfer = "0190b1c2-0000-7000-8000-00000000f002" // alice's posted transfer to bob
	fuzzPrior    = "0190b1c2-0000-7000-8000-00000000f003" // a command already decided
	fuzzTx       = "0190b1c2-0000-7000-8000-00000000f004" // alice's transaction: 10 to bob, then 5 back
)

var fuzzNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// fuzzBook is a small ledger whose money sums to zero per currency: EUR
// accounts alice (with an overdraft, a daily limit counted on a day after
// fuzzNow, a pending hold), bob and a frozen one, a USD account, and the
// external accounts that funded them.
func fuzzBook() *domain.Book {
	b := domain.NewBook()
	add := func(a *domain.Account) { b.Accounts[a.ID] = a }
	add(&domain.Account{ID: "alice", Currency: "EUR", Status: domain.AccountActive, Balance: 1000, Held: 100, OverdraftLimit: 50,
		DailyDebitLimit: 5000, DailyDebitDay: "2026-12-01", DailyDebited: 400, Version: 3})
	add(&domain.Account{ID: "bob", Currency: "EUR", Status: domain.AccountActive, Balance: 200, Version: 2})
	add(&domain.Account{ID: "frozen", Currency: "EUR", Status: domain.AccountFrozen, Balance: 50, Version: 1})
	add(&domain.Account{ID: "carol", Currency: "USD", Status: domain.AccountActive, Balance: 70, Version: 1})
	// At the edge of int64: the rules must refuse, never wrap.
	add(&domain.Account{ID: "whale", Currency: "JPY", Status: domain.AccountActive, Balance: math.MaxInt64 - 5, Held: 3,
		OverdraftLimit: domain.MaxAmount, DailyDebitDay: "2026-11-30", DailyDebited: math.MaxInt64 - 5, Version: 9})
	eur, usd, jpy := domain.NewExternalAccount("EUR"), domain.NewExternalAccount("USD"), domain.NewExternalAccount("JPY")
	eur.Balance, usd.Balance, jpy.Balance = -1250, -70, -(math.MaxInt64 - 5)
	add(eur)
	add(usd)
	add(jpy)
	expires := fuzzNow.Add(time.Hour)
	b.Transfers[fuzzHold] = &domain.Transfer{ID: fuzzHold, Kind: domain.KindHold, FromAccountID: "alice", ToAccountID: "bob",
		Currency: "EUR", Amount: 100, Status: domain.TransferPending, ExpiresAt: &expires}
	b.Transfers[fuzzTransfer] = &domain.Transfer{ID: fuzzTransfer, Kind: domain.KindTransfer, FromAccountID: "alice", ToAccountID: "bob",
		Currency: "EUR", Amount: 200, Status: domain.TransferPosted, Reference: "order-9"}
	b.References["order-9"] = fuzzTransfer
	b.Transfers[fuzzTx] = &domain.Transfer{ID: fuzzTx, Kind: domain.KindTransaction, FromAccountID: "alice", ToAccountID: "bob",
		Currency: "EUR", Amount: 10, Status: domain.TransferPosted, Legs: []domain.TransferLeg{
			{Leg: domain.Leg{FromAccountID: "alice", ToAccountID: "bob", Amount: 10, Currency: "EUR"}},
			{Leg: domain.Leg{FromAccountID: "bob", ToAccountID: "alice", Amount: 5, Currency: "EUR"}}}}
	// erin pays 1 % (at least 1) to bob on what she sends.
	one := int64(1)
	add(&domain.Account{ID: "erin", Currency: "EUR", Status: domain.AccountActive, Balance: 50, Version: 1,
		FeePlan: &domain.FeePlan{Bps: 100, Min: &one, RevenueAccountID: "bob"}})
	eur.Balance -= 50
	return b
}

// FuzzDecide runs one record — value, key, a header and a timestamp, as
// any producer may write them — through the worker's whole decision:
// decode, validate, fingerprint, decide against an in-memory ledger, and
// build every row and event. Whatever the bytes: nothing panics; every
// event validates against its published JSON Schema; every DLQ record and
// every header fits what Kafka and PostgreSQL take; money is conserved and
// no balance passes its limit; and the same record delivered again changes
// nothing. Seeds, in testdata/fuzz too, include every record that broke a
// worker.
func FuzzDecide(f *testing.F) {
	cmd := func(s string) string { return strings.ReplaceAll(s, "ID", "0190b1c2-0000-7000-8000-000000000001") }
	for _, s := range []string{
		cmd(`{"command_id":"ID","type":"open_account","account_id":"dave","currency":"EUR","overdraft_limit":10,"daily_debit_limit":5,"metadata":{"k":[1,{"x":null}]}}`),
		cmd(`{"command_id":"ID","type":"deposit","account_id":"alice","amount":9007199254740991,"currency":"EUR"}`),
		cmd(`{"command_id":"ID","type":"withdraw","account_id":"alice","amount":950,"currency":"EUR"}`),
		cmd(`{"command_id":"ID","type":"transfer","from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR"}`),
		cmd(`{"command_id":"ID","type":"transfer","from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR","reference":"order-9"}`),
		cmd(`{"command_id":"ID","type":"hold","from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR","reference":"order 10","metadata":{"m":[1,"x"]}}`),
		cmd(`{"command_id":"ID","type":"transaction","legs":[{"from_account_id":"alice","to_account_id":"bob","amount":9007199254740991,"currency":"EUR"},{"from_account_id":"whale","to_account_id":"carol","amount":1,"currency":"JPY"}]}`),
		cmd(`{"command_id":"ID","type":"transaction","reference":"order-9","legs":[{"from_account_id":"bob","to_account_id":"alice","amount":5,"currency":"EUR"},{"from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR"}]}`),
		cmd(`{"command_id":"ID","type":"reverse","account_id":"alice","transfer_id":"` + fuzzTx + `","leg_amounts":[3,4]}`),
		cmd(`{"command_id":"ID","type":"reverse","account_id":"alice","transfer_id":"` + fuzzTx + `"}`),
		cmd(`{"command_id":"ID","type":"withdraw","account_id":"alice","amount":9007199254740991,"currency":"EUR","amount_mode":"up_to","expected_version":3}`),
		cmd(`{"command_id":"ID","type":"close_account","account_id":"bob","sweep_to_account_id":"alice"}`),
		cmd(`{"command_id":"ID","type":"transfer","from_account_id":"erin","to_account_id":"alice","amount":49,"currency":"EUR","amount_mode":"up_to"}`),
		cmd(`{"command_id":"ID","type":"set_fee_plan","account_id":"bob","fee_plan":{"bps":10000,"fixed":9007199254740991,"min":0,"max":9007199254740991,"revenue_account_id":"alice"}}`),
		cmd(`{"command_id":"ID","type":"transfer","from_account_id":"alice","to_account_id":"carol","amount":1,"currency":"EUR"}`),
		cmd(`{"command_id":"ID","type":"hold","from_account_id":"alice","to_account_id":"bob","amount":5,"currency":"EUR","expires_at":"2026-11-30T12:00:01Z"}`),
		cmd(`{"command_id":"ID","type":"capture","account_id":"alice","hold_id":"` + fuzzHold + `","amount":60}`),
		cmd(`{"command_id":"ID","type":"release","account_id":"alice","hold_id":"` + fuzzHold + `"}`),
		cmd(`{"command_id":"ID","type":"reverse","account_id":"alice","transfer_id":"` + fuzzTransfer + `","amount":150}`),
		cmd(`{"command_id":"ID","type":"close_account","account_id":"frozen"}`),
		cmd(`{"command_id":"ID","type":"unfreeze_account","account_id":"frozen"}`),
		cmd(`{"command_id":"ID","type":"withdraw","account_id":"whale","amount":10,"currency":"JPY"}`),
		cmd(`{"command_id":"ID","type":"hold","from_account_id":"whale","to_account_id":"whale2","amount":9007199254740991,"currency":"JPY"}`),
		cmd(`{"command_id":"ID","type":"deposit","account_id":"whale","amount":9,"currency":"JPY"}`),
		`{"command_id":"` + fuzzPrior + `","type":"freeze_account","account_id":"bob"}`,
		// Records that stopped or fooled workers (issue 13).
		cmd(`{"command_id":"ID","type":"hold","from_account_id":"alice","to_account_id":"bob","amount":1,"currency":"EUR","expires_at":"9999-12-31T23:59:59-01:00"}`),
		cmd(`{"command_id":"ID","type":"deposit","account_id":"alice","amount":1,"currency":"EUR","x\u0000y":1}`),
		cmd(`{"command_id":"ID","type":"open_account","account_id":"dave","currency":"EUR","metadata":{"s":"\ud800","n":1e400}}`),
		"\xff\xfe not json", `[]`, `{"command_id":"x"}`,
	} {
		f.Add([]byte(s), []byte("alice"), []byte("0123456789abcdef"), int64(1764500000000))
	}
	f.Add([]byte(cmd(`{"command_id":"ID","type":"deposit","account_id":"alice","amount":3,"currency":"EUR"}`)), []byte("k"), []byte{0, 0xff}, int64(1<<60))
	f.Add([]byte(`{"command_id":"`+fuzzPrior+`"}`), []byte(strings.Repeat("k", 20<<10)), []byte(nil), int64(-1))

	schemas := schematest.Load(f)
	d := testDecider(f)
	f.Fuzz(func(t *testing.T, value, key, header []byte, ts int64) {
		m := kafka.Message{Topic: "commands", Partition: 1, Offset: 42, Key: key, Value: value, Time: time.UnixMilli(ts),
			Headers: []kafka.Header{{Key: domain.SubmittedByHeader, Value: header}, {Key: string(header), Value: header}}}
		st := fuzzState()
		v := decideRecord(t, d, m, st)
		checkWrites(t, schemas, v)
		checkMoney(t, st.Book)

		// Delivered again, with the decision stored: nothing changes.
		before := cloneBook(st.Book)
		again := decideRecord(t, d, m, st)
		if len(v.writes.Decisions) == 1 && (len(again.writes.Decisions) != 0 || len(again.writes.Outbox) != 0) {
			t.Fatalf("a redelivered command was decided again: %d rows, %d messages", len(again.writes.Decisions), len(again.writes.Outbox))
		}
		if diff := cmp.Diff(before, st.Book); diff != "" {
			t.Fatalf("a redelivery changed the ledger (-before +after):\n%s", diff)
		}
	})
}

// fuzzState is the state FuzzDecide decides against: fuzzBook, its
// transfers loaded, and fuzzPrior decided.
func fuzzState() *ledger.State {
	return &ledger.State{Book: fuzzBook(), Loaded: map[string]bool{fuzzHold: true, fuzzTransfer: true, fuzzTx: true}, Now: fuzzNow,
		Priors: map[string]ledger.Prior{fuzzPrior: {Fingerprint: []byte("another command"), Status: domain.StatusApplied}}}
}

// testDecider decides as a worker whose topics are named events,
// postings, balances and dlq.
func testDecider(tb testing.TB) decider {
	return decider{eventsTopic: "events", postingsTopic: "postings", balancesTopic: "balances", dlqTopic: "dlq", keyring: sealingtest.Keyring(tb)}
}

// decideRecord runs m through readBatch and decide as applyBatch does; st
// then holds its decision, as the stored row would.
func decideRecord(t *testing.T, d decider, m kafka.Message, st *ledger.State) *verdict {
	t.Helper()
	in, err := readBatch([]kafka.Message{m}, nil)
	if err != nil {
		t.Fatalf("decoding %q: %v", m.Value, err)
	}
	v, err := d.decide(in, st)
	if err != nil {
		var rp *recordPanic
		if errors.As(err, &rp) {
			t.Fatalf("deciding %q panicked: %v\n%s", m.Value, rp.value, rp.stack)
		}
		t.Fatalf("deciding %q: %v", m.Value, err)
	}
	return v
}

// maxRecordBytes is what one record may take for the relay to publish it
// (outbox.maxBatchBytes) under the broker's default 1 MiB limit.
const maxRecordBytes = 1<<20 - 16<<10

// checkWrites: every message validates and fits; every text bound for
// PostgreSQL or a header is valid UTF-8 without NUL.
func checkWrites(t *testing.T, schemas *schematest.Schemas, v *verdict) {
	t.Helper()
	for _, msg := range v.writes.Outbox {
		size := len(msg.Key) + len(msg.Value)
		for k, v := range msg.Headers {
			checkText(t, "header "+k, v)
			size += len(k) + len(v) + 8
		}
		if size > maxRecordBytes {
			t.Fatalf("a %s record of %d bytes could never be published", msg.Topic, size)
		}
		switch msg.Topic {
		case "events", "postings":
			if err := schemas.Event(msg.Value); err != nil {
				t.Fatalf("%s event does not match its schema: %v\n%s", msg.Topic, err, msg.Value)
			}
			checkText(t, "event key", string(msg.Key))
		case "balances":
			if err := schemas.Balance(msg.Value); err != nil {
				t.Fatalf("balance record does not match its schema: %v\n%s", err, msg.Value)
			}
			checkText(t, "balance key", string(msg.Key))
		case "dlq":
			if len(msg.Key) > maxDLQKey || len(msg.Value) > maxDLQValue {
				t.Fatalf("DLQ record of key %d and value %d bytes", len(msg.Key), len(msg.Value))
			}
		default:
			t.Fatalf("a message for topic %q", msg.Topic)
		}
	}
	for _, r := range v.writes.Decisions {
		for _, s := range []string{r.Command.CommandID, string(r.Command.Type), string(r.Result.Reason), r.Command.DebitAccount(), r.SubmittedBy} {
			checkText(t, "processed row", s)
		}
	}
	for _, r := range v.writes.DeadLettered {
		for _, s := range []string{r.Identity.CommandID, string(r.Identity.Type), r.Identity.DebitAccountID, r.Reason, r.Detail, r.SubmittedBy} {
			checkText(t, "dead_lettered row", s)
		}
	}
	if n := len(v.writes.Decisions) + len(v.counts); n == 0 {
		t.Fatal("the record has no outcome")
	}
}

func checkText(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		t.Fatalf("%s %q is not valid UTF-8 without NUL: PostgreSQL or Kafka headers would refuse it", what, s)
	}
}

// checkMoney: per currency the balances sum to zero (invariant 3), and no
// account may spend past its overdraft limit (invariant 4).
func checkMoney(t *testing.T, b *domain.Book) {
	t.Helper()
	sums := map[string]int64{}
	for _, a := range b.Accounts {
		sums[a.Currency] += a.Balance
		if !a.External && a.Available() < -a.OverdraftLimit {
			t.Fatalf("account %s: available %d below its overdraft limit -%d", a.ID, a.Available(), a.OverdraftLimit)
		}
		if a.Held < 0 || a.DailyDebited < 0 {
			t.Fatalf("account %s: held %d, debited today %d: a sum wrapped around", a.ID, a.Held, a.DailyDebited)
		}
	}
	for c, s := range sums {
		if s != 0 {
			t.Fatalf("%s balances sum to %d, want 0 (all sums: %v)", c, s, sums)
		}
	}
}

func cloneBook(b *domain.Book) *domain.Book {
	c := domain.NewBook()
	for id, a := range b.Accounts {
		x := *a
		c.Accounts[id] = &x
	}
	for id, tr := range b.Transfers {
		x := *tr
		c.Transfers[id] = &x
	}
	maps.Copy(c.References, b.References)
	return c
}
