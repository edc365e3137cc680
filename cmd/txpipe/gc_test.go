package main

import "testing"

func TestGCDefaultsOnlyWhereTheOperatorSetNone(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	with := func(name string) func(string) (string, bool) {
		return func(k string) (string, bool) { return "x", k == name }
	}
	for _, tc := range []struct {
		role   string
		lookup func(string) (string, bool)
		ok     bool
	}{
		{"worker", none, true},
		{"relay", none, true},
		{"all", none, true},
		{"ingest", none, false},
		{"migrate", none, false},
		{"verify", none, false},
		{"worker", with("GOGC"), false},
		{"relay", with("GOMEMLIMIT"), false},
		{"worker", with("TXPIPE_LANES"), true},
	} {
		gc, ok := gcDefaults(tc.role, tc.lookup)
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v", tc.role, ok, tc.ok)
		}
		if ok && (gc.percent != 400 || gc.limit != 256<<20) {
			t.Errorf("%s: %+v, want GOGC 400 and a 256 MiB limit", tc.role, gc)
		}
	}
}
