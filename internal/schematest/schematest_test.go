package schematest

import (
	"testing"
	"time"

	"github.com/txpipe/txpipe/domain"
)

// TestSchemasAgreeWithDecoder: what the decoder accepts validates, and the
// schemas refuse what it refuses for the simple reasons a schema can see.
func TestSchemasAgreeWithDecoder(t *testing.T) {
	s := Load(t)
	exp := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	id := "0190b1c2-0000-7000-8000-000000000001"
	for _, cmd := range []domain.Command{
		{CommandID: id, Type: domain.TypeOpenAccount, AccountID: "a", Currency: "EUR", OverdraftLimit: 5, DailyDebitLimit: 9, Metadata: []byte(`{"k":1}`)},
		{CommandID: id, Type: domain.TypeDeposit, AccountID: "a", Amount: 1, Currency: "EUR"},
		{CommandID: id, Type: domain.TypeWithdraw, AccountID: "a", Amount: 1, Currency: "EUR"},
		{CommandID: id, Type: domain.TypeTransfer, FromAccountID: "a", ToAccountID: "b", Amount: domain.MaxAmount, Currency: "EUR"},
		{CommandID: id, Type: domain.TypeHold, FromAccountID: "a", ToAccountID: "b", Amount: 1, Currency: "EUR", ExpiresAt: &exp},
		{CommandID: id, Type: domain.TypeCapture, AccountID: "a", HoldID: id, Amount: 1},
		{CommandID: id, Type: domain.TypeRelease, AccountID: "a", HoldID: id},
		{CommandID: id, Type: domain.TypeReverse, AccountID: "a", TransferID: id},
		{CommandID: id, Type: domain.TypeFreezeAccount, AccountID: "a"},
		{CommandID: id, Type: domain.TypeUnfreezeAccount, AccountID: "a"},
		{CommandID: id, Type: domain.TypeCloseAccount, AccountID: "a"},
	} {
		raw := cmd.Encode()
		if _, err := domain.DecodeCommand(raw); err != nil {
			t.Fatalf("DecodeCommand(%s) = %v: fix the test case", raw, err)
		}
		if err := s.Command(raw); err != nil {
			t.Errorf("schema of %s refuses %s: %v", cmd.Type, raw, err)
		}
	}
	for _, bad := range []string{
		`{"command_id":"` + id + `","type":"deposit","account_id":"a","amount":1.5,"currency":"EUR"}`,
		`{"command_id":"` + id + `","type":"deposit","account_id":"a","amount":0,"currency":"EUR"}`,
		`{"command_id":"` + id + `","type":"deposit","account_id":"a","amount":1,"currency":"eur"}`,
		`{"command_id":"` + id + `","type":"deposit","account_id":"a","amount":1,"currency":"EUR","memo":"x"}`,
		`{"command_id":"` + id + `","type":"deposit","account_id":"a b","amount":1,"currency":"EUR"}`,
		`{"command_id":"nope","type":"deposit","account_id":"a","amount":1,"currency":"EUR"}`,
	} {
		if _, err := domain.DecodeCommand([]byte(bad)); err == nil {
			t.Fatalf("DecodeCommand(%s) accepted it: fix the test case", bad)
		}
		if err := s.Command([]byte(bad)); err == nil {
			t.Errorf("the schema accepts %s, which the API refuses", bad)
		}
	}
}
