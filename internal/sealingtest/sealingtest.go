// Package sealingtest gives tests a keyring of one fresh key.
package sealingtest

import (
	"testing"

	"github.com/txpipe/txpipe/domain/sealing"
)

// Keyring returns a keyring of one fresh key, id "test".
func Keyring(t testing.TB) *sealing.Keyring {
	t.Helper()
	key, err := sealing.NewKey("test")
	if err != nil {
		t.Fatal(err)
	}
	k, err := sealing.Parse(key)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
