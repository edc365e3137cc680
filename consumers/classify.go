package consumers

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/txpipe/txpipe/consumers/ledger"
)

// recordFault reports whether err says the records themselves are at fault,
// so the batch is split and the guilty record sent to the DLQ: a data
// exception (class 22, e.g. a value the column type cannot hold), an
// integrity violation other than a unique one (class 23: not null, check),
// an exception raised in the database (P0001), or txpipe's own bug on the
// record, isolated like a panic (see lockBroken): a row the batch had
// locked found missing (ledger.CodeRowMissing), or a row naming an account
// the batch did not lock (ledger.ErrNotLocked).
//
// Everything else is the infrastructure's fault and is retried, never
// dead-lettered: a lost connection, a timeout, a serialization failure or
// deadlock, a server shutting down, a read-only standby, a schema or
// permission problem during a deploy. A unique violation is retried too: it
// is two workers racing on one command_id or account id, and the retry
// reads the winner's row. A command that got a 202 must never land in the
// DLQ because the database was unwell.
func recordFault(err error) bool {
	if errors.Is(err, ledger.ErrFenced) {
		return false
	}
	var rp *recordPanic
	if errors.As(err, &rp) {
		return true // deciding a record panicked: txpipe's bug, isolated like a bad record
	}
	if errors.Is(err, ledger.ErrNotLocked) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch {
	case pgErr.Code == pgerrcode.UniqueViolation:
		return false
	case pgerrcode.IsDataException(pgErr.Code), pgerrcode.IsIntegrityConstraintViolation(pgErr.Code),
		pgErr.Code == pgerrcode.RaiseException, pgErr.Code == ledger.CodeRowMissing:
		return true
	}
	return false
}

// lockBroken reports whether err says the batch wrote outside what it had
// locked: an update that found a locked row missing
// (ledger.CodeRowMissing), or a row naming an account it did not lock
// (ledger.ErrNotLocked). Either is a bug in txpipe, never the sender's.
func lockBroken(err error) bool {
	if errors.Is(err, ledger.ErrNotLocked) {
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == ledger.CodeRowMissing
}

// publicDetail describes a record fault for the DLQ headers: the SQLSTATE
// and the server's message, which name no credentials.
func publicDetail(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return "postgres " + pgErr.Code + ": " + pgErr.Message
	}
	return err.Error()
}
