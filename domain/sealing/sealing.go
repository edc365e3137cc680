// Package sealing encrypts values that may hold personal data (an account's
// metadata) in the application, so that a database dump, a backup or the
// outbox never shows them in clear.
//
// Values are sealed with AES-256-GCM under the keyring's active key. A sealed
// value is the 12-byte random nonce followed by the ciphertext and tag, and
// is stored beside the id of the key that sealed it, so keys can be rotated:
// new values use the new active key, old ones open with the key named beside
// them until `txpipe metadata-key rotate` re-seals them. The additional data
// binds a value to where it belongs (e.g. its account id), so a sealed value
// copied onto another row does not open.
package sealing

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// KeyLen is the length of every key: AES-256.
const KeyLen = 32

// ErrUnknownKey is returned by Open for a value sealed under a key the
// keyring does not hold (a key removed before its values were re-sealed).
var ErrUnknownKey = errors.New("sealed under a key this keyring does not hold")

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,32}$`)

// Keyring holds the keys values may be sealed under; the active one seals.
type Keyring struct {
	active string
	aeads  map[string]cipher.AEAD
}

// Parse reads a keyring from its setting: comma-separated `id:key` pairs,
// the key being 32 bytes in standard base64. The first pair is the active
// key; the others only open values sealed before a rotation. Errors name the
// pair by its position and id, never its key.
func Parse(spec string) (*Keyring, error) {
	k := &Keyring{aeads: make(map[string]cipher.AEAD)}
	for i, pair := range strings.Split(strings.TrimSpace(spec), ",") {
		id, encoded, ok := strings.Cut(strings.TrimSpace(pair), ":")
		if !ok {
			return nil, fmt.Errorf("key %d: want id:base64-key", i+1)
		}
		if !keyIDPattern.MatchString(id) {
			return nil, fmt.Errorf("key %d: id must be 1 to 32 characters of A-Z, a-z, 0-9, '.', '_' or '-'", i+1)
		}
		if _, dup := k.aeads[id]; dup {
			return nil, fmt.Errorf("key %d: id %q given twice", i+1, id)
		}
		raw, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil || len(raw) != KeyLen {
			return nil, fmt.Errorf("key %d (%s): want %d bytes in standard base64", i+1, id, KeyLen)
		}
		aead, err := newAEAD(raw)
		if err != nil {
			return nil, fmt.Errorf("key %d (%s): %w", i+1, id, err)
		}
		k.aeads[id] = aead
		if i == 0 {
			k.active = id
		}
	}
	return k, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// NewKey returns a fresh key under id, written as a keyring setting accepts
// it.
func NewKey(id string) (string, error) {
	if !keyIDPattern.MatchString(id) {
		return "", errors.New("key id must be 1 to 32 characters of A-Z, a-z, 0-9, '.', '_' or '-'")
	}
	key := make([]byte, KeyLen)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	return id + ":" + base64.StdEncoding.EncodeToString(key), nil
}

// MetadataAAD is the additional data that binds an account's sealed
// metadata to that account.
func MetadataAAD(accountID string) []byte {
	return []byte("txpipe/accounts.metadata/" + accountID)
}

// TransferMetadataAAD binds a transfer's sealed metadata (that of the money
// command that made it) to that transfer.
func TransferMetadataAAD(transferID string) []byte {
	return []byte("txpipe/transfers.metadata/" + transferID)
}

// Active is the id of the key that seals.
func (k *Keyring) Active() string { return k.active }

// Seal encrypts plain under the active key, bound to aad, and returns the
// key's id and the sealed value.
func (k *Keyring) Seal(plain, aad []byte) (keyID string, sealed []byte) {
	aead := k.aeads[k.active]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		// crypto/rand.Read never returns an error (it crashes the program
		// irrecoverably instead), so this cannot happen.
		panic(err)
	}
	return k.active, aead.Seal(nonce, nonce, plain, aad)
}

// Open decrypts a value sealed under keyID with aad. It fails with
// ErrUnknownKey when the keyring lacks keyID, and with an error when the
// value was altered or belongs elsewhere.
func (k *Keyring) Open(keyID string, sealed, aad []byte) ([]byte, error) {
	aead, ok := k.aeads[keyID]
	if !ok {
		return nil, fmt.Errorf("key %q: %w", keyID, ErrUnknownKey)
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("key %q: sealed value too short", keyID)
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], aad)
	if err != nil {
		return nil, fmt.Errorf("key %q: sealed value does not open (altered, or not this row's)", keyID)
	}
	return plain, nil
}
