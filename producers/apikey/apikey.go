// Package apikey issues, stores and checks txpipe's API keys.
//
// A key reads txp_<key id>_<secret>: the key id (16 hex digits) is visible
// and names the key in logs, `apikey list` and the audit trail; the secret
// (32 random bytes, base64url) is shown once, at creation. PostgreSQL keeps
// only SHA-256 of the secret: a fast hash is enough for 256 random bits,
// which no dictionary or brute force reaches. A check looks the key up by
// id and compares hashes in constant time; an unknown id is compared against
// a dummy hash, so "no such key" and "wrong secret" take the same time.
package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/txpipe/txpipe/domain"
)

// The scopes a key may carry.
const (
	ScopeCommandsWrite = "commands:write" // POST /v1/commands, /v1/commands/batch
	ScopeLedgerRead    = "ledger:read"    // every GET of the API
)

// Scopes lists every scope.
var Scopes = []string{ScopeCommandsWrite, ScopeLedgerRead}

const (
	prefix    = "txp_"
	idLen     = domain.KeyIDLen
	secretLen = 43 // base64url characters of 32 bytes
	// TokenLen is the length of every key.
	TokenLen = len(prefix) + idLen + 1 + secretLen
)

// ErrUnauthenticated is every reason a key is refused: missing, malformed,
// unknown, revoked or wrong. Callers answer 401 without saying which.
var ErrUnauthenticated = errors.New("missing or invalid API key")

// Identity is an authenticated key.
type Identity struct {
	KeyID  string
	Name   string
	Scopes []string
	// Accounts are the patterns of the accounts the key may move money
	// from and read (Covers); nil for every account.
	Accounts []string
}

// Has reports whether the key carries scope.
func (id Identity) Has(scope string) bool { return slices.Contains(id.Scopes, scope) }

// Covers reports whether the key may act on account: it is unrestricted, or
// one of its patterns matches (domain.PatternsCover).
func (id Identity) Covers(account string) bool { return domain.PatternsCover(id.Accounts, account) }

// ValidPattern reports whether p is an account pattern: an account id, or
// a non-empty prefix of one followed by "*".
func ValidPattern(p string) bool {
	prefix, ok := strings.CutSuffix(p, "*")
	if !ok {
		return domain.ValidAccountID(p)
	}
	return prefix != "" && domain.ValidAccountID(prefix)
}

// Parse splits a key into its id and secret, checking its shape only.
func Parse(token string) (keyID, secret string, ok bool) {
	if len(token) != TokenLen || !strings.HasPrefix(token, prefix) || token[len(prefix)+idLen] != '_' {
		return "", "", false
	}
	keyID, secret = token[len(prefix):len(prefix)+idLen], token[len(prefix)+idLen+1:]
	if !ValidID(keyID) {
		return "", "", false
	}
	for _, c := range secret {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return "", "", false
		}
	}
	return keyID, secret, true
}

// ValidID reports whether id has the shape of a key id.
func ValidID(id string) bool { return domain.ValidKeyID(id) }

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Create stores a new key for every account and returns it; the secret is
// not kept.
func Create(ctx context.Context, pool *pgxpool.Pool, name string, scopes []string) (token, keyID string, err error) {
	return CreateScoped(ctx, pool, name, scopes, nil)
}

// CreateScoped stores a new key limited to the accounts matching patterns
// (nil: every account) and returns it; the secret is not kept.
func CreateScoped(ctx context.Context, pool *pgxpool.Pool, name string, scopes, patterns []string) (token, keyID string, err error) {
	if patterns != nil && len(patterns) == 0 {
		return "", "", errors.New("a key scoped to accounts needs at least one pattern")
	}
	for _, p := range patterns {
		if !ValidPattern(p) {
			return "", "", fmt.Errorf("account pattern %q: an account id, or a prefix of one followed by *", p)
		}
	}
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 {
		return "", "", errors.New("a key needs a name of 1–100 characters")
	}
	if len(scopes) == 0 {
		return "", "", fmt.Errorf("a key needs at least one scope (%s)", strings.Join(Scopes, ", "))
	}
	for _, s := range scopes {
		if !slices.Contains(Scopes, s) {
			return "", "", fmt.Errorf("unknown scope %q (scopes: %s)", s, strings.Join(Scopes, ", "))
		}
	}
	var id [idLen / 2]byte
	var secret [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", "", err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", "", err
	}
	keyID = hex.EncodeToString(id[:])
	s := base64.RawURLEncoding.EncodeToString(secret[:])
	slices.Sort(scopes)
	if _, err := pool.Exec(ctx, `INSERT INTO api_keys (key_id, name, scopes, secret_hash, accounts) VALUES ($1, $2, $3, $4, $5)`,
		keyID, name, slices.Compact(scopes), hash(s), patterns); err != nil {
		return "", "", fmt.Errorf("store key: %w", err)
	}
	return prefix + keyID + "_" + s, keyID, nil
}

// Key is a stored key, without its secret.
type Key struct {
	KeyID, Name           string
	Scopes                []string
	Accounts              []string // nil: every account
	CreatedAt             time.Time
	LastUsedAt, RevokedAt *time.Time
}

// List returns every key, oldest first.
func List(ctx context.Context, pool *pgxpool.Pool) ([]Key, error) {
	rows, err := pool.Query(ctx, `SELECT key_id, name, scopes, accounts, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, key_id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var k Key
		err := r.Scan(&k.KeyID, &k.Name, &k.Scopes, &k.Accounts, &k.CreatedAt, &k.LastUsedAt, &k.RevokedAt)
		return k, err
	})
}

// Revoke revokes a key; within Authenticator's cache TTL it stops working
// everywhere.
func Revoke(ctx context.Context, pool *pgxpool.Pool, keyID string) error {
	ct, err := pool.Exec(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1`, keyID)
	if err != nil {
		return err
	}
	if ct.RowsAffected() == 0 {
		return fmt.Errorf("no key %q", keyID)
	}
	return nil
}

// AccountScopes tells the workers the account patterns of the key a record
// claims, caching each for CacheTTL: a scope change reaches every worker
// within it. Safe for concurrent use.
type AccountScopes struct {
	pool  *pgxpool.Pool
	mu    sync.Mutex
	cache map[string]scopeEntry
}

type scopeEntry struct {
	patterns []string
	fetched  time.Time
}

// NewAccountScopes returns an AccountScopes over pool.
func NewAccountScopes(pool *pgxpool.Pool) *AccountScopes {
	return &AccountScopes{pool: pool, cache: map[string]scopeEntry{}}
}

// Accounts returns the account patterns of key keyID: nil for a key of
// every account, or for no such key (a record produced with a made-up id
// claims nothing). A revoked key keeps its patterns: its records accepted
// before the revocation apply as scoped as they were sent.
func (s *AccountScopes) Accounts(ctx context.Context, keyID string) ([]string, error) {
	s.mu.Lock()
	e, ok := s.cache[keyID]
	s.mu.Unlock()
	if ok && time.Since(e.fetched) < CacheTTL {
		return e.patterns, nil
	}
	e = scopeEntry{fetched: time.Now()}
	err := s.pool.QueryRow(ctx, `SELECT accounts FROM api_keys WHERE key_id = $1`, keyID).Scan(&e.patterns)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read the scope of API key %s: %w", keyID, err)
	}
	s.mu.Lock()
	if len(s.cache) > 10000 {
		clear(s.cache)
	}
	s.cache[keyID] = e
	s.mu.Unlock()
	return e.patterns, nil
}

// CacheTTL is how long an Authenticator trusts what it read about a key:
// a revocation takes at most this long to reach every ingest.
const CacheTTL = 10 * time.Second

// StaleGrace is how long an Authenticator goes on trusting what it last
// read about a key while PostgreSQL cannot be read (a failover, a restart),
// so that ingest keeps accepting commands into Kafka through the gap. A key
// revoked just before the database went away works that much longer.
const StaleGrace = 5 * time.Minute

// touchInterval spaces the last_used_at updates of one key.
const touchInterval = time.Minute

// Authenticator checks keys against PostgreSQL, caching each for CacheTTL.
type Authenticator struct {
	pool *pgxpool.Pool

	mu       sync.Mutex
	cache    map[string]cached
	touched  map[string]time.Time
	lastRead time.Time // the last read of a key from PostgreSQL that succeeded
}

// lookupTimeout bounds a key's read: past it, a key read lately is trusted
// as when PostgreSQL is away (StaleGrace), instead of holding the request.
const lookupTimeout = 2 * time.Second

// ReadWithin reports whether a key was read from PostgreSQL within d: an
// ingest that did can go on serving the keys it knows through a gap in the
// database (a failover); one that never could cannot authenticate anyone.
func (a *Authenticator) ReadWithin(d time.Duration) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.lastRead.IsZero() && time.Since(a.lastRead) < d
}

type cached struct {
	hash    []byte // nil: no such key, or revoked
	id      Identity
	fetched time.Time
	// retryAt: the last read failed and this stale entry served; until
	// then it serves again without a read, so that a database gone silent
	// costs one lookupTimeout a second per key, not one per request.
	retryAt time.Time
}

// staleRetry spaces the reads of a key while they fail.
const staleRetry = time.Second

// dummy is compared when a key does not exist, so that an unknown id and a
// wrong secret cost the same.
var dummy = hash("txpipe-no-such-key")

// NewAuthenticator returns an Authenticator over pool.
func NewAuthenticator(pool *pgxpool.Pool) *Authenticator {
	return &Authenticator{pool: pool, cache: map[string]cached{}, touched: map[string]time.Time{}}
}

// Authenticate checks the value of an Authorization header ("Bearer
// <key>"). Any refusal is ErrUnauthenticated; other errors mean the key
// store could not be read.
func (a *Authenticator) Authenticate(ctx context.Context, header string) (Identity, error) {
	token, ok := strings.CutPrefix(header, "Bearer ")
	if !ok {
		return Identity{}, ErrUnauthenticated
	}
	keyID, secret, ok := Parse(strings.TrimSpace(token))
	if !ok {
		return Identity{}, ErrUnauthenticated
	}
	c, err := a.lookup(ctx, keyID)
	if err != nil {
		return Identity{}, err
	}
	want := c.hash
	if want == nil {
		want = dummy
	}
	if subtle.ConstantTimeCompare(hash(secret), want) != 1 || c.hash == nil {
		return Identity{}, ErrUnauthenticated
	}
	a.touch(keyID)
	return c.id, nil
}

func (a *Authenticator) lookup(ctx context.Context, keyID string) (cached, error) {
	a.mu.Lock()
	c, ok := a.cache[keyID]
	a.mu.Unlock()
	if ok && (time.Since(c.fetched) < CacheTTL || time.Now().Before(c.retryAt)) {
		return c, nil
	}
	c0 := c
	c = cached{id: Identity{KeyID: keyID}, fetched: time.Now()}
	var revoked *time.Time
	var h []byte
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	err := a.pool.QueryRow(ctx, `SELECT name, scopes, accounts, secret_hash, revoked_at FROM api_keys WHERE key_id = $1`, keyID).
		Scan(&c.id.Name, &c.id.Scopes, &c.id.Accounts, &h, &revoked)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil && ok && time.Since(c0.fetched) < StaleGrace:
		// PostgreSQL is away (a failover, a restart): keep accepting for
		// the keys seen lately, as they were when last read.
		c0.retryAt = time.Now().Add(staleRetry)
		a.mu.Lock()
		a.cache[keyID] = c0
		a.mu.Unlock()
		return c0, nil
	case err != nil:
		return cached{}, fmt.Errorf("read API key: %w", err)
	case revoked == nil:
		c.hash = h
	}
	a.mu.Lock()
	a.lastRead = time.Now()
	if len(a.cache) > 10000 {
		// Unknown ids from a scanner must not grow it for ever; the keys
		// that exist stay, for a gap in the database.
		maps.DeleteFunc(a.cache, func(_ string, e cached) bool { return e.hash == nil })
		if len(a.cache) > 10000 {
			clear(a.cache)
		}
	}
	a.cache[keyID] = c
	a.mu.Unlock()
	return c, nil
}

// touch records last_used_at, at most once a minute per key, off the
// request's path.
func (a *Authenticator) touch(keyID string) {
	a.mu.Lock()
	if time.Since(a.touched[keyID]) < touchInterval {
		a.mu.Unlock()
		return
	}
	a.touched[keyID] = time.Now()
	a.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = a.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now() WHERE key_id = $1`, keyID)
	}()
}
