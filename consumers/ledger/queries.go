package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
)

// ErrNotFound means no row has the id asked for.
var ErrNotFound = errors.New("not found")

// Queries answers the API's reads of the ledger. Account metadata is
// opened here, and only here, with the keyring.
type Queries struct {
	Pool    *pgxpool.Pool
	Keyring *sealing.Keyring
	// Timeout bounds each read (0: none). On expiry pgx closes the
	// connection (its default context handling; PostgreSQL ends the
	// statement when it next writes to the client), which works through
	// PgBouncer too (a statement_timeout startup parameter does not).
	// txpipe never has pgx send cancel requests instead: a COMMIT waiting
	// for a synchronous standby, once cancelled, commits locally without
	// it (docs/operations.md, "PostgreSQL failover").
	Timeout time.Duration
}

// ReadTimeout is the API's bound on a read: no query string can keep a
// connection busy longer (the request then answers 503).
const ReadTimeout = 5 * time.Second

// bound limits ctx to q.Timeout.
func (q *Queries) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if q.Timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, q.Timeout)
}

// Outcome is what became of a command: its stored decision, or its
// dead-lettering. Type is "" when a dead-lettered record's type could not
// be read.
type Outcome struct {
	CommandID, Type, Status string
	Reason, Detail          *string
	// DebitAccountID is the account the command moves money from or acts
	// on ("" when a dead-lettered record named none).
	DebitAccountID string
	// Leg is the transaction leg a rejection is about.
	Leg *int
	// At is when it was decided or dead-lettered.
	At time.Time
}

// Outcome returns the outcome of command id (a canonical UUID), or
// ErrNotFound while it has none. A decision wins over a dead-lettering,
// whichever came first: a replay that decided the command replaces
// dead_lettered.
func (q *Queries) Outcome(ctx context.Context, id string) (Outcome, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var o Outcome
	err := q.Pool.QueryRow(ctx, `SELECT command_id::text, type, status, reason, NULL, processed_at, leg::int, debit_account_id
		FROM processed_commands WHERE command_id = $1
		UNION ALL
		SELECT command_id::text, coalesce(type, ''), 'dead_lettered', reason, detail, dead_lettered_at, NULL, coalesce(debit_account_id, '')
		FROM dead_lettered_commands WHERE command_id = $1
			AND NOT EXISTS (SELECT 1 FROM processed_commands WHERE command_id = $1)`,
		id).Scan(&o.CommandID, &o.Type, &o.Status, &o.Reason, &o.Detail, &o.At, &o.Leg, &o.DebitAccountID)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, ErrNotFound
	}
	o.At = o.At.UTC()
	return o, err
}

// Account is an account as the API shows it.
type Account struct {
	ID, Currency, Status string
	External             bool
	Balance, Held        int64
	OverdraftLimit       int64
	DailyDebitLimit      int64 // 0: none
	Version              int64
	// Metadata is the plaintext, opened; nil when the account has none.
	Metadata json.RawMessage
	// FeePlan is the fee the account pays on what it sends; nil for none.
	FeePlan              *domain.FeePlan
	CreatedAt, UpdatedAt time.Time
}

const selectAccount = `SELECT account_id, currency, status, external, balance, held, overdraft_limit, daily_debit_limit,
		version, metadata::text, metadata_key_id, metadata_sealed, created_at, updated_at, fee_plan
	FROM accounts`

// Account returns account id, or ErrNotFound. Metadata sealed under a key
// the keyring lacks is an error (sealing.ErrUnknownKey), not an account
// without metadata.
func (q *Queries) Account(ctx context.Context, id string) (Account, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	a, err := q.scanAccount(q.Pool.QueryRow(ctx, selectAccount+` WHERE account_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, ErrNotFound
	}
	return a, err
}

// scanAccount reads a row of selectAccount and opens its metadata.
func (q *Queries) scanAccount(row pgx.Row) (Account, error) {
	var a Account
	var plain, keyID pgtype.Text
	var sealed, plan []byte
	err := row.Scan(&a.ID, &a.Currency, &a.Status, &a.External, &a.Balance, &a.Held, &a.OverdraftLimit, &a.DailyDebitLimit,
		&a.Version, &plain, &keyID, &sealed, &a.CreatedAt, &a.UpdatedAt, &plan)
	if err != nil {
		return a, err
	}
	if plan != nil {
		a.FeePlan = &domain.FeePlan{}
		if err := json.Unmarshal(plan, a.FeePlan); err != nil {
			return a, fmt.Errorf("read the fee plan of account %s: %w", a.ID, err)
		}
	}
	switch {
	case keyID.Valid:
		md, err := q.open(keyID.String, sealed, sealing.MetadataAAD(a.ID))
		if err != nil {
			return a, fmt.Errorf("open the metadata of account %s: %w", a.ID, err)
		}
		a.Metadata = md
	case plain.Valid: // written before metadata was sealed; `metadata-key rotate` seals it
		a.Metadata = json.RawMessage(plain.String)
	}
	a.CreatedAt, a.UpdatedAt = a.CreatedAt.UTC(), a.UpdatedAt.UTC()
	return a, nil
}

// StatementEntry is one line of an account's statement.
type StatementEntry struct {
	AccountVersion         int64
	CommandID, CommandType string
	Currency               string
	Amount, BalanceAfter   int64
	CreatedAt              time.Time
}

// Statement returns up to limit entries of account id, newest first, with
// versions below before (0: from the newest), or ErrNotFound when no
// account has the id. Versions never change once written and new entries
// only get higher ones, so a page never shifts under concurrent writes.
func (q *Queries) Statement(ctx context.Context, id string, before, limit int64) ([]StatementEntry, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var exists bool
	if err := q.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)`, id).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, ErrNotFound
	}
	rows, err := q.Pool.Query(ctx, `SELECT account_version, command_id::text, command_type, currency, amount, balance_after, created_at
		FROM entries WHERE account_id = $1 AND ($2 = 0 OR account_version < $2)
		ORDER BY account_version DESC LIMIT $3`, id, before, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (StatementEntry, error) {
		var e StatementEntry
		err := row.Scan(&e.AccountVersion, &e.CommandID, &e.CommandType, &e.Currency, &e.Amount, &e.BalanceAfter, &e.CreatedAt)
		e.CreatedAt = e.CreatedAt.UTC()
		return e, err
	})
}

// Transfer is a transfer, deposit, withdrawal or hold as the API shows it.
type Transfer struct {
	domain.TransferData
	// Metadata is the plaintext of the command's metadata, opened; nil
	// when it had none.
	Metadata             json.RawMessage
	CreatedAt, UpdatedAt time.Time
}

// selectTransfersAs reads transfers as t, legs aggregated.
const selectTransfersAs = `SELECT t.transfer_id::text, t.kind, t.from_account_id, t.to_account_id, t.currency, t.amount,
		t.captured_amount, t.reversed_amount, t.status, t.expires_at, coalesce(t.reference, ''), t.metadata_key_id, t.metadata_sealed,
		t.created_at, t.updated_at,
		(SELECT jsonb_agg(jsonb_build_object('from_account_id', l.from_account_id, 'to_account_id', l.to_account_id,
				'amount', l.amount, 'currency', l.currency, 'fee', l.fee, 'reversed_amount', l.reversed_amount) ORDER BY l.leg)
			FROM transfer_legs l WHERE l.transfer_id = t.transfer_id), t.fee
	FROM transfers t `

// Transfer returns transfer id (a canonical UUID), or ErrNotFound.
func (q *Queries) Transfer(ctx context.Context, id string) (Transfer, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	t, err := q.scanTransfer(q.Pool.QueryRow(ctx, selectTransfersAs+`WHERE t.transfer_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, ErrNotFound
	}
	return t, err
}

// scanTransfer reads a row of selectTransfersAs and opens its metadata.
func (q *Queries) scanTransfer(row pgx.Row) (Transfer, error) {
	var t Transfer
	var kind, status string
	var expires pgtype.Timestamptz
	var keyID pgtype.Text
	var sealed, legs []byte
	err := row.Scan(&t.TransferID, &kind, &t.FromAccountID, &t.ToAccountID, &t.Currency,
		&t.Amount, &t.CapturedAmount, &t.ReversedAmount, &status, &expires, &t.Reference, &keyID, &sealed, &t.CreatedAt, &t.UpdatedAt, &legs, &t.Fee)
	if err != nil {
		return t, err
	}
	t.Kind, t.Status = domain.TransferKind(kind), domain.TransferStatus(status)
	if expires.Valid {
		e := expires.Time.UTC()
		t.ExpiresAt = &e
	}
	if legs != nil {
		if err := json.Unmarshal(legs, &t.Legs); err != nil {
			return t, fmt.Errorf("read the legs of transfer %s: %w", t.TransferID, err)
		}
	}
	if keyID.Valid {
		if t.Metadata, err = q.open(keyID.String, sealed, sealing.TransferMetadataAAD(t.TransferID)); err != nil {
			return t, fmt.Errorf("open the metadata of transfer %s: %w", t.TransferID, err)
		}
	}
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	return t, nil
}

// open opens sealed metadata: the one place the API's reads do.
func (q *Queries) open(keyID string, sealed, aad []byte) (json.RawMessage, error) {
	if q.Keyring == nil {
		return nil, errors.New("no keyring")
	}
	return q.Keyring.Open(keyID, sealed, aad)
}
