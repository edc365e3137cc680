package domain

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// Event.Encode and OutcomeData.encode splice in JSON they trust instead of
// letting encoding/json scan it again: their bytes must stay exactly
// json.Marshal's, for events that use every field (a field added to
// OutcomeData or Event and not to its head or tail fails here), with
// characters encoding/json escapes.
func TestOutcomeEncodingIsJSONMarshal(t *testing.T) {
	leg, at, exp := 1, time.Date(2026, 11, 30, 9, 0, 0, 500, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))
	cmd := Command{CommandID: "c-<&>", Type: TypeTransaction, FromAccountID: "a<b>", ToAccountID: "b&c", Currency: "EUR", Amount: 5,
		Reference: "ref \u2028 é \"q\"", Legs: []Leg{{FromAccountID: "a", ToAccountID: "b", Currency: "EUR", Amount: 5}}}
	res := Result{Status: StatusRejected, Reason: ReasonInsufficientFunds, Leg: &leg,
		Postings: []Posting{{AccountID: "a<", Currency: "EUR", Amount: -5, BalanceAfter: 7, AccountVersion: 3, Reference: "r&", Digest: "ab"}},
		Transfer: &Transfer{ID: "t", Kind: "hold", FromAccountID: "a", ToAccountID: "b", Currency: "EUR", Amount: 5, Status: "pending",
			ExpiresAt: &exp, Reference: "r>", Fee: 2, Legs: []TransferLeg{{Leg: Leg{FromAccountID: "a", ToAccountID: "b", Currency: "EUR", Amount: 5}, Fee: 1}}}}
	ev := NewOutcomeEvent("e-1", cmd, &Sealed{KeyID: "k", Ciphertext: []byte{1, 2}}, res, at, at)
	ev.SubmittedBy = "0123456789abcdef"

	var data OutcomeData
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{data, ev} {
		rv := reflect.ValueOf(v)
		for i := range rv.NumField() {
			if rv.Field(i).IsZero() {
				t.Fatalf("%s.%s is not set: the test must cover every field", rv.Type().Name(), rv.Type().Field(i).Name)
			}
		}
	}
	if want, _ := json.Marshal(data); string(data.encode()) != string(want) {
		t.Errorf("OutcomeData.encode:\n got %s\nwant %s", data.encode(), want)
	}
	if want, _ := json.Marshal(ev); string(ev.Encode()) != string(want) {
		t.Errorf("Event.Encode:\n got %s\nwant %s", ev.Encode(), want)
	}
	for _, e := range []Event{NewPostingEvent("e-2", cmd, res.Postings[0], at), NewExpiryEvent("e-3", res.Transfer, at), {EventID: "e-4"}} {
		if want, _ := json.Marshal(e); string(e.Encode()) != string(want) {
			t.Errorf("Event.Encode:\n got %s\nwant %s", e.Encode(), want)
		}
	}
}
