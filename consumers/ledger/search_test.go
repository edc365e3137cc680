package ledger_test

import (
	"testing"
	"time"

	"github.com/txpipe/txpipe/consumers/ledger"
)

// A cursor survives its round trip to the microsecond PostgreSQL keeps,
// and anything else a client sends as one is refused, never misread.
func TestCursorRoundTripAndRefusals(t *testing.T) {
	c := ledger.Cursor{At: time.Date(2026, 11, 30, 9, 58, 54, 493971000, time.UTC), ID: "01900000-0000-7000-8000-000000000013"}
	got, ok := ledger.ParseCursor(c.String())
	if !ok || got != c {
		t.Errorf("ParseCursor(%q) = %+v, %v; want %+v", c.String(), got, ok, c)
	}
	if got, ok := ledger.ParseCursor(ledger.Cursor{ID: c.ID}.String()); !ok || !got.At.IsZero() {
		t.Errorf("a cursor without a time = %+v, %v; want the zero time back", got, ok)
	}
	for _, bad := range []string{"", "x", "MTIz", "LTEvMDE5MDAwMDAtMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDEz==", // padded
		"MTIzL25vdC1hLXV1aWQ", // "123/not-a-uuid"
		"YWJjLzAxOTAwMDAwLTAwMDAtNzAwMC04MDAwLTAwMDAwMDAwMDAxMw", // "abc/<uuid>"
		// Times PostgreSQL would refuse (503 instead of 400): year -7537,
		// and past 9999.
		ledger.Cursor{At: time.UnixMicro(-300000000000000000), ID: c.ID}.String(),
		ledger.Cursor{At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), ID: c.ID}.String(),
	} {
		if got, ok := ledger.ParseCursor(bad); ok {
			t.Errorf("ParseCursor(%q) = %+v, true; want it refused", bad, got)
		}
	}
}

func FuzzParseCursor(f *testing.F) {
	f.Add("MTIzL25vdC1hLXV1aWQ")
	f.Fuzz(func(t *testing.T, s string) {
		if c, ok := ledger.ParseCursor(s); ok {
			if again, ok := ledger.ParseCursor(c.String()); !ok || again != c {
				t.Errorf("ParseCursor(%q) = %+v, which does not round-trip", s, c)
			}
		}
	})
}
