// Package uuidv7 generates RFC 9562 version 7 UUIDs: 48 bits of Unix
// milliseconds then 74 random bits, so ids sort roughly by creation time and
// index well as primary keys.
package uuidv7

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// New returns a new version 7 UUID in canonical lowercase form. It is safe
// for concurrent use.
func New() string { return at(time.Now()) }

func at(t time.Time) string {
	var b [16]byte
	_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails (Go 1.24+).
	ms := uint64(t.UnixMilli())
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	b[6] = b[6]&0x0f | 0x70 // version 7
	b[8] = b[8]&0x3f | 0x80 // variant 10
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
