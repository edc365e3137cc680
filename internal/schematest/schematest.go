// Package schematest validates commands and events against the JSON
// Schemas published in docs/schemas, so the documents analysts read are
// checked against what the pipeline really produces.
package schematest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/txpipe/txpipe/domain"
)

// Schemas are the compiled schemas of docs/schemas.
type Schemas struct {
	commands  map[domain.Type]*jsonschema.Schema
	outcome   *jsonschema.Schema
	posting   *jsonschema.Schema
	expired   *jsonschema.Schema
	dead      *jsonschema.Schema
	statement *jsonschema.Schema
	balance   *jsonschema.Schema
}

// Load compiles docs/schemas, found by walking up from the working
// directory to the module root.
func Load(t testing.TB) *Schemas {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
	root := filepath.Join(dir, "docs", "schemas")
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	compile := func(rel string) *jsonschema.Schema {
		s, err := c.Compile(filepath.Join(root, rel))
		if err != nil {
			t.Fatalf("compile schema %s: %v", rel, err)
		}
		return s
	}
	s := &Schemas{commands: make(map[domain.Type]*jsonschema.Schema)}
	for _, typ := range domain.Types() {
		s.commands[typ] = compile(filepath.Join("commands", string(typ)+".schema.json"))
	}
	s.outcome = compile("events/outcome.schema.json")
	s.posting = compile("events/posting.schema.json")
	s.expired = compile("events/hold_expired.schema.json")
	s.dead = compile("events/dead_lettered.schema.json")
	s.statement = compile("events/statement_closed.schema.json")
	s.balance = compile("balances/balance.schema.json")
	return s
}

// Command validates one command's JSON against the schema of its type.
func (s *Schemas) Command(value []byte) error {
	var head struct{ Type domain.Type }
	if err := json.Unmarshal(value, &head); err != nil {
		return err
	}
	sch, ok := s.commands[head.Type]
	if !ok {
		return fmt.Errorf("no schema for command type %q", head.Type)
	}
	return validate(sch, value)
}

// Event validates one record of the events or postings topic against the
// schema of its type.
func (s *Schemas) Event(value []byte) error {
	var head struct{ Type string }
	if err := json.Unmarshal(value, &head); err != nil {
		return err
	}
	switch head.Type {
	case domain.EventTypePosting:
		return validate(s.posting, value)
	case domain.EventTypeHoldExpired:
		return validate(s.expired, value)
	case domain.EventTypeDeadLettered:
		return validate(s.dead, value)
	case domain.EventTypeStatementClosed:
		return validate(s.statement, value)
	}
	return validate(s.outcome, value)
}

// Balance validates one record of the balances topic.
func (s *Schemas) Balance(value []byte) error { return validate(s.balance, value) }

func validate(sch *jsonschema.Schema, value []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}
