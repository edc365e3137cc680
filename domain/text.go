package domain

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf16"
)

// Text, numbers and times that pass decoding must also survive storing,
// encoding and publishing unchanged, or the record would be accepted and
// then fail (or be silently altered) further down: PostgreSQL's text and
// jsonb cannot hold a NUL character, encoding/json turns a lone UTF-16
// surrogate into U+FFFD, and time.Time's JSON encoding refuses years past
// 9999. (Times are cut to the microseconds PostgreSQL keeps at decoding, so
// the command holds what is stored.)

// textProblem reports why a JSON document's strings (names and values, at
// any depth) cannot be kept as sent: an escaped NUL or an escaped lone
// surrogate. data must be valid JSON. It returns "" when there is none.
func textProblem(data []byte) string {
	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			i++
			if i >= len(data) || data[i] != 'u' {
				continue
			}
			r, ok := hex4(data[i+1:])
			if !ok {
				continue // invalid JSON; the decoder refuses it
			}
			i += 4
			switch {
			case r == 0:
				return "must not contain the character \\u0000 (NUL) in any name or value"
			case utf16.IsSurrogate(rune(r)):
				if r >= 0xDC00 { // a low surrogate first
					return "must not contain a lone UTF-16 surrogate escape (\\ud800–\\udfff)"
				}
				lo, ok := uint16(0), false
				if i+2 < len(data) && data[i+1] == '\\' && data[i+2] == 'u' {
					lo, ok = hex4(data[i+3:])
				}
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return "must not contain a lone UTF-16 surrogate escape (\\ud800–\\udfff)"
				}
				i += 6
			}
		}
	}
	return ""
}

func hex4(b []byte) (uint16, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return uint16(n), err == nil
}

// finiteNumbers reports whether every number in the JSON document raw is
// one a 64-bit float can hold (|x| ≤ 1.7976931348623157e308), so that any
// consumer, JavaScript's included, can read it.
func finiteNumbers(raw []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return true // end of input; canonicalObject already refused bad JSON
		}
		if n, ok := tok.(json.Number); ok {
			if _, err := strconv.ParseFloat(string(n), 64); errors.Is(err, strconv.ErrRange) {
				return false
			}
		}
	}
}

// Bounds on times in commands: RFC 3339 can only write years 0001–9999 and
// PostgreSQL keeps microseconds.
var (
	minTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)
)

// storableTime says why t (in UTC, truncated to microseconds) cannot be
// stored and published, or "" when it can.
func storableTime(t time.Time) string {
	if t.Before(minTime) || t.After(maxTime) {
		return "must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z once converted to UTC"
	}
	return ""
}

// RecordTime is the acceptance time to show for a Kafka record's timestamp:
// t in UTC when it is a real time txpipe can store and publish, else the
// zero time (unknown). A producer other than txpipe may set any timestamp,
// or none (-1).
func RecordTime(t time.Time) time.Time {
	t = t.UTC()
	if t.Before(time.Unix(0, 0)) || t.After(maxTime) {
		return time.Time{}
	}
	return t.Truncate(time.Microsecond)
}
