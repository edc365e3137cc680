package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestScaleOutThreeWorkersTwoRelays runs ingest, three workers and two
// relays as separate processes under load. Mid-run one worker stops
// (SIGTERM) and one relay is killed (-9); the survivors take over their
// partitions and outbox shards; both come back and the work is dealt out
// again. Every invariant holds (txpipe verify: among them, postings per
// account in account_version order with no gaps) and the outcomes equal the
// pure domain model's.
func TestScaleOutThreeWorkersTwoRelays(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test; runs without -short")
	}
	p := &pipeline{db: pgtest.New(t), kc: kafkatest.New(t)}
	p.topics = p.kc.Topics(t, 6)
	r := newRig(t, p)
	r.procs["worker-c"] = &process{t: t, bin: r.bin, role: "worker", args: r.worker, log: filepath.Join(r.dir, "worker-c.log")}
	r.procs["relay-b"] = &process{t: t, bin: r.bin, role: "relay", args: r.relay, log: filepath.Join(r.dir, "relay-b.log")}
	r.procs["worker-c"].start()
	r.procs["relay-b"].start()
	eventually(t, "the third worker and the second relay are ready", func() bool {
		return r.procs["worker-c"].ready() && r.procs["relay-b"].ready()
	})
	// The processes run the collector settings main gives them (gcDefaults):
	// the workers and relays collect less often, ingest keeps Go's. (Unless
	// whoever runs the tests set their own, which the processes inherit.)
	_, gogc := os.LookupEnv("GOGC")
	_, limit := os.LookupEnv("GOMEMLIMIT")
	if !gogc && !limit {
		for name, want := range map[string]float64{"worker-c": 400, "relay-b": 400, "ingest": 100} {
			if got := scrape(t, r.procs[name].admin, "go_gc_gogc_percent"); got != want {
				t.Errorf("%s: go_gc_gogc_percent %v, want %v", name, got, want)
			}
		}
		if got := scrape(t, r.procs["worker-c"].admin, "go_gc_gomemlimit_bytes"); got != 256<<20 {
			t.Errorf("worker-c: go_gc_gomemlimit_bytes %v, want %d", got, 256<<20)
		}
	}
	// holders counts the relays holding live shard leases, and the most
	// shards one of them holds.
	holders := func() (relays, most int) {
		_ = p.db.Pool.QueryRow(context.Background(), `SELECT count(*), coalesce(max(n), 0) FROM (SELECT owner, count(*) AS n
			FROM relay_leases WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner) AS o`).Scan(&relays, &most)
		return relays, most
	}
	split := func() bool { r, m := holders(); return r == 2 && m == 16 }
	eventually(t, "the two relays hold 16 outbox shards each", split)

	cmds := r.commands(3000)
	const chunks = 10
	per := len(cmds) / chunks
	for i := range chunks {
		if err := r.client.send(cmds[i*per : (i+1)*per]); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 3:
			r.procs["worker-b"].stop()
			r.procs["relay"].kill9()
			// Its leases expire and relay-b takes every shard.
			eventually(t, "relay-b holds all 32 shards of the killed relay and its own", func() bool { r, m := holders(); return r == 1 && m == 32 })
		case 6:
			r.procs["worker-b"].start()
			r.procs["relay"].start()
			eventually(t, "the restarted relay has its 16 shards back", split)
		}
		time.Sleep(300 * time.Millisecond) // let each change land on running work
	}
	out := p.verify(t)
	replayModel(t, p, r.byID)

	// The counters agree with what the lease table showed: relay-b took
	// the killed relay's shards and gave half back when it returned.
	acquired := scrape(t, r.procs["relay-b"].admin, `txpipe_relay_lease_changes_total{change="acquired"}`)
	released := scrape(t, r.procs["relay-b"].admin, `txpipe_relay_lease_changes_total{change="released"}`)
	if acquired < 32 || released < 16 {
		t.Errorf("relay-b acquired %.0f and released %.0f shard leases, want ≥ 32 (its own and the killed relay's) and ≥ 16 (given back)", acquired, released)
	}
	if n := scrape(t, r.procs["worker-c"].admin, `txpipe_consumer_commands_total{outcome="applied",reason=""}`); n == 0 {
		t.Error("the third worker applied nothing: the load was not shared")
	}
	t.Logf("3 workers, 2 relays: %d commands; relay-b leases acquired %.0f, released %.0f\n%s", len(r.byID), acquired, released, out)
}
