package schematest_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/internal/schematest"
)

// TestSchemasStayBackwardCompatible compares every schema of docs/schemas
// with the same file as last released (testdata/released, a copy made by
// `make release-schemas`): none may be removed, and none may make a field
// required, remove one or narrow what it allows.
func TestSchemasStayBackwardCompatible(t *testing.T) {
	released := filepath.Join("testdata", "released")
	n := 0
	err := filepath.WalkDir(released, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		rel, _ := filepath.Rel(released, path)
		prev, next := readJSON(t, path), readJSON(t, filepath.Join("..", "..", "docs", "schemas", rel))
		if next == nil {
			t.Errorf("docs/schemas/%s was released and is gone", rel)
			return nil
		}
		for _, p := range schematest.Incompatible(prev, next) {
			t.Errorf("docs/schemas/%s breaks its consumers: %s", rel, p)
		}
		n++
		return nil
	})
	if err != nil || n < 15 {
		t.Fatalf("compared %d released schemas (%v)", n, err)
	}
}

func readJSON(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// The check itself: each kind of break is caught, and what is compatible
// passes.
func TestIncompatibleCatchesEachBreak(t *testing.T) {
	const base = `{"type":"object","required":["a"],"additionalProperties":false,"properties":{
		"a":{"type":"string","pattern":"^x"},"n":{"type":["integer","null"],"minimum":0,"maximum":10},
		"k":{"enum":["p","q"]},"o":{"type":"object","properties":{"deep":{"type":"integer"}}},
		"alt":{"oneOf":[{"const":1},{"const":2}]}}}`
	for _, c := range []struct {
		name, from, to string
		breaks         bool
	}{
		{"unchanged", `"k":{"enum":["p","q"]}`, `"k":{"enum":["p","q"]}`, false},
		{"an optional field added", `"k":{"enum":["p","q"]}`, `"k":{"enum":["p","q"]},"new":{"type":"string"}`, false},
		{"an enum widened", `["p","q"]`, `["p","q","r"]`, false},
		{"a bound relaxed", `"maximum":10`, `"maximum":20`, false},
		{"an alternative added", `{"const":2}]`, `{"const":2},{"const":3}]`, false},
		{"a description added", `"pattern":"^x"`, `"pattern":"^x","description":"why"`, false},
		{"a new required field", `"required":["a"]`, `"required":["a","k"]`, true},
		{"a field removed", `"k":{"enum":["p","q"]},`, ``, true},
		{"a nested field removed", `"properties":{"deep":{"type":"integer"}}`, `"properties":{}`, true},
		{"a type narrowed", `["integer","null"]`, `"integer"`, true},
		{"an enum narrowed", `["p","q"]`, `["p"]`, true},
		{"a bound tightened", `"minimum":0`, `"minimum":1`, true},
		{"a pattern changed", `"^x"`, `"^xy"`, true},
		{"a constraint added", `"type":"object","properties":{"deep"`, `"type":"object","additionalProperties":false,"properties":{"deep"`, true},
		{"an alternative removed", `,{"const":2}`, ``, true},
		{"an alternative changed", `{"const":2}]`, `{"const":3}]`, true},
		{"an alternative described", `{"const":2}]`, `{"const":2,"description":"two"}]`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			changed := strings.Replace(base, c.from, c.to, 1)
			if changed == base && c.from != c.to {
				t.Fatalf("%q is not in the base schema", c.from)
			}
			var prev, next any
			if err := json.Unmarshal([]byte(base), &prev); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(changed), &next); err != nil {
				t.Fatal(err)
			}
			if got := schematest.Incompatible(prev, next); (len(got) > 0) != c.breaks {
				t.Errorf("Incompatible = %q, want breaking %v", got, c.breaks)
			}
		})
	}
}
