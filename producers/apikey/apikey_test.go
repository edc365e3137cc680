package apikey_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/producers/apikey"
)

const good = "txp_0123456789abcdef_" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO-_"

func TestParse(t *testing.T) {
	if id, secret, ok := apikey.Parse(good); !ok || id != "0123456789abcdef" || len(secret) != 43 {
		t.Fatalf("Parse(good) = %q %q %v", id, secret, ok)
	}
	for _, bad := range []string{
		"", "txp_", good[:len(good)-1], good + "x",
		"TXP" + good[3:],                                    // prefix
		"txp_0123456789ABCDEF" + good[20:],                  // upper-case id
		"txp_0123456789abcdeg" + good[20:],                  // not hex
		"txp_0123456789abcdef-" + good[21:],                 // separator
		good[:len(good)-1] + "=",                            // padding
		good[:len(good)-1] + "/",                            // not base64url
		strings.Replace(good, "a", "\u00e9", 1)[:len(good)], // non-ASCII
	} {
		if _, _, ok := apikey.Parse(bad); ok {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestCreateAuthenticateRevoke(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	if _, _, err := apikey.Create(ctx, db.Pool, "x", []string{"admin"}); err == nil {
		t.Error("Create with an unknown scope succeeded")
	}
	if _, _, err := apikey.Create(ctx, db.Pool, " ", apikey.Scopes); err == nil {
		t.Error("Create without a name succeeded")
	}
	key, id, err := apikey.Create(ctx, db.Pool, "ops", []string{apikey.ScopeLedgerRead})
	if err != nil {
		t.Fatal(err)
	}
	var stored []byte
	if err := db.Pool.QueryRow(ctx, `SELECT secret_hash FROM api_keys WHERE key_id = $1`, id).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	_, secret, _ := apikey.Parse(key)
	if strings.Contains(string(stored), secret) || len(stored) != 32 {
		t.Errorf("the stored hash (%d bytes) holds the secret", len(stored))
	}
	a := apikey.NewAuthenticator(db.Pool)
	got, err := a.Authenticate(ctx, "Bearer "+key)
	if err != nil || got.KeyID != id || got.Name != "ops" || !got.Has(apikey.ScopeLedgerRead) || got.Has(apikey.ScopeCommandsWrite) {
		t.Fatalf("Authenticate = %+v, %v", got, err)
	}
	for _, h := range []string{"", key, "Bearer " + key[:len(key)-1] + "x", "Bearer txp_ffffffffffffffff_" + secret} {
		if _, err := a.Authenticate(ctx, h); !errors.Is(err, apikey.ErrUnauthenticated) {
			t.Errorf("Authenticate(%q) err = %v, want ErrUnauthenticated", h, err)
		}
	}
	if err := apikey.Revoke(ctx, db.Pool, id); err != nil {
		t.Fatal(err)
	}
	if err := apikey.Revoke(ctx, db.Pool, "ffffffffffffffff"); err == nil {
		t.Error("revoking an unknown key succeeded")
	}
	if _, err := apikey.NewAuthenticator(db.Pool).Authenticate(ctx, "Bearer "+key); !errors.Is(err, apikey.ErrUnauthenticated) {
		t.Errorf("revoked key: err = %v, want ErrUnauthenticated", err)
	}
}

// FuzzParse: Parse never panics, and whatever it accepts has the shape of
// a key and reassembles into its input.
func FuzzParse(f *testing.F) {
	f.Add(good)
	f.Add("txp_")
	f.Add("Bearer " + good)
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := apikey.Parse(s)
		if !ok {
			return
		}
		if !apikey.ValidID(id) || len(s) != apikey.TokenLen || "txp_"+id+"_"+secret != s {
			t.Errorf("Parse(%q) accepted %q %q", s, id, secret)
		}
	})
}

func TestValidPattern(t *testing.T) {
	for p, want := range map[string]bool{"merchant-42": true, "merchant-42:*": true, "m*": true, "*": false, "": false,
		"merchant 42": false, "merchant-42**": false, "mérchant": false, "a*b": false} {
		if got := apikey.ValidPattern(p); got != want {
			t.Errorf("ValidPattern(%q) = %v, want %v", p, got, want)
		}
	}
}
