package outbox

import "time"

// WithoutReclaim turns slot truncation off, for the benchmark's candidates
// that keep the outbox in one table.
func WithoutReclaim(o RelayOptions) RelayOptions {
	o.noReclaim = true
	return o
}

// ReclaimEvery makes the relay look for slots to truncate every d instead
// of every 5 s, so tests race truncations against writers often.
func ReclaimEvery(o RelayOptions, d time.Duration) RelayOptions {
	o.reclaimEvery = d
	return o
}
