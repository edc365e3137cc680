package consumers

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// transient reports whether err may go away on its own, so the batch should
// be retried whole rather than split: lost or refused connections, timeouts,
// serialization failures and deadlocks, a server shutting down or out of
// resources, and unique violations (two workers racing on one command_id or
// account id, which a retry resolves by reading the winner's row). Any other
// PostgreSQL error is a fault of the data and is isolated to the DLQ. The
// fence error is neither: the caller handles it first.
func transient(err error) bool {
	if errors.Is(err, errFenced) {
		return false
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Not a server-side SQL error: the connection, the network or a
		// timeout failed, which says nothing about the records.
		return true
	}
	switch {
	case strings.HasPrefix(pgErr.Code, "08"), // connection exception
		strings.HasPrefix(pgErr.Code, "40"), // transaction rollback: 40001, 40P01
		strings.HasPrefix(pgErr.Code, "53"), // insufficient resources
		strings.HasPrefix(pgErr.Code, "57"), // operator intervention: shutdown, cancel
		strings.HasPrefix(pgErr.Code, "58"), // system error (I/O)
		pgErr.Code == "55P03",               // lock not available
		pgErr.Code == "23505":               // unique violation: a race, see above
		return true
	}
	return false
}

// publicDetail describes a non-transient failure for the DLQ headers: the
// SQLSTATE and the server's message, which name no credentials.
func publicDetail(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return "postgres " + pgErr.Code + ": " + pgErr.Message
	}
	return err.Error()
}
