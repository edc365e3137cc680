package apikey

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// While PostgreSQL cannot be read (a failover), a key read lately keeps
// working for StaleGrace, and no longer: ingest keeps accepting through the
// gap without trusting a stale record for ever.
func TestAKeyOutlivesADatabaseGapForAWhile(t *testing.T) {
	// Nothing listens on port 1: every read fails.
	pool, err := pgxpool.New(context.Background(), "postgres://txpipe:txpipe@127.0.0.1:1/txpipe?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	a := NewAuthenticator(pool)
	keyID, secret := "0123456789abcdef", strings.Repeat("s", secretLen)
	token := "Bearer " + prefix + keyID + "_" + secret
	for _, tc := range []struct {
		age  time.Duration
		want bool
	}{
		{CacheTTL + time.Second, true},   // stale, but the database is away
		{StaleGrace - time.Minute, true}, // still within the grace
		{StaleGrace + time.Second, false},
	} {
		a.cache[keyID] = cached{id: Identity{KeyID: keyID, Scopes: []string{"commands:write"}}, hash: hash(secret), fetched: time.Now().Add(-tc.age)}
		id, err := a.Authenticate(context.Background(), token)
		switch {
		case tc.want && (err != nil || id.KeyID != keyID):
			t.Errorf("read %v ago, database away: %v, %v; want the key", tc.age, id, err)
		case !tc.want && (err == nil || errors.Is(err, ErrUnauthenticated)):
			t.Errorf("read %v ago, database away: err %v; want the read's error", tc.age, err)
		}
	}
}
