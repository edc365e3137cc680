package outbox

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// parseHeaders reads a row's headers column as encoding/json would: the
// same headers for what it accepts, a refusal for what it refuses,
// whichever path read them.
func FuzzParseHeaders(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"event_id": "e1", "ce_time": "2026-11-30T09:00:00.5Z", "event_type": "posting.created"}`,
		`{"a":"1","a":"2"}`, `{"dlq_reason": "malformed", "dlq_detail": "line 1: \"x\""}`, `{"a": "\u00e9"}`,
		`{"a": "é"}`, "{\"a\": \"\xff\"}", "{\"a\": \"\x01\"}", `{"a": 1}`, `{"a": null}`, `null`, `[]`, `{"a": "1",}`,
		`{"a" "1"}`, `{"a": "1"} x`, `{"a": "1"`, `{`, ``, `"a"`, `{"a": {"b": "c"}}`, `{"": ""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want map[string]string
		wantErr := json.Unmarshal(b, &want)
		h, err := parseHeaders(b)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("parseHeaders(%q): error %v, encoding/json's %v", b, err, wantErr)
		}
		if err != nil {
			return
		}
		got := map[string]string{}
		for _, x := range h {
			if _, dup := got[x.Key]; dup {
				t.Fatalf("parseHeaders(%q): header %q twice", b, x.Key)
			}
			got[x.Key] = string(x.Value)
		}
		if want == nil {
			want = map[string]string{}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("parseHeaders(%q) (-encoding/json +got):\n%s", b, diff)
		}
	})
}

// The workers' rows are read without encoding/json, values in place.
func TestPlainHeadersAreReadInPlace(t *testing.T) {
	b := []byte(`{"event_id": "e1", "ce_time": "2026-11-30T09:00:00.5Z", "event_type": "posting.created"}`)
	h, ok := parsePlainHeaders(b)
	if !ok {
		t.Fatal("a worker's headers took the slow path")
	}
	v, _ := h.get(HeaderEventID)
	b[bytes.Index(b, []byte(`"e1"`))+1] = 'X' // the value's first byte
	if string(v) != "X1" {
		t.Errorf("event_id = %q after changing the row's bytes, want it to alias them", v)
	}
}

// The headers column gets what encoding/json would have written, once
// PostgreSQL has read it: the same members, whatever their strings hold.
func FuzzHeadersJSON(f *testing.F) {
	for _, s := range [][2]string{{"event_id", "e1"}, {"a\"b", "c"}, {"k", "line\nbreak"}, {"k", "\xff"}, {"k", "<&>"}, {"", ""}, {"k", "\\"}, {"k", "é\u2028"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, k, v string) {
		for _, h := range []map[string]string{nil, {}, {k: v}, {k: v, "event_type": "posting.created", "ce_time": "2026-11-30T09:00:00Z"}} {
			want, _ := json.Marshal(h)
			var wantM, gotM map[string]string
			if err := json.Unmarshal(want, &wantM); err != nil {
				t.Fatal(err)
			}
			got := headersJSON(h)
			if err := json.Unmarshal([]byte(got), &gotM); err != nil {
				t.Fatalf("headersJSON(%q) = %s: %v", h, got, err)
			}
			if wantM == nil {
				wantM = map[string]string{}
			}
			if diff := cmp.Diff(wantM, gotM); diff != "" {
				t.Fatalf("headersJSON(%q) = %s (-encoding/json +got):\n%s", h, got, diff)
			}
		}
	})
}
