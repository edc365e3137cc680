package outbox_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/txpipe/txpipe/internal/pgtest"
	"github.com/txpipe/txpipe/outbox"
)

// TestShardOfIsPostgreSQLs: for keys of every length up to 100 bytes and
// any bytes, nil among them, the shard Queue groups a record by is the
// one the outbox's generated column computes from the key.
func TestShardOfIsPostgreSQLs(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	keys := [][]byte{nil, {}, []byte("acct-1"), []byte("3f1b7c0e-4d7a-4c52-9a1e-0b5f3c2d1e0f")}
	for n := range 101 {
		for range 20 {
			k := make([]byte, n)
			for i := range k {
				k[i] = byte(r.UintN(256))
			}
			keys = append(keys, k)
		}
	}
	var want []int16
	if err := db.Pool.QueryRow(ctx, `SELECT array_agg(outbox_shard(k) ORDER BY n) FROM unnest($1::bytea[]) WITH ORDINALITY AS u (k, n)`, keys).Scan(&want); err != nil {
		t.Fatal(err)
	}
	var generated int16
	if err := db.Pool.QueryRow(ctx, `WITH w AS (INSERT INTO outbox (topic, key, value) VALUES ('t', 'acct-1', 'v') RETURNING shard)
		SELECT shard FROM w`).Scan(&generated); err != nil {
		t.Fatal(err)
	}
	if generated != want[2] {
		t.Fatalf("outbox_shard('acct-1') = %d, but the generated column says %d", want[2], generated)
	}
	wrong := 0
	for i, k := range keys {
		if got := outbox.ShardOf(k); got != want[i] {
			if wrong++; wrong <= 5 {
				t.Errorf("shardOf(%x) = %d, PostgreSQL says %d", k, got, want[i])
			}
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d keys are in another shard than PostgreSQL's", wrong, len(keys))
	}
}
