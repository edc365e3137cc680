package outbox

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"
)

// headerList is a record's headers while the relay makes it: a handful, so
// a slice searched in order costs less than a map, and the values can be
// the row's own bytes.
type headerList []kafka.Header

// get returns the value of header k.
func (h headerList) get(k string) ([]byte, bool) {
	for _, x := range h {
		if x.Key == k {
			return x.Value, true
		}
	}
	return nil, false
}

// set sets header k to v, replacing an earlier value.
func (h *headerList) set(k string, v []byte) {
	for i := range *h {
		if (*h)[i].Key == k {
			(*h)[i].Value = v
			return
		}
	}
	*h = append(*h, kafka.Header{Key: k, Value: v})
}

// sorted returns h ordered by name, so a row's record always carries its
// headers in the same order.
func (h headerList) sorted() headerList {
	slices.SortFunc(h, func(a, b kafka.Header) int { return strings.Compare(a.Key, b.Key) })
	return h
}

// headersJSON is h as the headers column's JSON object. The column is
// jsonb, which keeps neither the order of members nor the spelling of
// strings, so plain strings (nothing JSON escapes, valid UTF-8), as every
// header the workers write, are written as they are, in map order; a
// header that needs escaping sends h through encoding/json.
func headersJSON(h map[string]string) string {
	n := 2
	for k, v := range h {
		if !plainJSONString(k) || !plainJSONString(v) {
			b, _ := json.Marshal(h) // a map of strings always encodes
			return string(b)
		}
		n += len(k) + len(v) + 6
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteByte('{')
	for k, v := range h {
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(k)
		b.WriteString(`":"`)
		b.WriteString(v)
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// plainJSONString reports whether s needs no escaping in a JSON string.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' {
			return false
		}
	}
	return utf8.ValidString(s)
}

// parseHeaders reads an outbox row's headers column: a JSON object of
// strings (jsonb as PostgreSQL prints it). The common shape, plain strings
// with no escapes, is read in place; anything else goes through
// encoding/json, whose answer (and refusal) is the rule.
func parseHeaders(b []byte) (headerList, error) {
	if h, ok := parsePlainHeaders(b); ok {
		return h, nil
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	h := make(headerList, 0, len(m)+8)
	for k, v := range m {
		h = append(h, kafka.Header{Key: k, Value: []byte(v)})
	}
	return h, nil
}

// parsePlainHeaders reads b when it is a JSON object whose keys and values
// are strings without escapes or control characters, in valid UTF-8;
// otherwise it says no. Values alias b. A repeated key keeps its last
// value, as encoding/json does.
func parsePlainHeaders(b []byte) (headerList, bool) {
	h := make(headerList, 0, 16)
	i := skipSpace(b, 0)
	if i == len(b) || b[i] != '{' {
		return nil, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return h, skipSpace(b, i+1) == len(b)
	}
	for {
		k, next, ok := plainString(b, i)
		if !ok {
			return nil, false
		}
		i = skipSpace(b, next)
		if i == len(b) || b[i] != ':' {
			return nil, false
		}
		v, next, ok := plainString(b, skipSpace(b, i+1))
		if !ok {
			return nil, false
		}
		h.set(headerName(k), v)
		i = skipSpace(b, next)
		if i == len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return h, skipSpace(b, i+1) == len(b)
		default:
			return nil, false
		}
	}
}

// plainString reads the JSON string starting at b[i] when it has no
// escapes or control characters and is valid UTF-8: its contents and the
// index after its closing quote.
func plainString(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	end := bytes.IndexByte(b[i+1:], '"')
	if end < 0 {
		return nil, 0, false
	}
	s = b[i+1 : i+1+end]
	for _, c := range s {
		if c == '\\' || c < 0x20 {
			return nil, 0, false
		}
	}
	if !utf8.Valid(s) {
		return nil, 0, false
	}
	return s, i + 2 + end, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// headerName is k as a string, without a copy for the names the workers
// write.
func headerName(k []byte) string {
	switch string(k) {
	case HeaderEventID:
		return HeaderEventID
	case HeaderEventType:
		return HeaderEventType
	case HeaderEventTime:
		return HeaderEventTime
	case "command_id":
		return "command_id"
	}
	return string(k)
}
