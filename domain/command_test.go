package domain

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const cid = "0190b1c2-0000-7000-8000-000000000001"

func TestDecodeCommandAccepts(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Command
	}{
		{"open with limits and metadata",
			`{"command_id":"` + cid + `","type":"open_account","account_id":"alice:1","currency":"EUR","overdraft_limit":500,"daily_debit_limit":1000,"metadata":{ "tier" : "gold" }}`,
			Command{CommandID: cid, Type: TypeOpenAccount, AccountID: "alice:1", Currency: "EUR", OverdraftLimit: 500, DailyDebitLimit: 1000, Metadata: []byte(`{"tier":"gold"}`)}},
		{"metadata is canonical and keeps big numbers and surrogate pairs", `{"command_id":"` + cid + `","type":"open_account","account_id":"m","currency":"EUR","metadata":{"z":1, "a":{"n":123456789012345678901234567890}, "s":"\ud83d\ude00"}}`,
			Command{CommandID: cid, Type: TypeOpenAccount, AccountID: "m", Currency: "EUR", Metadata: []byte(`{"a":{"n":123456789012345678901234567890},"s":"` + "\U0001F600" + `","z":1}`)}},
		{"expiry at the last representable microsecond, from an offset, nanoseconds cut", `{"command_id":"` + cid + `","type":"hold","from_account_id":"a","to_account_id":"b","currency":"EUR","amount":1,"expires_at":"9999-12-31T22:59:59.999999999-01:00"}`,
			Command{CommandID: cid, Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "EUR", ExpiresAt: ptr(time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC))}},
		{"deposit", `{"command_id":"` + cid + `","type":"deposit","account_id":"a","amount":1,"currency":"USD"}`,
			Command{CommandID: cid, Type: TypeDeposit, AccountID: "a", Amount: 1, Currency: "USD"}},
		{"transfer max amount, uppercase id", `{"type":"transfer","command_id":"` + strings.ToUpper(cid) + `","from_account_id":"a","to_account_id":"b","amount":9007199254740991,"currency":"JPY"}`,
			Command{CommandID: cid, Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: MaxAmount, Currency: "JPY"}},
		{"transfer with a reference of 128 printable characters and metadata", `{"command_id":"` + cid + `","type":"transfer","from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR","reference":"` + strings.Repeat("~ ", 64) + `","metadata":{"order":7}}`,
			Command{CommandID: cid, Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "EUR", Reference: strings.Repeat("~ ", 64), Metadata: []byte(`{"order":7}`)}},
		{"up_to, the version expected", `{"command_id":"` + cid + `","type":"withdraw","account_id":"a","amount":5,"currency":"EUR","amount_mode":"up_to","expected_version":0}`,
			Command{CommandID: cid, Type: TypeWithdraw, AccountID: "a", Amount: 5, Currency: "EUR", AmountMode: AmountUpTo, ExpectedVersion: ptr(int64(0))}},
		{"exact is the default, kept as no mode", `{"command_id":"` + cid + `","type":"transfer","from_account_id":"a","to_account_id":"b","amount":5,"currency":"EUR","amount_mode":"exact"}`,
			Command{CommandID: cid, Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: 5, Currency: "EUR"}},
		{"a transaction of two legs in two currencies, with a reference", `{"command_id":"` + cid + `","type":"transaction","reference":"fx-1","legs":[` +
			`{"from_account_id":"a","to_account_id":"lp","amount":100,"currency":"EUR"},{"currency":"USD","amount":108,"to_account_id":"a-usd","from_account_id":"lp-usd"}]}`,
			Command{CommandID: cid, Type: TypeTransaction, Reference: "fx-1", Legs: []Leg{{FromAccountID: "a", ToAccountID: "lp", Amount: 100, Currency: "EUR"},
				{FromAccountID: "lp-usd", ToAccountID: "a-usd", Amount: 108, Currency: "USD"}}}},
		{"a reversal leg by leg", `{"command_id":"` + cid + `","type":"reverse","account_id":"a","transfer_id":"` + cid + `","leg_amounts":[0,5]}`,
			Command{CommandID: cid, Type: TypeReverse, AccountID: "a", TransferID: cid, LegAmounts: []int64{0, 5}}},
		{"close and sweep", `{"command_id":"` + cid + `","type":"close_account","account_id":"a","sweep_to_account_id":"b"}`,
			Command{CommandID: cid, Type: TypeCloseAccount, AccountID: "a", SweepToAccountID: "b"}},
		{"deposit, withdraw and hold take a reference too", `{"command_id":"` + cid + `","type":"hold","from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR","reference":"INV-2026/11-0001"}`,
			Command{CommandID: cid, Type: TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "EUR", Reference: "INV-2026/11-0001"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeCommand([]byte(tt.in))
			if err != nil {
				t.Fatalf("DecodeCommand() error = %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DecodeCommand() mismatch (-want +got):\n%s", diff)
			}
			again, err := DecodeCommand(got.Encode())
			if err != nil {
				t.Fatalf("DecodeCommand(Encode()) error = %v", err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("Encode round trip mismatch (-first +second):\n%s", diff)
			}
		})
	}
}

func TestDecodeCommandRejects(t *testing.T) {
	dep := func(extra string) string {
		return `{"command_id":"` + cid + `","type":"deposit","account_id":"a","currency":"EUR"` + extra + `}`
	}
	hold := func(expires string) string {
		return `{"command_id":"` + cid + `","type":"hold","from_account_id":"a","to_account_id":"b","currency":"EUR","amount":1,"expires_at":` + expires + `}`
	}
	tests := []struct {
		name, in, pointer string
	}{
		{"not json", `nope`, ""},
		{"array", `[]`, ""},
		{"trailing data", dep(`,"amount":1`) + `{}`, ""},
		{"duplicate key", dep(`,"amount":1,"amount":2`), "/amount"},
		{"unknown field", dep(`,"amount":1,"amuont":1`), "/amuont"},
		{"field of another type", dep(`,"amount":1,"to_account_id":"b"`), "/to_account_id"},
		{"missing amount", dep(``), "/amount"},
		{"zero amount", dep(`,"amount":0`), "/amount"},
		{"negative amount", dep(`,"amount":-5`), "/amount"},
		{"fractional amount", dep(`,"amount":1.5`), "/amount"},
		{"exponent amount", dep(`,"amount":1e3`), "/amount"},
		{"string amount", dep(`,"amount":"10"`), "/amount"},
		{"amount above 2^53-1", dep(`,"amount":9007199254740992`), "/amount"},
		{"amount beyond int64", dep(`,"amount":99999999999999999999`), "/amount"},
		{"lowercase currency", `{"command_id":"` + cid + `","type":"deposit","account_id":"a","currency":"eur","amount":1}`, "/currency"},
		{"unknown currency", `{"command_id":"` + cid + `","type":"deposit","account_id":"a","currency":"XYZ","amount":1}`, "/currency"},
		{"bad command id", `{"command_id":"123","type":"deposit","account_id":"a","currency":"EUR","amount":1}`, "/command_id"},
		{"missing command id", `{"type":"deposit","account_id":"a","currency":"EUR","amount":1}`, "/command_id"},
		{"unknown type", `{"command_id":"` + cid + `","type":"steal"}`, "/type"},
		{"missing type", `{"command_id":"` + cid + `"}`, "/type"},
		{"account id with space", `{"command_id":"` + cid + `","type":"deposit","account_id":"a b","currency":"EUR","amount":1}`, "/account_id"},
		{"external account id", `{"command_id":"` + cid + `","type":"withdraw","account_id":"@external:EUR","currency":"EUR","amount":1}`, "/account_id"},
		{"account id too long", `{"command_id":"` + cid + `","type":"deposit","account_id":"` + strings.Repeat("a", 65) + `","currency":"EUR","amount":1}`, "/account_id"},
		{"metadata not an object", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":[1]}`, "/metadata"},
		{"metadata too big", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":{"k":"` + strings.Repeat("x", MaxMetadataBytes) + `"}}`, "/metadata"},
		{"metadata with NUL", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":{"k":"\u0000"}}`, ""},
		{"unknown amount mode", `{"command_id":"` + cid + `","type":"withdraw","account_id":"a","amount":5,"currency":"EUR","amount_mode":"most"}`, "/amount_mode"},
		{"amount mode on a hold", `{"command_id":"` + cid + `","type":"hold","from_account_id":"a","to_account_id":"b","amount":5,"currency":"EUR","amount_mode":"up_to"}`, "/amount_mode"},
		{"negative expected version", `{"command_id":"` + cid + `","type":"withdraw","account_id":"a","amount":5,"currency":"EUR","expected_version":-1}`, "/expected_version"},
		{"expected version as a string", `{"command_id":"` + cid + `","type":"withdraw","account_id":"a","amount":5,"currency":"EUR","expected_version":"3"}`, "/expected_version"},
		{"expected version on a deposit", dep(`,"amount":1,"expected_version":1`), "/expected_version"},
		{"sweep to an external account", `{"command_id":"` + cid + `","type":"close_account","account_id":"a","sweep_to_account_id":"@external:EUR"}`, "/sweep_to_account_id"},
		{"a transaction without legs", `{"command_id":"` + cid + `","type":"transaction","legs":[]}`, "/legs"},
		{"legs not an array", `{"command_id":"` + cid + `","type":"transaction","legs":{}}`, "/legs"},
		{"65 legs", `{"command_id":"` + cid + `","type":"transaction","legs":[` + strings.Repeat(`{"from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR"},`, 64) +
			`{"from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR"}]}`, "/legs"},
		{"a leg without its amount", `{"command_id":"` + cid + `","type":"transaction","legs":[{"from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR"},{"from_account_id":"a","to_account_id":"b","currency":"EUR"}]}`, "/legs/1/amount"},
		{"a leg with a field of its own", `{"command_id":"` + cid + `","type":"transaction","legs":[{"from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR","fee":1}]}`, "/legs/0/fee"},
		{"a leg with a name twice", `{"command_id":"` + cid + `","type":"transaction","legs":[{"from_account_id":"a","to_account_id":"b","amount":1,"amount":2,"currency":"EUR"}]}`, "/legs/0/amount"},
		{"a leg that is no object", `{"command_id":"` + cid + `","type":"transaction","legs":[7]}`, "/legs/0"},
		{"a leg of a fractional amount", `{"command_id":"` + cid + `","type":"transaction","legs":[{"from_account_id":"a","to_account_id":"b","amount":1.5,"currency":"EUR"}]}`, "/legs/0/amount"},
		{"leg amounts all zero", `{"command_id":"` + cid + `","type":"reverse","account_id":"a","transfer_id":"` + cid + `","leg_amounts":[0,0]}`, "/leg_amounts"},
		{"a negative leg amount", `{"command_id":"` + cid + `","type":"reverse","account_id":"a","transfer_id":"` + cid + `","leg_amounts":[1,-1]}`, "/leg_amounts/1"},
		{"empty reference", dep(`,"amount":1,"reference":""`), "/reference"},
		{"reference of 129 characters", dep(`,"amount":1,"reference":"` + strings.Repeat("r", 129) + `"`), "/reference"},
		{"reference beyond ASCII", dep(`,"amount":1,"reference":"café"`), "/reference"},
		{"reference with a control character", dep(`,"amount":1,"reference":"a\tb"`), "/reference"},
		{"reference not a string", dep(`,"amount":1,"reference":42`), "/reference"},
		{"reference on a command that makes no transfer", `{"command_id":"` + cid + `","type":"capture","account_id":"a","hold_id":"` + cid + `","reference":"x"}`, "/reference"},
		{"metadata on a command that makes no transfer", `{"command_id":"` + cid + `","type":"release","account_id":"a","hold_id":"` + cid + `","metadata":{}}`, "/metadata"},
		{"negative overdraft", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","overdraft_limit":-1}`, "/overdraft_limit"},
		{"bad expiry", `{"command_id":"` + cid + `","type":"hold","from_account_id":"a","to_account_id":"b","currency":"EUR","amount":1,"expires_at":"tomorrow"}`, "/expires_at"},
		{"too large", `{"command_id":"` + cid + `","type":"deposit","pad":"` + strings.Repeat("x", MaxCommandBytes) + `"}`, ""},
		// Values that decode but could not be stored, encoded or published
		// as sent (issue 13: a year-10000 expiry stopped every worker).
		{"expiry past year 9999 once in UTC", hold(`"9999-12-31T23:59:59-01:00"`), "/expires_at"},
		{"expiry in year 10000", hold(`"10000-01-01T00:00:00Z"`), "/expires_at"},
		{"expiry before 1970", hold(`"0001-01-01T00:00:00Z"`), "/expires_at"},
		{"NUL in a field name", `{"command_id":"` + cid + `","type":"deposit","account_id":"a","currency":"EUR","amount":1,"x\u0000":1}`, ""},
		{"NUL in a metadata key", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":{"k\u0000":1}}`, ""},
		{"lone surrogate in metadata", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":{"s":"\ud800"}}`, ""},
		{"lone low surrogate in a name", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":{"\udc00":1}}`, ""},
		{"invalid UTF-8", "{\"command_id\":\"" + cid + "\",\"type\":\"open_account\",\"account_id\":\"a\",\"currency\":\"EUR\",\"metadata\":{\"s\":\"\xff\"}}", ""},
		{"metadata number beyond float64", `{"command_id":"` + cid + `","type":"open_account","account_id":"a","currency":"EUR","metadata":{"n":1e400}}`, "/metadata"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeCommand([]byte(tt.in))
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("DecodeCommand() error = %v, want a *ValidationError", err)
			}
			var pointers []string
			for _, fe := range verr.Errors {
				pointers = append(pointers, fe.Pointer)
				if fe.Detail == "" {
					t.Errorf("error at %q has no detail", fe.Pointer)
				}
			}
			found := false
			for _, p := range pointers {
				found = found || p == tt.pointer
			}
			if !found {
				t.Errorf("DecodeCommand() errors at %q, want one at %q", pointers, tt.pointer)
			}
			kind := map[string]string{"not json": InvalidMalformed, "array": InvalidMalformed, "trailing data": InvalidMalformed,
				"duplicate key": InvalidMalformed, "unknown type": InvalidUnknownType, "too large": InvalidTooLarge, "invalid UTF-8": InvalidMalformed}[tt.name]
			if kind == "" {
				kind = InvalidFields
			}
			if verr.Kind != kind {
				t.Errorf("Kind = %q, want %q", verr.Kind, kind)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	a, _ := DecodeCommand([]byte(`{"command_id":"` + cid + `","type":"deposit","account_id":"a","amount":1,"currency":"EUR"}`))
	b, _ := DecodeCommand([]byte(`{"currency":"EUR", "amount":1, "account_id":"a", "type":"deposit", "command_id":"` + cid + `"}`))
	c, _ := DecodeCommand([]byte(`{"command_id":"` + cid + `","type":"deposit","account_id":"a","amount":2,"currency":"EUR"}`))
	if string(a.Fingerprint()) != string(b.Fingerprint()) {
		t.Error("the same command with fields reordered has another fingerprint")
	}
	if string(a.Fingerprint()) == string(c.Fingerprint()) {
		t.Error("commands with different amounts share a fingerprint")
	}
}

func TestDebitAccount(t *testing.T) {
	tests := []struct {
		cmd  Command
		want string
	}{
		{Command{Type: TypeTransfer, FromAccountID: "a", ToAccountID: "b"}, "a"},
		{Command{Type: TypeDeposit, AccountID: "c"}, "c"},
	}
	for _, tt := range tests {
		if got := tt.cmd.DebitAccount(); got != tt.want {
			t.Errorf("%s.DebitAccount() = %q, want %q", tt.cmd.Type, got, tt.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestIdentify: what can be read of a record that is not a valid command.
func TestIdentify(t *testing.T) {
	tests := []struct {
		name, in string
		want     Identity
	}{
		{"valid command", `{"command_id":"` + strings.ToUpper(cid) + `","type":"transfer","from_account_id":"a","to_account_id":"b"}`, Identity{CommandID: cid, Type: TypeTransfer, DebitAccountID: "a"}},
		{"bad amount still names its command", `{"command_id":"` + cid + `","type":"deposit","account_id":"a","amount":"x"}`, Identity{CommandID: cid, Type: TypeDeposit, DebitAccountID: "a"}},
		{"unknown type, invalid account", `{"command_id":"` + cid + `","type":"steal","account_id":"a b"}`, Identity{CommandID: cid}},
		{"id not a UUID", `{"command_id":"x","type":"deposit"}`, Identity{Type: TypeDeposit}},
		{"id not a string", `{"command_id":1}`, Identity{}},
		{"not an object", `[1]`, Identity{}},
		{"not JSON", "\xff\x00", Identity{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Identify([]byte(tt.in)); got != tt.want {
				t.Errorf("Identify(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestRecordTime(t *testing.T) {
	tests := []struct {
		in, want time.Time
	}{
		{time.Date(2026, 1, 2, 3, 4, 5, 6789, time.FixedZone("x", 3600)), time.Date(2026, 1, 2, 2, 4, 5, 6000, time.UTC)},
		{time.UnixMilli(-1), time.Time{}},                           // Kafka's "no timestamp"
		{time.UnixMilli(1 << 62), time.Time{}},                      // beyond year 9999
		{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Time{}}, // not encodable as RFC 3339
	}
	for _, tt := range tests {
		if got := RecordTime(tt.in); !got.Equal(tt.want) {
			t.Errorf("RecordTime(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestPatternsCover(t *testing.T) {
	scoped := []string{"merchant-42", "merchant-42:*", "shared"}
	for _, tt := range []struct {
		patterns []string
		account  string
		want     bool
	}{
		{nil, "anyone", true},
		{scoped, "merchant-42", true},
		{scoped, "merchant-42:eur", true},
		{scoped, "shared", true},
		{scoped, "merchant-4", false},
		{scoped, "merchant-420", false}, // an exact pattern does not extend
		{scoped, "Merchant-42", false},  // case matters
		{scoped, "merchant-42:", true},  // the prefix itself, with its separator
		{scoped, "merchant-43", false},
		{scoped, "", false},
		{[]string{}, "merchant-42", false}, // scoped to nothing
	} {
		if got := PatternsCover(tt.patterns, tt.account); got != tt.want {
			t.Errorf("PatternsCover(%q, %q) = %v, want %v", tt.patterns, tt.account, got, tt.want)
		}
	}
}
