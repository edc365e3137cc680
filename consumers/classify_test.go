package consumers

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txpipe/txpipe/consumers/ledger"
)

// TestRecordFaultsAreTheRecordsNeverTheDatabases: what splits a batch and
// dead-letters a record, and what is retried instead.
func TestRecordFaultsAreTheRecordsNeverTheDatabases(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("write batch effects: %w", &pgconn.PgError{Code: code}) }
	for _, tc := range []struct {
		name          string
		err           error
		fault, broken bool // recordFault, lockBroken
	}{
		{"a row the batch locked is missing", pg(ledger.CodeRowMissing), true, true},
		{"a row names an account the batch did not lock", fmt.Errorf("write: %w: an entry names account \"x\"", ledger.ErrNotLocked), true, true},
		{"a value the column cannot hold", pg(pgerrcode.InvalidTextRepresentation), true, false},
		{"a check constraint", pg(pgerrcode.CheckViolation), true, false},
		{"raised in the database", pg(pgerrcode.RaiseException), true, false},
		{"a unique violation (two workers racing)", pg(pgerrcode.UniqueViolation), false, false},
		{"a serialization failure", pg(pgerrcode.SerializationFailure), false, false},
		{"a server shutting down", pg(pgerrcode.AdminShutdown), false, false},
		{"a stale position", ledger.ErrFenced, false, false},
		{"a lost connection", errors.New("connection reset by peer"), false, false},
	} {
		if got := recordFault(tc.err); got != tc.fault {
			t.Errorf("%s: recordFault = %v, want %v", tc.name, got, tc.fault)
		}
		if got := lockBroken(tc.err); got != tc.broken {
			t.Errorf("%s: lockBroken = %v, want %v", tc.name, got, tc.broken)
		}
	}
}
