package outbox

import "time"

// ReclaimEvery makes the relay look for slots to truncate every d instead
// of every 1.5 s, so tests race truncations against writers often.
func ReclaimEvery(o RelayOptions, d time.Duration) RelayOptions {
	o.reclaimEvery = d
	return o
}

// ShardOf is shardOf, for the test that holds it to PostgreSQL's.
func ShardOf(key []byte) int16 { return shardOf(key) }

// Packed is a row's records column holding records given as topic, key,
// value and headers exactly as written (none accepted).
func Packed(records ...[4]string) []byte {
	b := []byte{rowFormat}
	for _, r := range records {
		b = appendRecord(b, r[0], []byte(r[1]), []byte(r[2]), r[3], time.Time{})
	}
	return b
}
