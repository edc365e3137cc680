package outbox

import "time"

// ReclaimEvery makes the relay look for slots to truncate every d instead
// of every 1.5 s, so tests race truncations against writers often.
func ReclaimEvery(o RelayOptions, d time.Duration) RelayOptions {
	o.reclaimEvery = d
	return o
}
