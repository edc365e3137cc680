package outbox

import (
	"encoding/binary"
	"encoding/hex"
	"math/bits"
)

// shardOf is the shard of a record with key, as the outbox's generated
// column computes it: mod(hashtextextended(encode(key, 'hex'), 0), 32),
// made non-negative (a NULL key hashes as the empty string). Queue groups
// a transaction's records by it, so that every record of a row is of the
// shard PostgreSQL computes from the row's key; TestShardOfIsPostgreSQLs
// holds the two to the same answers.
func shardOf(key []byte) int16 {
	var buf [128]byte
	text := buf[:0]
	if n := hex.EncodedLen(len(key)); n <= len(buf) {
		text = buf[:n]
	} else {
		text = make([]byte, n)
	}
	hex.Encode(text, key)
	h := int64(hashBytesExtended(text))
	return int16((h%Shards + Shards) % Shards)
}

// hashBytesExtended is PostgreSQL's hash_bytes_extended with seed 0 (Bob
// Jenkins' lookup3 over little-endian words, src/common/hashfn.c), which
// hashtextextended applies to a text's bytes under a deterministic
// collation.
func hashBytesExtended(k []byte) uint64 {
	a := 0x9e3779b9 + uint32(len(k)) + 3923095
	b, c := a, a
	for len(k) >= 12 {
		a += binary.LittleEndian.Uint32(k)
		b += binary.LittleEndian.Uint32(k[4:])
		c += binary.LittleEndian.Uint32(k[8:])
		a, b, c = mix(a, b, c)
		k = k[12:]
	}
	// The last 11 bytes; the lowest byte of c is left for the length.
	switch len(k) {
	case 11:
		c += uint32(k[10]) << 24
		fallthrough
	case 10:
		c += uint32(k[9]) << 16
		fallthrough
	case 9:
		c += uint32(k[8]) << 8
		fallthrough
	case 8:
		b += uint32(k[7]) << 24
		fallthrough
	case 7:
		b += uint32(k[6]) << 16
		fallthrough
	case 6:
		b += uint32(k[5]) << 8
		fallthrough
	case 5:
		b += uint32(k[4])
		fallthrough
	case 4:
		a += uint32(k[3]) << 24
		fallthrough
	case 3:
		a += uint32(k[2]) << 16
		fallthrough
	case 2:
		a += uint32(k[1]) << 8
		fallthrough
	case 1:
		a += uint32(k[0])
	}
	a, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func final(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return a, b, c
}
