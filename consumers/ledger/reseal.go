package ledger

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain/sealing"
)

// ResealReport says what ResealMetadata did.
type ResealReport struct {
	// Resealed counts the values moved to the active key, by the key they
	// were under ("plaintext" for values written before metadata was sealed).
	Resealed map[string]int
	// Unopened counts the values left as they were because the keyring lacks
	// their key, by that key's id.
	Unopened map[string]int
	// Behind counts the values not under the active key once the pass
	// ended: sealed meanwhile by a process still on the old keyring.
	Behind int
}

// Errors of ResealMetadata; the report says more.
var (
	// ErrUnopened means some values could not be re-sealed: their key is
	// not in the keyring.
	ErrUnopened = errors.New("some metadata is sealed under keys the keyring does not hold")
	// ErrBehind means values were sealed under another key during the pass
	// (a process not yet on the new keyring): restart it, run again.
	ErrBehind = errors.New("metadata was sealed under another key during the rotation")
)

// resealBatch is how many accounts one transaction re-seals.
const resealBatch = 500

// ResealMetadata moves every account's metadata under the keyring's active
// key: values sealed under an older key are opened and sealed again, and
// plaintext left from before metadata was sealed is sealed and erased. It
// runs beside the workers: each batch locks its accounts in id order, as the
// workers do, and the workers never write metadata. Run it after putting the
// new key first in every process's keyring; once it returns no error
// (nothing unopened, nothing sealed meanwhile under another key), the old
// key may be dropped.
func ResealMetadata(ctx context.Context, pool *pgxpool.Pool, keyring *sealing.Keyring) (ResealReport, error) {
	rep := ResealReport{Resealed: make(map[string]int), Unopened: make(map[string]int)}
	after := ""
	for {
		last, err := resealFrom(ctx, pool, keyring, after, &rep)
		if err != nil {
			return rep, err
		}
		if last == "" {
			break
		}
		after = last
	}
	if len(rep.Unopened) > 0 {
		return rep, ErrUnopened
	}
	// A process still on the old keyring (a rolling restart) may have
	// sealed a new account under the old key behind the cursor.
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM accounts WHERE metadata IS NOT NULL OR metadata_key_id <> $1`,
		keyring.Active()).Scan(&rep.Behind); err != nil {
		return rep, fmt.Errorf("count metadata left behind: %w", err)
	}
	if rep.Behind > 0 {
		return rep, ErrBehind
	}
	return rep, nil
}

// resealFrom re-seals the next batch of accounts after the id after, and
// returns the last id it looked at ("" when none was left).
func resealFrom(ctx context.Context, pool *pgxpool.Pool, keyring *sealing.Keyring, after string, rep *ResealReport) (string, error) {
	var last string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT account_id, metadata::text, metadata_key_id, metadata_sealed FROM accounts
			WHERE account_id > $1 AND (metadata IS NOT NULL OR metadata_key_id <> $2)
			ORDER BY account_id LIMIT $3 FOR UPDATE`, after, keyring.Active(), resealBatch)
		if err != nil {
			return fmt.Errorf("select metadata to re-seal: %w", err)
		}
		var ids, keyIDs []string
		var sealed [][]byte
		for rows.Next() {
			var id string
			var plain, keyID pgtype.Text
			var ct []byte
			if err := rows.Scan(&id, &plain, &keyID, &ct); err != nil {
				rows.Close()
				return fmt.Errorf("read metadata to re-seal: %w", err)
			}
			last = id
			from, md := "plaintext", []byte(plain.String)
			if keyID.Valid {
				from = keyID.String
				if md, err = keyring.Open(keyID.String, ct, sealing.MetadataAAD(id)); err != nil {
					rep.Unopened[keyID.String]++
					continue
				}
			}
			kid, s := keyring.Seal(md, sealing.MetadataAAD(id))
			ids, keyIDs, sealed = append(ids, id), append(keyIDs, kid), append(sealed, s)
			rep.Resealed[from]++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read metadata to re-seal: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE accounts AS a SET metadata = NULL, metadata_key_id = u.kid, metadata_sealed = u.ct
			FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u (id, kid, ct) WHERE a.account_id = u.id`,
			ids, keyIDs, sealed); err != nil {
			return fmt.Errorf("store re-sealed metadata: %w", err)
		}
		return nil
	})
	if err != nil {
		// The batch rolled back; the counts it added are returned with
		// the error, for the record, not as work done.
		return "", err
	}
	return last, nil
}
