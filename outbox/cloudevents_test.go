package outbox

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// An event row gets the CloudEvents attributes; a row written without
// ce_time (by an earlier worker) gets the envelope's time; a DLQ row
// gets nothing.
func TestCloudEventsHeaders(t *testing.T) {
	value := []byte(`{"event_id":"e1","type":"posting.created","occurred_at":"2026-11-30T10:00:00.5+01:00","data":{}}`)
	for _, c := range []struct {
		name string
		in   map[string]string
		want map[string]string
	}{
		{"an event row", map[string]string{"event_id": "e1", "event_type": "posting.created", "ce_time": "2026-11-30T09:00:00.5Z"},
			map[string]string{"event_id": "e1", "event_type": "posting.created", "ce_time": "2026-11-30T09:00:00.5Z", "ce_specversion": "1.0",
				"ce_id": "e1", "ce_source": "urn:txpipe:ledger", "ce_type": "txpipe.posting.created", "content-type": "application/json", "ce_subject": "alice"}},
		{"an event row of an earlier worker", map[string]string{"event_id": "e1", "event_type": "posting.created"},
			map[string]string{"event_id": "e1", "event_type": "posting.created", "ce_time": "2026-11-30T09:00:00.5Z", "ce_specversion": "1.0",
				"ce_id": "e1", "ce_source": "urn:txpipe:ledger", "ce_type": "txpipe.posting.created", "content-type": "application/json", "ce_subject": "alice"}},
		{"a DLQ row", map[string]string{"dlq_reason": "malformed"}, map[string]string{"dlq_reason": "malformed"}},
	} {
		var h headerList
		for k, v := range c.in {
			h.set(k, []byte(v))
		}
		addCloudEvents(&h, []byte("alice"), value)
		got := map[string]string{}
		for _, x := range h {
			got[x.Key] = string(x.Value)
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, diff)
		}
	}
}
