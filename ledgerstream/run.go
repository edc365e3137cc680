package ledgerstream

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
)

// Options configure Run.
type Options struct {
	Brokers []string
	// Topic is the postings topic (default ledger.postings.v1).
	Topic string
	// GroupID is the consumer group: its committed offsets say where a
	// restart resumes, so give the Tracker the state stored with them. Run
	// one member per group: the Tracker holds every account, and a
	// partition that moved to another member and back would look like a
	// gap. (Several services each run their own group.)
	GroupID string
	// Dialer reaches the brokers (TLS, SASL); nil: kafka-go's default.
	Dialer *kafka.Dialer
	// Tracker holds the accounts (NewTracker(nil) to start from the
	// beginning of the topic with a new group).
	Tracker *Tracker
	// OnPosting is called once per new posting (New or Gap), in topic
	// order per account, with the account as it now stands. An error stops
	// Run before the posting's offset is committed, and the Tracker
	// forgets the posting: it is delivered again when Run is called again
	// (at least once; the Tracker's state, stored with what OnPosting
	// wrote, makes it exactly once).
	OnPosting func(ctx context.Context, p Posting, a Account) error
	// OnProblem is told of every gap and broken link; nil ignores them
	// (they still reach OnPosting as Gap postings, or not at all when
	// Broken).
	OnProblem func(Problem)
	// OnUndecodable is told of a record that is not an event, or a posting
	// event that does not decode; nil stops Run with an error, as such a
	// record means a wrong topic. Events of other types are skipped.
	OnUndecodable func(m kafka.Message, err error)
}

// Run consumes the postings topic in a consumer group until ctx ends (it
// then returns nil) or a callback fails. Offsets are committed after each
// record's callbacks returned.
func Run(ctx context.Context, o Options) error {
	if len(o.Brokers) == 0 || o.GroupID == "" || o.Tracker == nil || o.OnPosting == nil {
		return errors.New("ledgerstream: Brokers, GroupID, Tracker and OnPosting are required")
	}
	if o.Topic == "" {
		o.Topic = "ledger.postings.v1"
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: o.Brokers, GroupID: o.GroupID, Topic: o.Topic, Dialer: o.Dialer,
		StartOffset: kafka.FirstOffset, IsolationLevel: kafka.ReadCommitted})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetch from %s: %w", o.Topic, err)
		}
		if err := o.handle(ctx, m); err != nil {
			return err
		}
		if err := r.CommitMessages(ctx, m); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("commit %s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err)
		}
	}
}

func (o Options) handle(ctx context.Context, m kafka.Message) error {
	p, err := Decode(m.Value)
	if errors.Is(err, ErrNotAPosting) {
		return nil
	}
	if err != nil {
		if o.OnUndecodable == nil {
			return fmt.Errorf("%s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err)
		}
		o.OnUndecodable(m, err)
		return nil
	}
	before, existed := o.Tracker.Account(p.AccountID)
	verdict, prob := o.Tracker.Observe(p)
	if prob != nil && o.OnProblem != nil {
		o.OnProblem(*prob)
	}
	if verdict != New && verdict != Gap {
		return nil
	}
	a, _ := o.Tracker.Account(p.AccountID)
	if err := o.OnPosting(ctx, p, a); err != nil {
		o.Tracker.undo(p.AccountID, before, existed)
		return err
	}
	return nil
}
