package consumers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// fetcher reads several partitions of one topic with one fetch request per
// partition leader, as Java's consumer does. kafka-go's Reader fetches each
// partition on its own: a worker with twelve partitions at a modest rate
// sends a fetch per record or two, and the broker's CPU goes on request
// overhead.
type fetcher struct {
	client *kafka.Client
	addr   net.Addr
	topic  string

	leaders   map[int]int // partition → broker id
	leadersAt time.Time
}

const (
	leadersTTL        = 30 * time.Second
	fetchMaxBytes     = 16 << 20
	partitionMaxBytes = 1 << 20
)

func newFetcher(brokers []string, transport kafka.RoundTripper, topic string) *fetcher {
	addr := kafka.TCP(brokers...)
	return &fetcher{client: &kafka.Client{Addr: addr, Transport: transport, Timeout: 10 * time.Second}, addr: addr, topic: topic}
}

// fetched is what one fetch returned.
type fetched struct {
	msgs      map[int][]kafka.Message // records at or after the requested offsets
	highWater map[int]int64
	errs      map[int]error // partitions the broker answered with an error
}

// fetch reads from each partition of want at its offset. The broker answers
// once minBytes are ready across them, or after maxWait.
func (f *fetcher) fetch(ctx context.Context, want positions, maxWait time.Duration, minBytes int) (fetched, error) {
	out := fetched{msgs: map[int][]kafka.Message{}, highWater: map[int]int64{}, errs: map[int]error{}}
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
			err := f.fetchFrom(ctx, parts, want, maxWait, minBytes, &out, &mu)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(out.errs) > 0 || len(errs) > 0 {
		f.leadersAt = time.Time{} // leaders may have moved
	}
	return out, errors.Join(errs...)
}

func (f *fetcher) fetchFrom(ctx context.Context, parts []int, want positions, maxWait time.Duration, minBytes int, out *fetched, mu *sync.Mutex) error {
	req := &fetchapi.Request{
		ReplicaID:    -1,
		MaxWaitTime:  int32(maxWait / time.Millisecond),
		MinBytes:     int32(minBytes),
		MaxBytes:     fetchMaxBytes,
		SessionID:    -1,
		SessionEpoch: -1,
		Topics:       []fetchapi.RequestTopic{{Topic: f.topic}},
	}
	for _, p := range parts {
		req.Topics[0].Partitions = append(req.Topics[0].Partitions, fetchapi.RequestPartition{
			Partition:          int32(p),
			CurrentLeaderEpoch: -1,
			FetchOffset:        want[p],
			LogStartOffset:     -1,
			PartitionMaxBytes:  partitionMaxBytes,
		})
	}
	rctx, cancel := context.WithTimeout(ctx, maxWait+10*time.Second)
	defer cancel()
	transport := f.client.Transport
	if transport == nil {
		transport = kafka.DefaultTransport
	}
	res, err := transport.RoundTrip(rctx, f.addr, req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", f.topic, err)
	}
	r := res.(*fetchapi.Response)
	if r.ErrorCode != 0 {
		return fmt.Errorf("fetch %s: %w", f.topic, kafka.Error(r.ErrorCode))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, t := range r.Topics {
		for _, rp := range t.Partitions {
			p := int(rp.Partition)
			if rp.ErrorCode != 0 {
				out.errs[p] = kafka.Error(rp.ErrorCode)
				continue
			}
			out.highWater[p] = rp.HighWatermark
			if rp.RecordSet.Records == nil {
				continue
			}
			msgs, err := readRecords(rp.RecordSet.Records, f.topic, p, want[p], rp.HighWatermark)
			out.msgs[p] = msgs
			if err != nil {
				out.errs[p] = err
			}
		}
	}
	return nil
}

// readRecords decodes a partition's records at or after from; a fetch
// starts at the beginning of the record batch that holds from.
func readRecords(rr kafka.RecordReader, topic string, partition int, from, highWater int64) ([]kafka.Message, error) {
	var msgs []kafka.Message
	for {
		r, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			return msgs, fmt.Errorf("decode records of partition %d: %w", partition, err)
		}
		key, kerr := readBytes(r.Key)
		value, verr := readBytes(r.Value)
		if r.Offset < from {
			continue
		}
		if err := errors.Join(kerr, verr); err != nil {
			return msgs, fmt.Errorf("decode record %d of partition %d: %w", r.Offset, partition, err)
		}
		msgs = append(msgs, kafka.Message{
			Topic: topic, Partition: partition, Offset: r.Offset, HighWaterMark: highWater,
			Key: key, Value: value, Headers: r.Headers, Time: r.Time,
		})
	}
}

func readBytes(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	defer b.Close()
	return protocol.ReadAll(b)
}

// refreshLeaders loads the topic's partition leaders when they are unknown
// or old, or always with force.
func (f *fetcher) refreshLeaders(ctx context.Context, force bool) error {
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

// bounds returns the first and next offsets of partitions: where the log
// starts now (after retention) and where the next record will go.
func (f *fetcher) bounds(ctx context.Context, parts []int) (first, next positions, err error) {
	var reqs []kafka.OffsetRequest
	for _, p := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := f.client.ListOffsets(lctx, &kafka.ListOffsetsRequest{Addr: f.addr, Topics: map[string][]kafka.OffsetRequest{f.topic: reqs}})
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", f.topic, err)
	}
	first, next = positions{}, positions{}
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
