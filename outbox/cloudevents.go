package outbox

import (
	"encoding/json"
	"time"
)

// Rows that carry an event — an event_id and an event_type header, as the
// workers write their outcome, posting and expiry events — are published
// as CloudEvents 1.0 in the Kafka protocol binding's binary mode
// (docs/events.md): the record's value is unchanged, and the event's
// attributes are headers. The workers store only what the relay cannot
// know (ce_time, the event's time); the relay adds the rest as it
// publishes, so the outbox rows do not carry the same strings twice.
const (
	// CloudEventsSource is every event's ce_source: the ledger.
	CloudEventsSource = "urn:txpipe:ledger"
	// CloudEventsTypePrefix prefixes an event's type in ce_type, as
	// CloudEvents asks (a type names its producer).
	CloudEventsTypePrefix = "txpipe."
)

// Header names of an event row.
const (
	HeaderEventID   = "event_id"
	HeaderEventType = "event_type"
	HeaderEventTime = "ce_time"
)

// addCloudEvents adds the CloudEvents attributes of an event row to its
// headers; rows that are not events (DLQ records) are left alone. A row
// written without ce_time (by a worker of an earlier version, during a
// rolling upgrade) gets the envelope's occurred_at.
func addCloudEvents(h *headerList, key, value []byte) {
	id, isEvent := h.get(HeaderEventID)
	typ, typed := h.get(HeaderEventType)
	if !isEvent || !typed {
		return
	}
	if _, ok := h.get(HeaderEventTime); !ok {
		var env struct {
			OccurredAt time.Time `json:"occurred_at"`
		}
		if json.Unmarshal(value, &env) == nil && !env.OccurredAt.IsZero() {
			h.set(HeaderEventTime, []byte(env.OccurredAt.UTC().Format(time.RFC3339Nano)))
		}
	}
	h.set("ce_specversion", specVersion)
	h.set("ce_id", id)
	h.set("ce_source", source)
	h.set("ce_type", append([]byte(CloudEventsTypePrefix), typ...))
	h.set("content-type", contentType)
	if len(key) > 0 {
		h.set("ce_subject", key) // the account the event is keyed by
	}
}

// The constant attributes' bytes, shared by every record (kafka-go only
// reads header values), each capped at its length so that an append to
// one copies rather than writes into the shared array.
var (
	specVersion = constBytes("1.0")
	source      = constBytes(CloudEventsSource)
	contentType = constBytes("application/json")
)

func constBytes(s string) []byte {
	b := []byte(s)
	return b[:len(b):len(b)]
}
