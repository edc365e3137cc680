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

// sealedTable is a table whose rows hold sealed metadata.
type sealedTable struct {
	name, id string // the table and its id column
	// idType casts the cursor; plain is the legacy plaintext column
	// (accounts written before metadata was sealed), or NULL.
	idType, plain string
	aad           func(id string) []byte
}

var sealedTables = []sealedTable{
	{name: "accounts", id: "account_id", idType: "text", plain: "metadata", aad: sealing.MetadataAAD},
	{name: "transfers", id: "transfer_id", idType: "uuid", plain: "NULL::jsonb", aad: sealing.TransferMetadataAAD},
}

// ResealMetadata moves every account's and every transfer's metadata under
// the keyring's active key: values sealed under an older key are opened and
// sealed again, and plaintext left from before metadata was sealed is
// sealed and erased. It runs beside the workers: each batch locks its rows
// in id order, one table at a time, and the workers never change the
// metadata of a row that exists. Run it after putting the new key first in
// every process's keyring; once it returns no error (nothing unopened,
// nothing sealed meanwhile under another key), the old key may be dropped.
func ResealMetadata(ctx context.Context, pool *pgxpool.Pool, keyring *sealing.Keyring) (ResealReport, error) {
	rep := ResealReport{Resealed: make(map[string]int), Unopened: make(map[string]int)}
	for _, t := range sealedTables {
		after := ""
		for {
			last, err := t.resealFrom(ctx, pool, keyring, after, &rep)
			if err != nil {
				return rep, err
			}
			if last == "" {
				break
			}
			after = last
		}
	}
	if len(rep.Unopened) > 0 {
		return rep, ErrUnopened
	}
	// A process still on the old keyring (a rolling restart) may have
	// sealed a new row under the old key behind the cursor.
	for _, t := range sealedTables {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+t.name+` WHERE `+t.plain+` IS NOT NULL OR metadata_key_id <> $1`,
			keyring.Active()).Scan(&n); err != nil {
			return rep, fmt.Errorf("count metadata left behind: %w", err)
		}
		rep.Behind += n
	}
	if rep.Behind > 0 {
		return rep, ErrBehind
	}
	return rep, nil
}

// resealFrom re-seals the next batch of rows after the id after ("" for the
// first), and returns the last id it looked at ("" when none was left).
func (t sealedTable) resealFrom(ctx context.Context, pool *pgxpool.Pool, keyring *sealing.Keyring, after string, rep *ResealReport) (string, error) {
	var last string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+t.id+`::text, `+t.plain+`::text, metadata_key_id, metadata_sealed FROM `+t.name+`
			WHERE ($1 = '' OR `+t.id+` > nullif($1, '')::`+t.idType+`) AND (`+t.plain+` IS NOT NULL OR metadata_key_id <> $2)
			ORDER BY `+t.id+` LIMIT $3 FOR UPDATE`, after, keyring.Active(), resealBatch)
		if err != nil {
			return fmt.Errorf("select %s metadata to re-seal: %w", t.name, err)
		}
		var ids, keyIDs []string
		var sealed [][]byte
		for rows.Next() {
			var id string
			var plain, keyID pgtype.Text
			var ct []byte
			if err := rows.Scan(&id, &plain, &keyID, &ct); err != nil {
				rows.Close()
				return fmt.Errorf("read %s metadata to re-seal: %w", t.name, err)
			}
			last = id
			from, md := "plaintext", []byte(plain.String)
			if keyID.Valid {
				from = keyID.String
				if md, err = keyring.Open(keyID.String, ct, t.aad(id)); err != nil {
					rep.Unopened[keyID.String]++
					continue
				}
			}
			kid, s := keyring.Seal(md, t.aad(id))
			ids, keyIDs, sealed = append(ids, id), append(keyIDs, kid), append(sealed, s)
			rep.Resealed[from]++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read %s metadata to re-seal: %w", t.name, err)
		}
		if len(ids) == 0 {
			return nil
		}
		erase := ""
		if t.name == "accounts" {
			erase = "metadata = NULL, "
		}
		if _, err := tx.Exec(ctx, `UPDATE `+t.name+` AS r SET `+erase+`metadata_key_id = u.kid, metadata_sealed = u.ct
			FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u (id, kid, ct) WHERE r.`+t.id+` = u.id::`+t.idType,
			ids, keyIDs, sealed); err != nil {
			return fmt.Errorf("store re-sealed %s metadata: %w", t.name, err)
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
