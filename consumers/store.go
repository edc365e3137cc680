package consumers

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/txpipe/txpipe/domain"
)

// Lock order, everywhere a transaction takes more than one kind of row lock:
// the partition's consumer_offsets row, then transfers in transfer_id order,
// then accounts in account_id order. No transaction waits for a transfer
// while it holds an account, so the workers and the hold expirer cannot
// deadlock one another.

// queueLockTransfers loads and locks the transfers ids into book, in id
// order, and marks them in loaded.
func queueLockTransfers(b *pgx.Batch, ids []string, book *domain.Book, loaded map[string]bool) {
	b.Queue(`SELECT transfer_id::text, kind, from_account_id, to_account_id, currency, amount,
			captured_amount, reversed_amount, status, expires_at
		FROM transfers WHERE transfer_id = ANY($1::uuid[]) ORDER BY transfer_id FOR UPDATE`, ids).Query(func(rows pgx.Rows) error {
		return scanTransfers(rows, book, loaded)
	})
}

func scanTransfers(rows pgx.Rows, book *domain.Book, loaded map[string]bool) error {
	for rows.Next() {
		t := &domain.Transfer{}
		var kind, status string
		var expires pgtype.Timestamptz
		if err := rows.Scan(&t.ID, &kind, &t.FromAccountID, &t.ToAccountID, &t.Currency, &t.Amount,
			&t.CapturedAmount, &t.ReversedAmount, &status, &expires); err != nil {
			return err
		}
		t.Kind, t.Status = domain.TransferKind(kind), domain.TransferStatus(status)
		if expires.Valid {
			e := expires.Time.UTC()
			t.ExpiresAt = &e
		}
		book.Transfers[t.ID] = t
		loaded[t.ID] = true
	}
	return rows.Err()
}

// queueLockAccounts loads and locks the accounts ids into book, in id order.
func queueLockAccounts(b *pgx.Batch, ids []string, book *domain.Book) {
	b.Queue(`SELECT account_id, currency, status, external, balance, held, overdraft_limit, daily_debit_limit,
			coalesce(to_char(daily_debit_day, 'YYYY-MM-DD'), ''), daily_debited, version
		FROM accounts WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE`, ids).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			a := &domain.Account{}
			var status string
			if err := rows.Scan(&a.ID, &a.Currency, &status, &a.External, &a.Balance, &a.Held, &a.OverdraftLimit,
				&a.DailyDebitLimit, &a.DailyDebitDay, &a.DailyDebited, &a.Version); err != nil {
				return err
			}
			a.Status = domain.AccountStatus(status)
			book.Accounts[a.ID] = a
		}
		return rows.Err()
	})
}

// queueInsertAccounts creates the accounts this batch opened. A plain
// INSERT on purpose: if another partition opened the same id concurrently
// (a second open_account under another command_id, or a producer that keys
// records differently), the unique violation rolls this batch back and its
// retry sees the row and rejects with account_exists. An upsert would
// silently overwrite the other account. Metadata is written only sealed.
func queueInsertAccounts(b *pgx.Batch, accounts []*domain.Account, sealed map[string]domain.Sealed, now time.Time) {
	n := len(accounts)
	ids, currencies, statuses, days, keyIDs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	balance, held, overdraft, daily, debited, versions := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	ciphertexts := make([][]byte, n)
	for i, a := range accounts {
		ids[i], currencies[i], statuses[i], days[i] = a.ID, a.Currency, string(a.Status), a.DailyDebitDay
		balance[i], held[i], overdraft[i], daily[i], debited[i], versions[i] = a.Balance, a.Held, a.OverdraftLimit, a.DailyDebitLimit, a.DailyDebited, a.Version
		if s, ok := sealed[a.ID]; ok {
			keyIDs[i], ciphertexts[i] = s.KeyID, s.Ciphertext
		}
	}
	b.Queue(`INSERT INTO accounts (account_id, currency, status, balance, held, overdraft_limit,
			daily_debit_limit, daily_debit_day, daily_debited, version, metadata_key_id, metadata_sealed, created_at, updated_at)
		SELECT id, cur, st, bal, hld, od, dl, nullif(dd, '')::date, deb, ver, nullif(kid, ''), ct, $13, $13
		FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
			$8::text[], $9::int8[], $10::int8[], $11::text[], $12::bytea[]) AS u (id, cur, st, bal, hld, od, dl, dd, deb, ver, kid, ct)`,
		ids, currencies, statuses, balance, held, overdraft, daily, days, debited, versions, keyIDs, ciphertexts, now)
}

// queueUpdateAccounts writes the new state of accounts this batch loaded
// and locked. Every row must exist; a missing one fails the batch.
func queueUpdateAccounts(b *pgx.Batch, accounts []*domain.Account, now time.Time) {
	n := len(accounts)
	ids, statuses, days := make([]string, n), make([]string, n), make([]string, n)
	balance, held, debited, versions := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	for i, a := range accounts {
		ids[i], statuses[i], days[i] = a.ID, string(a.Status), a.DailyDebitDay
		balance[i], held[i], debited[i], versions[i] = a.Balance, a.Held, a.DailyDebited, a.Version
	}
	b.Queue(`UPDATE accounts AS a SET status = u.st, balance = u.bal, held = u.hld,
			daily_debit_day = nullif(u.dd, '')::date, daily_debited = u.deb, version = u.ver, updated_at = $8
		FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], $7::int8[])
			AS u (id, st, bal, hld, dd, deb, ver)
		WHERE a.account_id = u.id`,
		ids, statuses, balance, held, days, debited, versions, now).Exec(func(ct pgconn.CommandTag) error {
		if ct.RowsAffected() != int64(n) {
			return fmt.Errorf("update accounts: %d of %d rows found", ct.RowsAffected(), n)
		}
		return nil
	})
}

// queueInsertTransfers creates transfers made by this batch.
func queueInsertTransfers(b *pgx.Batch, ts []*domain.Transfer, now time.Time) {
	ids, kinds, from, to, currencies, statuses, expires := transferColumns(ts)
	amounts, captured, reversed := amountColumns(ts)
	b.Queue(`INSERT INTO transfers (transfer_id, kind, from_account_id, to_account_id, currency, amount,
			captured_amount, reversed_amount, status, expires_at, created_at, updated_at)
		SELECT id::uuid, k, f, t, c, amt, cap, rev, st, exp, $11, $11
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[],
			$9::text[], $10::timestamptz[]) AS u (id, k, f, t, c, amt, cap, rev, st, exp)`,
		ids, kinds, from, to, currencies, amounts, captured, reversed, statuses, expires, now)
}

// queueUpdateTransfers writes the new state of transfers this batch locked.
func queueUpdateTransfers(b *pgx.Batch, ts []*domain.Transfer, now time.Time) {
	ids, _, _, _, _, statuses, _ := transferColumns(ts)
	_, captured, reversed := amountColumns(ts)
	n := len(ts)
	b.Queue(`UPDATE transfers AS t SET captured_amount = u.cap, reversed_amount = u.rev, status = u.st, updated_at = $5
		FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) AS u (id, cap, rev, st)
		WHERE t.transfer_id = u.id::uuid`,
		ids, captured, reversed, statuses, now).Exec(func(ct pgconn.CommandTag) error {
		if ct.RowsAffected() != int64(n) {
			return fmt.Errorf("update transfers: %d of %d rows found", ct.RowsAffected(), n)
		}
		return nil
	})
}

func transferColumns(ts []*domain.Transfer) (ids, kinds, from, to, currencies, statuses []string, expires []pgtype.Timestamptz) {
	n := len(ts)
	ids, kinds, from, to, currencies, statuses = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	expires = make([]pgtype.Timestamptz, n)
	for i, t := range ts {
		ids[i], kinds[i], from[i], to[i], currencies[i], statuses[i] = t.ID, string(t.Kind), t.FromAccountID, t.ToAccountID, t.Currency, string(t.Status)
		if t.ExpiresAt != nil {
			expires[i] = pgtype.Timestamptz{Time: *t.ExpiresAt, Valid: true}
		}
	}
	return
}

func amountColumns(ts []*domain.Transfer) (amounts, captured, reversed []int64) {
	n := len(ts)
	amounts, captured, reversed = make([]int64, n), make([]int64, n), make([]int64, n)
	for i, t := range ts {
		amounts[i], captured[i], reversed[i] = t.Amount, t.CapturedAmount, t.ReversedAmount
	}
	return
}
