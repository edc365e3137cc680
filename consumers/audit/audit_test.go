package audit

import (
	"context"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestAQueryErrorFailsTheAudit takes the right to read entries away from
// the auditor's role. PostgreSQL reports that once the query runs, after
// pgx's Query has returned: the audit must fail with that error instead of
// reading no entries and reporting balances without postings.
func TestAQueryErrorFailsTheAudit(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO accounts (account_id, currency, status) VALUES ('a', 'EUR', 'active')`); err != nil {
		t.Fatal(err)
	}
	if _, err := loadDatabase(ctx, db.Pool, "g", "commands"); err != nil {
		t.Fatalf("loadDatabase before the revoke: %v", err)
	}
	if _, err := db.Pool.Exec(ctx, `REVOKE SELECT ON entries FROM CURRENT_USER`); err != nil {
		t.Fatal(err)
	}
	got, err := loadDatabase(ctx, db.Pool, "g", "commands")
	if err == nil || !strings.Contains(err.Error(), "read entries") || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("loadDatabase = %+v, %v; want the permission error", got, err)
	}
}
