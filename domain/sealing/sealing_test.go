package sealing

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func mustKey(t *testing.T, id string) string {
	t.Helper()
	k, err := NewKey(id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpenAndRotate(t *testing.T) {
	old, next := mustKey(t, "2026-01"), mustKey(t, "2026-11")
	before, err := Parse(old)
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte(`{"name":"Ada Lovelace"}`)
	id, sealed := before.Seal(plain, MetadataAAD("alice"))
	if id != "2026-01" {
		t.Fatalf("sealed under %q, want the active key 2026-01", id)
	}
	if bytes.Contains(sealed, []byte("Ada")) {
		t.Fatal("sealed value shows the plaintext")
	}
	_, again := before.Seal(plain, MetadataAAD("alice"))
	if bytes.Equal(sealed, again) {
		t.Fatal("two seals of one value are equal: the nonce is not fresh")
	}

	after, err := Parse(next + "," + old)
	if err != nil {
		t.Fatal(err)
	}
	if after.Active() != "2026-11" {
		t.Fatalf("active %q, want the first key, 2026-11", after.Active())
	}
	got, err := after.Open(id, sealed, MetadataAAD("alice"))
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open a value sealed before the rotation: %q, %v", got, err)
	}
	id2, resealed := after.Seal(got, MetadataAAD("alice"))
	if id2 != "2026-11" {
		t.Fatalf("re-sealed under %q", id2)
	}
	onlyNext, err := Parse(next)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := onlyNext.Open(id2, resealed, MetadataAAD("alice")); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open with the new key alone: %q, %v", got, err)
	}
	if _, err := onlyNext.Open(id, sealed, MetadataAAD("alice")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("open under a dropped key: %v, want ErrUnknownKey", err)
	}
}

func TestOpenRefusesAlteredOrMovedValues(t *testing.T) {
	k, err := Parse(mustKey(t, "k1"))
	if err != nil {
		t.Fatal(err)
	}
	id, sealed := k.Seal([]byte(`{"iban":"DE89"}`), MetadataAAD("alice"))
	if _, err := k.Open(id, sealed, MetadataAAD("bob")); err == nil {
		t.Error("alice's value opened as bob's")
	}
	for i := range sealed {
		altered := bytes.Clone(sealed)
		altered[i] ^= 1
		if _, err := k.Open(id, altered, MetadataAAD("alice")); err == nil {
			t.Fatalf("a value with byte %d flipped opened", i)
		}
	}
	if _, err := k.Open(id, sealed[:20], MetadataAAD("alice")); err == nil {
		t.Error("a truncated value opened")
	}
}

func TestParseNamesTheBadPairButNeverItsKey(t *testing.T) {
	good := mustKey(t, "k1")
	secret := strings.SplitN(good, ":", 2)[1]
	for name, spec := range map[string]string{
		"empty":        "",
		"no colon":     "k1" + secret,
		"bad id":       "k/1:" + secret,
		"short key":    "k1:" + secret[:20],
		"not base64":   "k1:" + strings.Repeat("!", 44),
		"id twice":     good + "," + good,
		"trailing sep": good + ",",
	} {
		_, err := Parse(spec)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), secret) || (len(secret) > 20 && strings.Contains(err.Error(), secret[:20])) {
			t.Errorf("%s: error shows the key: %v", name, err)
		}
	}
	if _, err := NewKey("bad id"); err == nil {
		t.Error("NewKey accepted an id with a space")
	}
}
