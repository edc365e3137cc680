package ledger

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/txpipe/txpipe/domain"
)

// The queries over many rows (docs/api.md, Queries). Each is one indexed
// range scan, named with its index in migrations/0016_queries.sql and
// shown with its plan at a million transfers in docs/api.md.

// Cursor is where a page ended: the last row's time and id. Rows come
// newest first, so the next page holds the rows before it.
type Cursor struct {
	At time.Time
	ID string
}

// String encodes c as the opaque token the API hands out.
func (c Cursor) String() string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d/%s", c.At.UnixMicro(), c.ID))
}

// maxCursorMicros is the end of year 9999.
var maxCursorMicros = time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC).UnixMicro()

// ParseCursor decodes a token from Cursor.String.
func ParseCursor(s string) (Cursor, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, false
	}
	at, id, ok := strings.Cut(string(b), "/")
	micros, err := strconv.ParseInt(at, 10, 64)
	// A time PostgreSQL can take: 1970 to 9999, or the zero time (a hold
	// without expiry).
	if !ok || err != nil || (micros != (time.Time{}).UnixMicro() && (micros < 0 || micros > maxCursorMicros)) {
		return Cursor{}, false
	}
	id, ok = domain.CanonicalUUID(id)
	return Cursor{At: time.UnixMicro(micros).UTC(), ID: id}, ok
}

// StatusRejected asks TransferFilter for the money commands that were
// rejected: they made no transfer, and only what their decision keeps is
// shown (Rejection).
const StatusRejected = "rejected"

// TransferFilter selects transfers. Zero fields do not filter.
type TransferFilter struct {
	// AccountID: transfers from or to it, any leg of a transaction
	// included; for rejections, the commands it was the debit account of.
	AccountID string
	// Reference names at most one transfer.
	Reference string
	// Status is a domain.TransferStatus or StatusRejected.
	Status string
	Kind   domain.TransferKind
	// Since and Until bound the creation time: Since ≤ t < Until.
	Since, Until time.Time
	// After is the cursor of the previous page.
	After *Cursor
	// Scope limits the rows to those touching accounts the patterns cover
	// (domain.PatternsCover); nil for every account.
	Scope []string
	Limit int
}

// Rejection is a money command that was rejected: the debit account it
// named and why.
type Rejection struct {
	CommandID, AccountID string
	Kind                 domain.TransferKind
	Reason               string
	Leg                  *int
	At                   time.Time
}

// commandKinds are the command types that make transfers, and the kind
// of transfer each makes.
var commandKinds = []struct {
	kind domain.TransferKind
	typ  domain.Type
}{
	{domain.KindTransfer, domain.TypeTransfer}, {domain.KindDeposit, domain.TypeDeposit}, {domain.KindWithdrawal, domain.TypeWithdraw},
	{domain.KindHold, domain.TypeHold}, {domain.KindTransaction, domain.TypeTransaction},
}

// args numbers a query's parameters as conditions are added.
type args []any

func (a *args) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// scopeSQL is the condition that column names an account the patterns
// cover, in byte order (the "C" collation) as domain.PatternsCover
// compares: LIKE's own wildcards in a prefix are escaped.
func (a *args) scopeSQL(column string, patterns []string) string {
	var exact, like []string
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			like = append(like, likePrefix(prefix))
		} else {
			exact = append(exact, p)
		}
	}
	return fmt.Sprintf(`(%[1]s = ANY(%[2]s::text[]) OR (%[1]s COLLATE "C") LIKE ANY(%[3]s::text[]))`, column, a.add(exact), a.add(like))
}

// likePrefix is the LIKE pattern of the strings that start with prefix.
func likePrefix(prefix string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(prefix) + "%"
}

// transferConditions are f's conditions on the transfers table t, but
// for its time range and cursor (timeConditions) and the account (each
// branch of the account's query names it).
func (a *args) transferConditions(f TransferFilter) []string {
	var c []string
	if f.Reference != "" {
		c = append(c, "t.reference = "+a.add(f.Reference))
	}
	if f.Status != "" {
		c = append(c, "t.status = "+a.add(f.Status))
	}
	if f.Kind != "" {
		c = append(c, "t.kind = "+a.add(string(f.Kind)))
	}
	if f.Scope != nil && f.AccountID == "" {
		c = append(c, fmt.Sprintf("(%s OR %s OR EXISTS (SELECT 1 FROM transfer_legs sl WHERE sl.transfer_id = t.transfer_id AND (%s OR %s)))",
			a.scopeSQL("t.from_account_id", f.Scope), a.scopeSQL("t.to_account_id", f.Scope),
			a.scopeSQL("sl.from_account_id", f.Scope), a.scopeSQL("sl.to_account_id", f.Scope)))
	}
	return c
}

// timeConditions are f's time range and cursor on the created_at and
// transfer_id of table alias (t, or a leg l: a leg carries its
// transaction's time), so that each branch's index bounds its scan.
func (a *args) timeConditions(f TransferFilter, alias string) []string {
	var c []string
	if !f.Since.IsZero() {
		c = append(c, alias+".created_at >= "+a.add(f.Since))
	}
	if !f.Until.IsZero() {
		c = append(c, alias+".created_at < "+a.add(f.Until))
	}
	if f.After != nil {
		c = append(c, fmt.Sprintf("(%[1]s.created_at, %[1]s.transfer_id) < (%[2]s, %[3]s::uuid)", alias, a.add(f.After.At), a.add(f.After.ID)))
	}
	return c
}

func where(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

func newestFirst(alias string) string {
	return fmt.Sprintf(" ORDER BY %[1]s.created_at DESC, %[1]s.transfer_id DESC LIMIT ", alias)
}

// Transfers returns up to f.Limit transfers matching f, newest first. An
// account's transfers are the union of four index scans, each cut at the
// limit before they are merged: the account as the transfers row's debit
// side, as its credit side, and as either side of a transaction's later
// leg (a leg carries its transaction's time; DISTINCT, as two legs of one
// transaction may name the account).
func (q *Queries) Transfers(ctx context.Context, f TransferFilter) ([]Transfer, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var a args
	conds := a.transferConditions(f)
	limit := a.add(f.Limit)
	var query string
	if f.AccountID == "" {
		query = selectTransfersAs + where(append(conds, a.timeConditions(f, "t")...)) + newestFirst("t") + limit
	} else {
		acc := a.add(f.AccountID)
		ownTime := a.timeConditions(f, "t")
		branch := func(cond string) string {
			return "(SELECT t.transfer_id, t.created_at FROM transfers t" + where(append(append([]string{cond}, conds...), ownTime...)) +
				newestFirst("t") + limit + ")"
		}
		hits := branch("t.from_account_id = "+acc) + " UNION " + branch("t.to_account_id = "+acc)
		if mayBeTransaction(f) {
			// Their own parameters: added only when the branches are in
			// the query (an unused one makes PostgreSQL refuse it).
			legTime := a.timeConditions(f, "l")
			legs := func(side string) string {
				return "(SELECT DISTINCT l.transfer_id, l.created_at FROM transfer_legs l JOIN transfers t USING (transfer_id)" +
					where(append(append([]string{"l." + side + " = " + acc, "l.leg > 0"}, conds...), legTime...)) + newestFirst("l") + limit + ")"
			}
			hits += " UNION " + legs("from_account_id") + " UNION " + legs("to_account_id")
		}
		query = `WITH hits AS (` + hits + `) ` + selectTransfersAs + `JOIN hits h USING (transfer_id)` + newestFirst("t") + limit
	}
	return q.collectTransfers(ctx, query, a)
}

// collectTransfers runs query, which selects selectTransfersAs's columns.
func (q *Queries) collectTransfers(ctx context.Context, query string, args []any) ([]Transfer, error) {
	rows, err := q.Pool.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Transfer, error) { return q.scanTransfer(row) })
}

// mayBeTransaction reports whether f can match a transaction: only they
// have legs, so the legs' scans are left out when it cannot (they would
// read every later leg of the account for nothing).
func mayBeTransaction(f TransferFilter) bool {
	return (f.Kind == "" || f.Kind == domain.KindTransaction) &&
		(f.Status == "" || f.Status == string(domain.TransferPosted) || f.Status == string(domain.TransferReversed))
}

// Rejections returns up to f.Limit rejected money commands matching f
// (account, kind, time, cursor; not Scope: a scoped caller names an
// account), newest first.
func (q *Queries) Rejections(ctx context.Context, f TransferFilter) ([]Rejection, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var a args
	var conds []string
	if f.AccountID != "" {
		conds = append(conds, "debit_account_id = "+a.add(f.AccountID))
	}
	types := make([]string, 0, len(commandKinds))
	for _, c := range commandKinds {
		if f.Kind == "" || f.Kind == c.kind {
			types = append(types, string(c.typ))
		}
	}
	conds = append(conds, "status = 'rejected'", "type = ANY("+a.add(types)+"::text[])")
	if !f.Since.IsZero() {
		conds = append(conds, "processed_at >= "+a.add(f.Since))
	}
	if !f.Until.IsZero() {
		conds = append(conds, "processed_at < "+a.add(f.Until))
	}
	if f.After != nil {
		conds = append(conds, fmt.Sprintf("(p.processed_at, p.command_id) < (%s, %s::uuid)", a.add(f.After.At), a.add(f.After.ID)))
	}
	// Ordered by the columns (p.command_id, not the text the query
	// returns), as the cursor compares them and the index holds them.
	rows, err := q.Pool.Query(ctx, `SELECT p.command_id::text, debit_account_id, type, coalesce(reason, ''), leg::int, processed_at
		FROM processed_commands p`+where(conds)+` ORDER BY p.processed_at DESC, p.command_id DESC LIMIT `+a.add(f.Limit), a...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Rejection, error) {
		var r Rejection
		var typ string
		err := row.Scan(&r.CommandID, &r.AccountID, &typ, &r.Reason, &r.Leg, &r.At)
		for _, c := range commandKinds {
			if string(c.typ) == typ {
				r.Kind = c.kind
			}
		}
		r.At = r.At.UTC()
		return r, err
	})
}

// HoldFilter selects pending holds.
type HoldFilter struct {
	// AccountID is the account funds are held on.
	AccountID string
	// ExpiringBefore keeps the holds that expire before it (holds
	// without an expiry never do).
	ExpiringBefore time.Time
	// After is the last hold of the previous page: its expiry (zero for
	// none) and id.
	After *Cursor
	Limit int
}

// Holds returns up to f.Limit pending holds matching f, soonest expiry
// first (holds without one last), then by id.
func (q *Queries) Holds(ctx context.Context, f HoldFilter) ([]Transfer, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var a args
	conds := []string{"t.status = 'pending'", "t.kind = 'hold'"}
	if f.AccountID != "" {
		conds = append(conds, "t.from_account_id = "+a.add(f.AccountID))
	}
	if !f.ExpiringBefore.IsZero() {
		conds = append(conds, "t.expires_at < "+a.add(f.ExpiringBefore))
	}
	// 'infinity' stands for no expiry, so that the order and the cursor
	// are one comparison.
	const expiry = "coalesce(t.expires_at, 'infinity')"
	if f.After != nil {
		at := pgtype.Timestamptz{Time: f.After.At, Valid: true}
		if f.After.At.IsZero() {
			at = pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}
		}
		conds = append(conds, fmt.Sprintf("(%s, t.transfer_id) > (%s::timestamptz, %s::uuid)", expiry, a.add(at), a.add(f.After.ID)))
	}
	return q.collectTransfers(ctx, selectTransfersAs+where(conds)+" ORDER BY "+expiry+", t.transfer_id LIMIT "+a.add(f.Limit), a)
}

// AccountFilter selects accounts.
type AccountFilter struct {
	// Prefix keeps the accounts whose id starts with it.
	Prefix   string
	Currency string
	// After is the last account id of the previous page.
	After string
	Scope []string
	Limit int
}

func (a *args) accountConditions(f AccountFilter) []string {
	var c []string
	if f.Prefix != "" {
		c = append(c, `(account_id COLLATE "C") LIKE `+a.add(likePrefix(f.Prefix)))
	}
	if f.Currency != "" {
		c = append(c, "currency = "+a.add(f.Currency))
	}
	if f.After != "" {
		c = append(c, `(account_id COLLATE "C") > `+a.add(f.After))
	}
	return c
}

// scopeArms are the conditions, one per pattern (the exact ids together),
// of which an account covered by patterns meets at least one: a prefix p is
// the range [p, p with its last byte incremented) of accounts_id_c in byte
// order, so that each arm is a bounded scan of that index. A bare "*"
// (refused by apikey, but not by the table) covers everything.
func (a *args) scopeArms(patterns []string) []string {
	var exact, arms []string
	for _, p := range patterns {
		prefix, ok := strings.CutSuffix(p, "*")
		switch {
		case !ok:
			exact = append(exact, p)
		case prefix == "":
			return []string{"TRUE"}
		default:
			// Account ids are ASCII below 0x7f: the last byte never
			// overflows.
			upper := prefix[:len(prefix)-1] + string(rune(prefix[len(prefix)-1]+1))
			arms = append(arms, fmt.Sprintf(`(account_id COLLATE "C") >= %s AND (account_id COLLATE "C") < %s`, a.add(prefix), a.add(upper)))
		}
	}
	if len(exact) > 0 {
		arms = append(arms, "account_id = ANY("+a.add(exact)+"::text[])")
	}
	if len(arms) == 0 {
		return []string{"FALSE"}
	}
	return arms
}

const byID = ` ORDER BY (account_id COLLATE "C") LIMIT `

// Accounts returns up to f.Limit accounts matching f in byte order of
// their ids, metadata opened. A scoped caller's accounts are the union of
// one bounded scan per pattern, each cut at the limit.
func (q *Queries) Accounts(ctx context.Context, f AccountFilter) ([]Account, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var a args
	conds := a.accountConditions(f)
	limit := a.add(f.Limit)
	query := selectAccount + where(conds) + byID + limit
	if f.Scope != nil {
		var branches []string
		for _, arm := range a.scopeArms(f.Scope) {
			branches = append(branches, "(SELECT account_id FROM accounts"+where(append([]string{arm}, conds...))+byID+limit+")")
		}
		query = selectAccount + " WHERE account_id IN (" + strings.Join(branches, " UNION ") + ")" + byID + limit
	}
	rows, err := q.Pool.Query(ctx, query, a...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Account, error) { return q.scanAccount(row) })
}

// Sum is what the accounts matching a filter hold together, in one
// currency. Balances are summed exactly (numeric), so a total is a
// decimal string that may exceed an int64.
type Sum struct {
	Currency           string
	Accounts           int64
	Balance, Available string
}

// Balances sums the balances of the internal accounts matching f
// (Prefix, Scope, Currency, which is required).
func (q *Queries) Balances(ctx context.Context, f AccountFilter) (Sum, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	var a args
	f.After = ""
	conds := a.accountConditions(f)
	if f.Scope != nil {
		conds = append(conds, "("+strings.Join(a.scopeArms(f.Scope), " OR ")+")")
	}
	s := Sum{Currency: f.Currency}
	// The external account of a currency holds minus what all others
	// do (money is conserved): it is not one of the accounts summed.
	conds = append(conds, "NOT external")
	err := q.Pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(balance), 0)::text, coalesce(sum(balance - held), 0)::text
		FROM accounts`+where(conds), a...).Scan(&s.Accounts, &s.Balance, &s.Available)
	return s, err
}

// AsOf is an account as it stood at a point in its history.
type AsOf struct {
	AccountID, Currency string
	// Version is the account's version then: its last entry's (0 before
	// the first).
	Version            int64
	Balance, Available int64
	// PendingHolds is what holds kept from its available funds then.
	PendingHolds int64
	// At is when the entry of Version was written (the account's creation
	// for version 0).
	At time.Time
}

// AccountAsOf returns account id as it stood at time at (version < 0), or
// right after its entry of version (at zero): its balance is that entry's
// balance_after, its holds those created by then and not yet settled. It
// returns ErrNotFound when no account has the id, or when it did not yet
// exist then or has no such version.
func (q *Queries) AccountAsOf(ctx context.Context, id string, at time.Time, version int64) (AsOf, error) {
	ctx, cancel := q.bound(ctx)
	defer cancel()
	r := AsOf{AccountID: id}
	var created time.Time
	err := q.Pool.QueryRow(ctx, `SELECT currency, created_at FROM accounts WHERE account_id = $1`, id).Scan(&r.Currency, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, ErrNotFound
	}
	if err != nil {
		return r, err
	}
	var entryAt pgtype.Timestamptz
	if version >= 0 {
		err = q.Pool.QueryRow(ctx, `SELECT account_version, balance_after, created_at FROM entries
			WHERE account_id = $1 AND account_version = $2`, id, version).Scan(&r.Version, &r.Balance, &entryAt)
	} else {
		if at.Before(created) {
			return r, ErrNotFound
		}
		err = q.Pool.QueryRow(ctx, `SELECT account_version, balance_after, created_at FROM entries
			WHERE account_id = $1 AND created_at <= $2 ORDER BY account_version DESC LIMIT 1`, id, at).Scan(&r.Version, &r.Balance, &entryAt)
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows) && version > 0:
		return r, ErrNotFound
	case errors.Is(err, pgx.ErrNoRows): // before its first entry
		r.At = created
	case err != nil:
		return r, err
	default:
		r.At = entryAt.Time
	}
	if version >= 0 {
		at = r.At
	}
	err = q.Pool.QueryRow(ctx, `SELECT coalesce(sum(amount), 0) FROM transfers
		WHERE from_account_id = $1 AND kind = 'hold' AND created_at <= $2
			AND (status = 'pending' OR coalesce(settled_at, updated_at) > $2)`, id, at).Scan(&r.PendingHolds)
	r.Available, r.At = r.Balance-r.PendingHolds, r.At.UTC()
	return r, err
}
