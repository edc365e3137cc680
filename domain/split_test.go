package domain

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzScanObject: scanObject, the fast way to split a command into its
// members, accepts exactly what splitStrictly (json.Decoder's tokens)
// accepts, and splits it the same: the same names in the same order, the
// same raw values.
func FuzzScanObject(f *testing.F) {
	for _, s := range []string{
		`{"command_id":"0190b1c2-0000-7000-8000-000000000001","type":"transfer","from_account_id":"a","to_account_id":"b","amount":1,"currency":"EUR"}`,
		` { "a" : 1 , "b":[1,{"c":"}]\"{"}],"d":{"e":[]} , "f":null,"g":true,"h":-1.5e3 } `,
		`{}`, ` {} `, `{"a":1,"a":2}`, `{"a\u0062":1,"ab":2}`, `{"\ud800":1}`, `{"a":"x\\"}`,
		`{"a":1}{}`, `{"a":1,}`, `{"a"}`, `[]`, `"s"`, `1`, ``, ` `, "{\"a\":\"\xff\"}", `{"a":1} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, order, ok := scanObject(data)
		strictFields, strictOrder, strictOK := splitStrictly(data, &ValidationError{})
		if ok != strictOK {
			t.Fatalf("scanObject(%q) ok=%v, splitStrictly ok=%v", data, ok, strictOK)
		}
		if !ok {
			return
		}
		if diff := cmp.Diff(strictOrder, order, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("names of %q differ (-strict +scan):\n%s", data, diff)
		}
		for _, name := range order {
			if string(fields[name]) != string(strictFields[name]) {
				t.Fatalf("%q: member %q is %q by scanObject, %q by splitStrictly", data, name, fields[name], strictFields[name])
			}
		}
	})
}

// TestUnquoteIsJSONs: unquote reads a value as json.Unmarshal into a string
// does, escapes and null included.
func TestUnquoteIsJSONs(t *testing.T) {
	for raw, want := range map[string]struct {
		s  string
		ok bool
	}{
		`"acct-1"`: {"acct-1", true}, `""`: {"", true}, `"a\u0062\n"`: {"ab\n", true}, `"\ud800"`: {"\ufffd", true},
		`null`: {"", true}, `1`: {"", false}, `{}`: {"", false}, `["a"]`: {"", false}, `true`: {"", false},
	} {
		s, ok := unquote([]byte(raw))
		if s != want.s || ok != want.ok {
			t.Errorf("unquote(%s) = %q, %v; want %q, %v", raw, s, ok, want.s, want.ok)
		}
	}
}
