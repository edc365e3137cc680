// Package kafkafetch reads several partitions of one topic with one fetch
// request per partition leader, as Java's consumer does. kafka-go's Reader
// fetches each partition on its own: a consumer of twelve partitions at a
// modest rate sends a fetch per record or two, and the broker's CPU goes on
// request overhead.
//
// It reads committed records only (isolation level read_committed), so an
// upstream may produce with a transactional producer: records of aborted
// transactions are dropped and transaction markers (control batches) never
// reach the caller, who is told where to fetch next past them.
package kafkafetch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// Stats count a consumer's fetches; share one among Fetchers with
// WithStats. The zero value is ready.
type Stats struct {
	Requests, Records, Bytes, Errors atomic.Int64
}

// Offsets maps a partition to an offset.
type Offsets = map[int]int64

// Fetcher reads partitions of one topic. It is not safe for concurrent use.
type Fetcher struct {
	client *kafka.Client
	addr   net.Addr
	topic  string

	leaders   map[int]int // partition → broker id
	leadersAt time.Time
	stats     *Stats
}

// WithStats makes f count its fetches in s, and returns f.
func (f *Fetcher) WithStats(s *Stats) *Fetcher {
	f.stats = s
	return f
}

const (
	leadersTTL    = 30 * time.Second
	fetchMaxBytes = 16 << 20
	// PartitionMaxBytes is the most a fetch returns of one partition: above
	// the broker's default max.message.bytes (1 MiB), so a whole record
	// batch always fits.
	PartitionMaxBytes = 2 << 20
)

// New returns a Fetcher of topic; a nil transport is kafka-go's
// DefaultTransport.
func New(brokers []string, transport kafka.RoundTripper, topic string) *Fetcher {
	addr := kafka.TCP(brokers...)
	return &Fetcher{client: &kafka.Client{Addr: addr, Transport: transport, Timeout: 10 * time.Second}, addr: addr, topic: topic, stats: &Stats{}}
}

// Result is what one fetch returned.
type Result struct {
	// Msgs are the committed data records at or after the requested
	// offsets, in offset order: never a control record or a record of an
	// aborted transaction.
	Msgs map[int][]kafka.Message
	// Next is, for every partition the broker answered without error, the
	// offset to fetch next: past the last batch the answer held, even when
	// that batch was a transaction marker or an aborted record and Msgs has
	// nothing of the partition; the requested offset when it held none.
	Next map[int]int64
	// Missing counts, per partition, the offsets between the requested
	// offset and Next that no record holds: records gone from the log
	// (offsets taken by transaction markers or aborted records are not
	// missing).
	Missing   map[int]int64
	HighWater map[int]int64
	// LastStable is each partition's last stable offset: the end of what a
	// read_committed fetch can return now (below the high watermark while a
	// transaction is open).
	LastStable map[int]int64
	Errs       map[int]error // partitions the broker answered with an error
}

// Fetch reads from each partition of want at its offset. The broker answers
// once minBytes are ready across them, or after maxWait.
func (f *Fetcher) Fetch(ctx context.Context, want Offsets, maxWait time.Duration, minBytes int) (Result, error) {
	out := Result{Msgs: map[int][]kafka.Message{}, Next: Offsets{}, Missing: Offsets{}, HighWater: Offsets{}, LastStable: Offsets{}, Errs: map[int]error{}}
	if err := f.refreshLeaders(ctx, false); err != nil {
		return out, err
	}
	byLeader := map[int][]int{}
	for p := range want {
		leader, ok := f.leaders[p]
		if !ok {
			leader = -1
		}
		byLeader[leader] = append(byLeader[leader], p)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, parts := range byLeader {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f.guardedFetchFrom(ctx, parts, want, maxWait, minBytes, &out, &mu)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(out.Errs) > 0 || len(errs) > 0 {
		f.leadersAt = time.Time{} // leaders may have moved
	}
	return out, errors.Join(errs...)
}

// guardedFetchFrom is fetchFrom with a panic (decoding a broker's answer
// that our reader chokes on, say) turned into that broker's error: the
// goroutine is ours, so no caller's recover would see it, and it would end
// the process.
func (f *Fetcher) guardedFetchFrom(ctx context.Context, parts []int, want Offsets, maxWait time.Duration, minBytes int, out *Result, mu *sync.Mutex) (err error) {
	defer func() { // fetchFrom's own defer has unlocked mu by now
		if r := recover(); r != nil {
			f.stats.Errors.Add(1)
			err = fmt.Errorf("fetch %s: panic while reading the answer: %v\n%s", f.topic, r, debug.Stack())
		}
	}()
	return f.fetchFrom(ctx, parts, want, maxWait, minBytes, out, mu)
}

func (f *Fetcher) fetchFrom(ctx context.Context, parts []int, want Offsets, maxWait time.Duration, minBytes int, out *Result, mu *sync.Mutex) error {
	req := &fetchapi.Request{
		ReplicaID:   -1,
		MaxWaitTime: int32(maxWait / time.Millisecond),
		MinBytes:    int32(minBytes),
		MaxBytes:    fetchMaxBytes,
		// Only committed records: an upstream may produce commands with a
		// transactional producer, and an aborted transaction's must not apply.
		IsolationLevel: int8(kafka.ReadCommitted),
		SessionID:      -1,
		SessionEpoch:   -1,
		Topics:         []fetchapi.RequestTopic{{Topic: f.topic}},
	}
	for _, p := range parts {
		req.Topics[0].Partitions = append(req.Topics[0].Partitions, fetchapi.RequestPartition{
			Partition:          int32(p),
			CurrentLeaderEpoch: -1,
			FetchOffset:        want[p],
			LogStartOffset:     -1,
			PartitionMaxBytes:  PartitionMaxBytes,
		})
	}
	rctx, cancel := context.WithTimeout(ctx, maxWait+10*time.Second)
	defer cancel()
	transport := f.client.Transport
	if transport == nil {
		transport = kafka.DefaultTransport
	}
	f.stats.Requests.Add(1)
	res, err := transport.RoundTrip(rctx, f.addr, req)
	if err != nil {
		f.stats.Errors.Add(1)
		return fmt.Errorf("fetch %s: %w", f.topic, err)
	}
	r := res.(*fetchapi.Response)
	if r.ErrorCode != 0 {
		f.stats.Errors.Add(1)
		return fmt.Errorf("fetch %s: %w", f.topic, kafka.Error(r.ErrorCode))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, t := range r.Topics {
		for _, rp := range t.Partitions {
			p := int(rp.Partition)
			if rp.ErrorCode != 0 {
				f.stats.Errors.Add(1)
				out.Errs[p] = kafka.Error(rp.ErrorCode)
				continue
			}
			out.HighWater[p], out.LastStable[p] = rp.HighWatermark, rp.LastStableOffset
			read, err := readPartition(&rp, f.topic, want[p])
			if len(read.msgs) > 0 {
				out.Msgs[p] = read.msgs
			}
			out.Next[p], out.Missing[p] = read.next, read.missing
			f.stats.Records.Add(int64(len(read.msgs)))
			for _, m := range read.msgs {
				f.stats.Bytes.Add(int64(len(m.Key) + len(m.Value)))
			}
			if err != nil {
				f.stats.Errors.Add(1)
				out.Errs[p] = err
			}
		}
	}
	return nil
}

// refreshLeaders loads the topic's partition leaders when they are unknown
// or old, or always with force.
func (f *Fetcher) refreshLeaders(ctx context.Context, force bool) error {
	if !force && f.leaders != nil && time.Since(f.leadersAt) < leadersTTL {
		return nil
	}
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	md, err := f.client.Metadata(mctx, &kafka.MetadataRequest{Addr: f.addr, Topics: []string{f.topic}})
	if err != nil {
		return fmt.Errorf("metadata of %s: %w", f.topic, err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return fmt.Errorf("metadata of %s: %v", f.topic, md.Topics)
	}
	f.leaders = map[int]int{}
	for _, p := range md.Topics[0].Partitions {
		f.leaders[p.ID] = p.Leader.ID
	}
	f.leadersAt = time.Now()
	return nil
}

// Bounds returns the first and next offsets of partitions: where the log
// starts now (after retention), and the last stable offset, the end of what
// a read_committed fetch can return now (where the next record will go,
// unless a transaction is open).
func (f *Fetcher) Bounds(ctx context.Context, parts []int) (first, next Offsets, err error) {
	var reqs []kafka.OffsetRequest
	for _, p := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := f.client.ListOffsets(lctx, &kafka.ListOffsetsRequest{Addr: f.addr, Topics: map[string][]kafka.OffsetRequest{f.topic: reqs}, IsolationLevel: kafka.ReadCommitted})
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", f.topic, err)
	}
	first, next = Offsets{}, Offsets{}
	for _, po := range res.Topics[f.topic] {
		if po.Error != nil {
			return nil, nil, fmt.Errorf("list offsets of %s/%d: %w", f.topic, po.Partition, po.Error)
		}
		first[po.Partition], next[po.Partition] = po.FirstOffset, po.LastOffset
	}
	for _, p := range parts {
		if _, ok := first[p]; !ok {
			return nil, nil, fmt.Errorf("list offsets of %s: no answer for partition %d", f.topic, p)
		}
	}
	return first, next, nil
}
