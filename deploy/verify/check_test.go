package verify

import "testing"

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
