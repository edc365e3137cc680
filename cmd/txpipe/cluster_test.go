package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestLeaderLossInAThreeBrokerCluster runs the pipeline on the three-broker
// cluster of scripts/kafka-cluster.sh (replication factor 3,
// min.insync.replicas 2), kills -9 the broker leading the most partitions
// mid-load, brings it back, and checks that nothing acknowledged was lost
// or doubled. It runs when TXPIPE_KAFKA_CLUSTER_BROKERS is set (make chaos).
func TestLeaderLossInAThreeBrokerCluster(t *testing.T) {
	brokers := os.Getenv("TXPIPE_KAFKA_CLUSTER_BROKERS")
	if brokers == "" {
		t.Skip("TXPIPE_KAFKA_CLUSTER_BROKERS is not set (scripts/kafka-cluster.sh start; make chaos)")
	}
	p := &pipeline{db: pgtest.New(t), kc: kafkatest.Connect(t, strings.Split(brokers, ","))}
	p.topics = p.kc.TopicsReplicated(t, 6, 3)
	r := newRig(t, p)
	cmds := r.commands(3000)
	const chunks = 12
	per := len(cmds) / chunks
	killed := -1
	for i := range chunks {
		if err := r.client.send(cmds[i*per : (i+1)*per]); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 3:
			killed = busiestLeader(t, p)
			script(t, "kafka-cluster.sh", "kill", strconv.Itoa(killed))
		case 8:
			script(t, "kafka-cluster.sh", "start-node", strconv.Itoa(killed))
		}
	}
	out := p.verify(t)
	replayModel(t, p, r.byID)
	retried := func(proc, writer string) float64 {
		return scrape(t, r.procs[proc].admin, `txpipe_kafka_writer_retries_total{writer="`+writer+`"}`)
	}
	t.Logf("commands acknowledged %d, requests the client retried %d, produce rounds retried by ingest %.0f and the relay %.0f; killed the leader broker %d and restarted it\n%s",
		len(r.byID), r.client.retries.Load(), retried("ingest", "ingest"), retried("relay", "relay"), killed, out)
}

// busiestLeader returns the broker leading the most partitions of the
// test's topics.
func busiestLeader(t *testing.T, p *pipeline) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	md, err := p.kc.Client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{p.topics.Commands, p.topics.Events, p.topics.Postings}})
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	count := map[int]int{}
	for _, tp := range md.Topics {
		for _, pa := range tp.Partitions {
			count[pa.Leader.ID]++
		}
	}
	best := -1
	for id, n := range count {
		if best < 0 || n > count[best] || (n == count[best] && id < best) {
			best = id
		}
	}
	if best < 1 || best > 3 {
		t.Fatalf("leaders %v: want brokers 1–3", count)
	}
	return best
}
