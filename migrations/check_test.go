package migrations

import (
	"errors"
	"strings"
	"testing"
	"testing/fstest"
)

func TestTwoFilesWithOneNumberAreRefused(t *testing.T) {
	fsys := fstest.MapFS{
		"0001_ledger.sql":   {Data: []byte("SELECT 1")},
		"0002_outbox.sql":   {Data: []byte("SELECT 2")},
		"0002_accounts.sql": {Data: []byte("SELECT 3")},
	}
	_, err := parse(fsys)
	if err == nil || !strings.Contains(err.Error(), "0002_accounts.sql and 0002_outbox.sql share the number 2") {
		t.Fatalf("parse = %v, want the two files named", err)
	}
	delete(fsys, "0002_accounts.sql")
	ms, err := parse(fsys)
	if err != nil || len(ms) != 2 || ms[1].Name != "0002_outbox.sql" {
		t.Fatalf("parse = %v, %v", ms, err)
	}
	for _, bad := range []string{"ledger.sql", "0_zero.sql", "x1_a.sql"} {
		if _, err := parse(fstest.MapFS{bad: {Data: []byte("SELECT 1")}}); err == nil {
			t.Errorf("parse accepted %s", bad)
		}
	}
}

func TestCompareSaysAheadBehindOrEqual(t *testing.T) {
	known := []Migration{{Version: 1, Name: "0001_a.sql"}, {Version: 2, Name: "0002_b.sql"}}
	if err := compare(known, known); err != nil {
		t.Errorf("same: %v", err)
	}
	err := compare(known, known[:1])
	if !errors.Is(err, ErrSchemaBehind) || !strings.Contains(err.Error(), "0002_b.sql") {
		t.Errorf("behind: %v", err)
	}
	err = compare(known, append(known[:2:2], Migration{Version: 3, Name: "0003_c.sql"}))
	if !errors.Is(err, ErrSchemaAhead) || !strings.Contains(err.Error(), "0003_c.sql") || !strings.Contains(err.Error(), "0002_b.sql") {
		t.Errorf("ahead: %v", err)
	}
	err = compare(known, []Migration{{Version: 1, Name: "0001_a.sql"}, {Version: 2, Name: "0002_other_branch.sql"}})
	if !errors.Is(err, ErrSchemaDiverged) || !strings.Contains(err.Error(), "0002_other_branch.sql where this binary has 0002_b.sql") {
		t.Errorf("diverged: %v", err)
	}
}
