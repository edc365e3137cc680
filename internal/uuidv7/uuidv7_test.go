package uuidv7

import (
	"regexp"
	"testing"
	"time"
)

var layout = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewLayoutAndOrder(t *testing.T) {
	seen := make(map[string]bool)
	for i := 0; i < 1000; i++ {
		id := New()
		if !layout.MatchString(id) {
			t.Fatalf("New() = %q, not a version 7 UUID", id)
		}
		if seen[id] {
			t.Fatalf("New() returned %q twice", id)
		}
		seen[id] = true
	}
	early, late := at(time.UnixMilli(1000)), at(time.UnixMilli(2000))
	if early >= late {
		t.Errorf("at(1s) = %q sorts after at(2s) = %q", early, late)
	}
}
