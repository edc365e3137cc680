// Package consumers runs the workers that apply commands from the commands
// topic to the ledger, exactly once.
//
// A worker joins the consumer group and splits the partitions it is
// assigned into lanes (Options.Lanes). A lane fetches all of its partitions
// with one request per broker and applies what they have ready (up to
// BatchSize records, waiting at most BatchLinger for more once some are
// there) in one PostgreSQL transaction, which also advances the offset
// stored in PostgreSQL of every partition it took records from. Those stored
// offsets are where partitions resume, and they fence the transaction: a
// worker whose position is stale (a zombie after a rebalance, or a
// redelivery) finds a stored offset moved and commits nothing. Kafka's own
// committed offsets are advanced afterwards, for lag tooling only.
package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain/sealing"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkafetch"
)

// Options configure a Worker.
type Options struct {
	Pool    *pgxpool.Pool
	Brokers []string
	Dialer  *kafka.Dialer // group membership; nil: kafka-go's default dialer
	// Transport carries the fetches; nil: kafka-go's DefaultTransport.
	Transport kafka.RoundTripper
	GroupID   string
	// Topics: the commands topic consumed, and the topics outcomes are
	// written to (through the outbox). An empty BalancesTopic publishes no
	// balance records.
	CommandsTopic, EventsTopic, PostingsTopic, BalancesTopic, DLQTopic string
	// BatchSize is the most records applied in one transaction; 1 applies
	// record by record. Default 500 (docs/benchmarks.md).
	BatchSize int
	// Lanes is how many transactions a worker runs at once, each over its
	// own share of the assigned partitions. Default 1: batches of
	// transfers among some thousands of accounts share accounts, so a
	// second lane mostly waits for the first one's locks, and at a low
	// rate it halves every batch and doubles the transactions
	// (docs/benchmarks.md, "One lane of 500 instead of two of 200").
	Lanes int
	// BatchLinger is how long a batch waits for more records after its first
	// one; 0 takes only the first. Default 2 ms.
	BatchLinger time.Duration
	// SessionTimeout is how long the group waits for a silent worker before
	// giving its partitions to others. Default 10 s.
	SessionTimeout time.Duration
	// ExpiryInterval is how often the worker looks for holds past their
	// expiry. Default 1 s.
	ExpiryInterval time.Duration
	// CloseInterval is how often the worker looks for statement periods
	// whose day is over. Default 5 s.
	CloseInterval time.Duration
	// Clock dates the decisions from PostgreSQL's now(); nil: PostgreSQL's
	// own. Tests inject one to cross a day boundary.
	Clock ledger.Clock
	// Keyring seals account metadata before it is stored or published.
	Keyring *sealing.Keyring
	// Scopes tells the account patterns of the API key a record claims, so
	// that a record submitted under a scoped key that moves money from an
	// account outside it is rejected forbidden; nil: no key is scoped.
	Scopes     AccountScopes
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// AccountScopes tells the account patterns of an API key (nil: every
// account, or no such key). apikey.AccountScopes is the implementation;
// it is called from every lane at once.
type AccountScopes interface {
	Accounts(ctx context.Context, keyID string) ([]string, error)
}

// Worker applies commands from the commands topic. Create it with New and
// start it with Run.
type Worker struct {
	opts    Options
	metrics *metrics
	source  ledger.Source // the stored offsets this worker fences on
	decider decider

	readyMu  sync.Mutex
	stuck    map[int]error // partitions whose last batch failed, and why
	assigned bool
	parts    []int // partitions of the current generation
}

// New checks o and registers the worker's metrics.
func New(o Options) (*Worker, error) {
	if o.Pool == nil || o.Log == nil || o.Registerer == nil || len(o.Brokers) == 0 {
		return nil, errors.New("worker: Pool, Brokers, Registerer and Log are required")
	}
	if o.GroupID == "" || o.CommandsTopic == "" || o.EventsTopic == "" || o.PostingsTopic == "" || o.DLQTopic == "" {
		return nil, errors.New("worker: GroupID and the commands, events, postings and DLQ topics are required")
	}
	if o.Keyring == nil {
		return nil, errors.New("worker: Keyring is required: account metadata is stored only sealed")
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.Lanes <= 0 {
		o.Lanes = 1
	}
	if o.BatchLinger < 0 {
		o.BatchLinger = 0
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = 10 * time.Second
	}
	if o.ExpiryInterval <= 0 {
		o.ExpiryInterval = time.Second
	}
	if o.CloseInterval <= 0 {
		o.CloseInterval = 5 * time.Second
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	return &Worker{opts: o, metrics: m, stuck: make(map[int]error),
		source: ledger.Source{Group: o.GroupID, Topic: o.CommandsTopic, Clock: o.Clock},
		decider: decider{eventsTopic: o.EventsTopic, postingsTopic: o.PostingsTopic, balancesTopic: o.BalancesTopic,
			dlqTopic: o.DLQTopic, keyring: o.Keyring},
	}, nil
}

// splitLanes deals the assigned partitions, in order, to at most n lanes.
func splitLanes(assignments []kafka.PartitionAssignment, n int) [][]int {
	var ids []int
	for _, pa := range assignments {
		ids = append(ids, pa.ID)
	}
	slices.Sort(ids)
	lanes := make([][]int, min(n, len(ids)))
	for i, id := range ids {
		lanes[i%len(lanes)] = append(lanes[i%len(lanes)], id)
	}
	return lanes
}

// Run consumes until ctx is done. At each rebalance every lane
// finishes its in-flight transaction and stops before the next generation
// starts. Run returns nil when ctx ends, or the error that stopped the group.
func (w *Worker) Run(ctx context.Context) error {
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                    w.opts.GroupID,
		Brokers:               w.opts.Brokers,
		Dialer:                w.opts.Dialer,
		Topics:                []string{w.opts.CommandsTopic},
		HeartbeatInterval:     w.opts.SessionTimeout / 10,
		SessionTimeout:        w.opts.SessionTimeout,
		RebalanceTimeout:      60 * time.Second, // > attemptTimeout: an in-flight batch finishes within it
		JoinGroupBackoff:      time.Second,
		WatchPartitionChanges: false, // watchCoverage does it without kafka-go's race
		StartOffset:           kafka.FirstOffset,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			w.opts.Log.Warn("kafka consumer group", "detail", fmt.Sprintf(msg, args...))
		}),
	})
	if err != nil {
		return fmt.Errorf("join consumer group %s: %w", w.opts.GroupID, err)
	}
	defer background(ctx, w.runExpirer)()
	defer background(ctx, w.runCloser)()
	defer background(ctx, w.watchLag)()

	stop := make(chan struct{})
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		select {
		case <-ctx.Done():
		case <-stop:
		}
		cg.Close() // ends the current generation and unblocks Next
	}()
	defer func() { close(stop); <-closed }()
	for {
		gen, err := cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				return nil
			}
			w.setUnassigned()
			w.opts.Log.Warn("consumer group generation failed, rejoining", "err", err)
			continue
		}
		assignments := gen.Assignments[w.opts.CommandsTopic]
		w.opts.Log.Info("partitions assigned", "generation", gen.ID, "member", gen.MemberID, "partitions", len(assignments))
		w.setAssigned(gen)
		for _, parts := range splitLanes(assignments, w.opts.Lanes) {
			gen.Start(func(gctx context.Context) { w.runLane(gctx, gen, parts) })
		}
		gen.Start(func(gctx context.Context) { w.watchCoverage(gctx, gen.ID) })
	}
}

// coverageInterval spaces the checks that every partition has an owner.
const coverageInterval = 5 * time.Second

// watchCoverage returns, which ends the generation and makes every member
// rejoin, when two checks in a row find partitions of the commands topic
// that no member of the stable group holds, or members holding partitions
// the topic no longer has. It replaces kafka-go's partition watcher, which
// counts partitions from its own start: a topic recreated while the group
// was joining left the leader assigning the partitions it saw (none) and
// the watcher counting the new topic's, so nothing ever changed for it and
// the group sat with every partition unowned.
func (w *Worker) watchCoverage(ctx context.Context, generation int32) {
	client := &kafka.Client{Addr: kafka.TCP(w.opts.Brokers...), Transport: w.opts.Transport, Timeout: 10 * time.Second}
	t := time.NewTicker(coverageInterval)
	defer t.Stop()
	seen := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := kafkaadmin.GroupCoverage(ctx, client, w.opts.GroupID, w.opts.CommandsTopic)
		if err != nil || !c.Stable || c.Covered() {
			seen = 0
			continue
		}
		if seen++; seen >= 2 {
			w.opts.Log.Warn("the group's assignment does not match the commands topic; rejoining the group",
				"generation", generation, "unowned", c.Unowned, "stray", c.Stray)
			return
		}
	}
}

// Ready is the worker's readiness check: it has joined the group and no
// partition is stuck retrying a failing batch.
func (w *Worker) Ready(context.Context) error {
	w.readyMu.Lock()
	defer w.readyMu.Unlock()
	if !w.assigned {
		return errors.New("not a member of the consumer group (joining)")
	}
	// Halted partitions first (they need an operator), then the lowest
	// partition retrying: the same answer for the same state.
	stuck := slices.Sorted(maps.Keys(w.stuck))
	for _, p := range stuck {
		if err := w.stuck[p]; errors.Is(err, errHalted) {
			return fmt.Errorf("partition %d is %w", p, err)
		}
	}
	for _, p := range stuck {
		return fmt.Errorf("partition %d is retrying: %w", p, w.stuck[p])
	}
	return nil
}

func (w *Worker) setAssigned(gen *kafka.Generation) {
	w.readyMu.Lock()
	w.assigned = true
	clear(w.stuck)
	w.parts = w.parts[:0]
	for _, pa := range gen.Assignments[w.opts.CommandsTopic] {
		w.parts = append(w.parts, pa.ID)
	}
	w.readyMu.Unlock()
}

// lagInterval spaces the lag watcher's samples.
const lagInterval = 5 * time.Second

// watchLag sets the lag of this worker's partitions from the end of each
// partition's log and the offset stored in PostgreSQL, every lagInterval,
// whatever the lanes are doing: a lane stuck retrying does not fetch, but
// its partitions' lag keeps growing here. When PostgreSQL cannot be read,
// the last stored offsets known are used.
func (w *Worker) watchLag(ctx context.Context) {
	f := kafkafetch.New(w.opts.Brokers, w.opts.Transport, w.opts.CommandsTopic)
	stored := positions{}
	reported := map[int]bool{}
	t := time.NewTicker(lagInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.readyMu.Lock()
		parts := slices.Clone(w.parts)
		w.readyMu.Unlock()
		for p := range reported {
			if !slices.Contains(parts, p) {
				w.metrics.lag.DeleteLabelValues(strconv.Itoa(p))
				delete(reported, p)
			}
		}
		if len(parts) == 0 {
			continue
		}
		first, end, err := f.Bounds(ctx, parts)
		if err != nil {
			continue // Kafka unreachable: the lanes say so
		}
		if got, err := w.source.Offsets(ctx, w.opts.Pool, parts); err == nil {
			maps.Copy(stored, got)
		}
		for _, p := range parts {
			from, ok := stored[p]
			if !ok {
				from = first[p] // nothing applied yet
			}
			w.metrics.lag.WithLabelValues(strconv.Itoa(p)).Set(float64(max(0, end[p]-from)))
			reported[p] = true
		}
	}
}

func (w *Worker) setUnassigned() {
	w.readyMu.Lock()
	w.assigned = false
	w.readyMu.Unlock()
}

func (w *Worker) setStuck(partitions []int, err error) {
	w.readyMu.Lock()
	for _, p := range partitions {
		if err == nil {
			delete(w.stuck, p)
		} else {
			w.stuck[p] = err
		}
	}
	w.readyMu.Unlock()
}
