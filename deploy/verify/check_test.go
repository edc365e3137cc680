package verify

import (
	"strings"
	"testing"
)

// check is one rule the deploy files are held to: fn returns what breaks
// it in a parsed T (a compose stack, a Dockerfile, rendered manifests).
type check[T any] struct {
	name string
	fn   func(T) []string
}

// checkNamed returns the check called name, failing the test when there is
// none (a mutation case naming a check that does not exist proves nothing).
func checkNamed[T any](t *testing.T, checks []check[T], name string) check[T] {
	t.Helper()
	for _, c := range checks {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no check named %s", name)
	return check[T]{}
}

// edit breaks one rule of a text file: old replaced by new.
type edit struct{ check, what, old, new string }

// checksCatch proves each check can fail: every edit of orig (the file
// named file) must make its check complain about what parse reads from it.
func checksCatch[T any](t *testing.T, file, orig string, edits []edit, parse func(*testing.T, []byte) T, checks []check[T]) {
	for _, e := range edits {
		t.Run(e.check+"/"+e.what, func(t *testing.T) {
			if !strings.Contains(orig, e.old) {
				t.Fatalf("%s has no %q to replace", file, e.old)
			}
			c := checkNamed(t, checks, e.check)
			if len(c.fn(parse(t, []byte(strings.Replace(orig, e.old, e.new, 1))))) == 0 {
				t.Errorf("check %s passes a %s that breaks it", c.name, file)
			}
		})
	}
}
