package domain

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecodeCommand: the strict decoder never panics, refuses with a
// ValidationError that has a kind and at least one located problem, and
// whatever it accepts encodes to a canonical form that decodes to the same
// command with the same fingerprint. Seeds are in testdata/fuzz.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range []string{
		`{"command_id":"0190b1c2-0000-7000-8000-000000000001","type":"open_account","account_id":"a","currency":"EUR","metadata":{"k":[1,{"x":null}]}}`,
		`{"command_id":"0190b1c2-0000-7000-8000-000000000002","type":"transfer","from_account_id":"a","to_account_id":"b","amount":9007199254740991,"currency":"JPY"}`,
		`{"command_id":"0190b1c2-0000-7000-8000-000000000003","type":"hold","from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR","expires_at":"2030-01-01T00:00:00Z"}`,
		`{"type":"deposit","type":"deposit"}`, `[]`, `{"a":1}{}`, "\xff", `{"amount":1e400}`,
		// Found in issue 13: accepted, then Encode panicked on year 10000.
		`{"command_id":"0190b1c2-0000-7000-8000-000000000003","type":"hold","from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR","expires_at":"9999-12-31T23:59:59-01:00"}`,
		`{"command_id":"0190b1c2-0000-7000-8000-000000000004","type":"deposit","account_id":"a","amount":1,"currency":"EUR","x\u0000":1}`,
		`{"command_id":"0190b1c2-0000-7000-8000-000000000005","type":"open_account","account_id":"a","currency":"EUR","metadata":{"s":"\ud800\u0041","n":1e400}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := DecodeCommand(data)
		if err != nil {
			verr, ok := err.(*ValidationError)
			if !ok || verr.Kind == "" || len(verr.Errors) == 0 {
				t.Fatalf("DecodeCommand(%q) error %#v: want a *ValidationError with a kind and problems", data, err)
			}
			return
		}
		enc := cmd.Encode()
		again, err := DecodeCommand(enc)
		if err != nil {
			t.Fatalf("the encoding of an accepted command is refused: %v\n%s", err, enc)
		}
		if diff := cmp.Diff(cmd, again); diff != "" {
			t.Fatalf("round trip changed the command (-first +second):\n%s", diff)
		}
		if !bytes.Equal(cmd.Fingerprint(), again.Fingerprint()) || !bytes.Equal(enc, again.Encode()) {
			t.Fatalf("encoding or fingerprint not canonical:\n%s\n%s", enc, again.Encode())
		}
	})
}
