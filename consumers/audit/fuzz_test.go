package audit

import (
	"encoding/json"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
)

// FuzzCheckPublished: verify's decoding of posting records never panics on
// anything a topic may hold, and a record that is not JSON is reported,
// never silently accepted.
func FuzzCheckPublished(f *testing.F) {
	f.Add([]byte(`{"event_id":"e1","type":"posting.created","command_id":"c","occurred_at":"2026-01-01T00:00:00Z","data":{"account_id":"a","account_version":1,"command_type":"deposit","currency":"EUR","amount":5,"balance_after":5}}`), "a")
	f.Add([]byte(`{"event_id":"e1","data":null}`), "")
	f.Add([]byte("\x00garbage"), "k")
	f.Fuzz(func(t *testing.T, value []byte, key string) {
		db := &database{Snapshot: &ledger.Snapshot{Totals: map[string]ledger.Totals{"a": {Currency: "EUR", Balance: 5, Version: 1}}}}
		msgs := []kafka.Message{{Topic: "postings", Key: []byte(key), Value: value}, {Topic: "postings", Key: []byte(key), Value: value, Offset: 1}}
		c := checkPublished(db, msgs)
		if !json.Valid(value) && len(c.Problems) == 0 {
			t.Fatalf("a record that is not JSON passed: %q", value)
		}
		_ = checkOutcomes(&database{Snapshot: &ledger.Snapshot{Decided: map[string]ledger.Decided{}, Offsets: ledger.Positions{0: 1}}}, nil, nil, msgs)
	})
}
