package domain

import (
	"fmt"
	"testing"
)

func BenchmarkDecodeCommand(b *testing.B) {
	raw := []byte(`{"command_id":"` + cid + `","type":"transfer","from_account_id":"acct-1","to_account_id":"acct-2","amount":1250,"currency":"EUR"}`)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeCommand(raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApplyTransfer(b *testing.B) {
	book := NewBook()
	for i := range 1000 {
		id := fmt.Sprintf("acct-%d", i)
		book.Accounts[id] = &Account{ID: id, Currency: "EUR", Status: AccountActive, Balance: 1 << 40}
	}
	cmds := make([]Command, 1000)
	for i := range cmds {
		cmds[i] = Command{CommandID: cid, Type: TypeTransfer, FromAccountID: fmt.Sprintf("acct-%d", i), ToAccountID: fmt.Sprintf("acct-%d", (i+1)%1000), Amount: 1, Currency: "EUR"}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if res := book.Apply(cmds[i%len(cmds)], now); res.Status != StatusApplied {
			b.Fatalf("Apply() = %s", res.Reason)
		}
		i++
	}
}
