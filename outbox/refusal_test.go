package outbox

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

func TestRefusalSortsKafkaErrors(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		reason    string
		topicWide bool
	}{
		{"written", nil, "", false},
		{"topic unknown after a whole round (the writer's metadata answer)",
			fmt.Errorf("topic %q: partitions unknown: a broker says: %w", "x", kafka.UnknownTopicOrPartition), ReasonTopicMissing, true},
		{"topic deleted under a cached partition", fmt.Errorf("partition x/0: gave up: %w", kafka.UnknownTopicOrPartition), ReasonTopicMissing, true},
		{"a name no topic can have", fmt.Errorf("topic %q: partitions unknown: %w", "a b", kafka.InvalidTopic), ReasonTopicMissing, true},
		{"not allowed to see the topic", fmt.Errorf("topic %q: partitions unknown: a broker says: %w", "x", kafka.TopicAuthorizationFailed), ReasonNotAuthorized, true},
		{"allowed to see, not to write", fmt.Errorf("%w: not authorized", kafka.TopicAuthorizationFailed), ReasonNotAuthorized, true},
		{"over the topic's max.message.bytes", kafka.MessageSizeTooLarge, ReasonTooLarge, false},
		{"record list too large", kafka.RecordListTooLarge, ReasonTooLarge, false},
		{"no key on a compacted topic", fmt.Errorf("%w: Compacted topic cannot accept message without key", kafka.InvalidRecord), ReasonInvalidRecord, false},
		{"corrupt message, retried to the end of the round", fmt.Errorf("partition x/1: gave up: %w", kafka.InvalidMessage), ReasonInvalidRecord, false},
		{"leader moving", fmt.Errorf("partition x/1: gave up: %w", kafka.NotLeaderForPartition), "", false},
		{"too few in-sync replicas", kafka.NotEnoughReplicas, "", false},
		{"round over", fmt.Errorf("partition x/1: gave up: %w", context.DeadlineExceeded), "", false},
		{"broker unreachable", errors.New("produce: dial tcp: connection refused"), "", false},
		{"cluster authorization (the relay's own setup, not a row's)", kafka.ClusterAuthorizationFailed, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reason, topicWide := refusal(c.err)
			if reason != c.reason || topicWide != c.topicWide {
				t.Errorf("refusal(%v) = %q, %v; want %q, %v", c.err, reason, topicWide, c.reason, c.topicWide)
			}
		})
	}
}

func TestRefusedTopicIsParkedOnlyAfterTheGrace(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	type step struct {
		at       time.Duration // after t0
		accepted bool          // Kafka took a record of the topic
		reason   string        // else it refused the topic for this
		park     bool          // want: observe says park
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"refused once: wait", []step{{at: 0, reason: ReasonTopicMissing}}},
		{"refused for the whole grace: park", []step{
			{at: 0, reason: ReasonTopicMissing}, {at: 30 * time.Second, reason: ReasonTopicMissing},
			{at: 60 * time.Second, reason: ReasonTopicMissing, park: true}}},
		{"accepted in between: the grace starts again", []step{
			{at: 0, reason: ReasonTopicMissing}, {at: 40 * time.Second, accepted: true},
			{at: 50 * time.Second, reason: ReasonTopicMissing}, {at: 100 * time.Second, reason: ReasonTopicMissing},
			{at: 110 * time.Second, reason: ReasonTopicMissing, park: true}}},
		{"another reason: the grace starts again", []step{
			{at: 0, reason: ReasonTopicMissing}, {at: 50 * time.Second, reason: ReasonNotAuthorized},
			{at: 70 * time.Second, reason: ReasonNotAuthorized}, {at: 110 * time.Second, reason: ReasonNotAuthorized, park: true}}},
		{"not seen for longer than refusalForget: the grace starts again", []step{
			{at: 0, reason: ReasonTopicMissing}, {at: 10 * time.Minute, reason: ReasonTopicMissing},
			{at: 10*time.Minute + 59*time.Second, reason: ReasonTopicMissing}, {at: 11 * time.Minute, reason: ReasonTopicMissing, park: true}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rs := refusals{grace: time.Minute}
			for i, s := range c.steps {
				now := t0.Add(s.at)
				if s.accepted {
					rs.accepted("t")
					continue
				}
				if got := rs.observe("t", s.reason, now); got != s.park {
					t.Errorf("step %d (%s at +%s): observe = %v, want %v", i, s.reason, s.at, got, s.park)
				}
			}
		})
	}
}

func TestStandingRefusalHoldsRowsBackUntilRecheck(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	rs := refusals{grace: time.Minute}
	rs.observe("t", ReasonTopicMissing, t0)
	cases := []struct {
		name         string
		topic        string
		at           time.Duration
		reason       string
		park, standy bool
	}{
		{"another topic is sent", "u", 0, "", false, false},
		{"just refused, in the grace: held back, not parked", "t", 10 * time.Second, ReasonTopicMissing, false, true},
		{"refused longer ago than refusalRecheck: sent to ask again", "t", refusalRecheck, "", false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reason, park, ok := rs.standing(c.topic, t0.Add(c.at))
			if reason != c.reason || park != c.park || ok != c.standy {
				t.Errorf("standing(%s, +%s) = %q, %v, %v; want %q, %v, %v", c.topic, c.at, reason, park, ok, c.reason, c.park, c.standy)
			}
		})
	}
	// Past the grace, a refusal confirmed a moment ago parks without sending.
	rs.observe("t", ReasonTopicMissing, t0.Add(70*time.Second))
	if reason, park, ok := rs.standing("t", t0.Add(80*time.Second)); reason != ReasonTopicMissing || !park || !ok {
		t.Errorf("standing after the grace = %q, %v, %v; want topic_missing, park", reason, park, ok)
	}
}
