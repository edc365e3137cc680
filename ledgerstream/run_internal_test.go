package ledgerstream

import (
	"context"
	"errors"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
)

// A posting whose callback failed is new again when it comes back (Kafka
// redelivers it: its offset was not committed); an event of another type
// is skipped.
func TestAFailedDeliveryIsDeliveredAgain(t *testing.T) {
	p := domain.Posting{AccountID: "a", AccountVersion: 1, Currency: "EUR", Amount: 5, BalanceAfter: 5}
	const cmd = "0190b1c2-0000-7000-8000-000000000001"
	p.Digest = domain.PostingDigest("", p, cmd)
	ev := domain.Event{EventID: "e1", Type: PostingType, CommandID: cmd,
		Data: []byte(`{"account_id":"a","account_version":1,"currency":"EUR","amount":5,"balance_after":5,"command_type":"deposit","digest":"` + p.Digest + `"}`)}
	calls, fail := 0, true
	o := Options{Tracker: NewTracker(nil), OnPosting: func(context.Context, Posting, Account) error {
		calls++
		if fail {
			return errors.New("the store is down")
		}
		return nil
	}}
	m := kafka.Message{Value: ev.Encode()}
	if err := o.handle(context.Background(), m); err == nil {
		t.Fatal("handle with a failing callback = nil, want its error")
	}
	fail = false
	if err := o.handle(context.Background(), m); err != nil || calls != 2 {
		t.Errorf("the posting again = %v after %d calls, want delivered a second time", err, calls)
	}
	if a, _ := o.Tracker.Account("a"); a.Version != 1 || a.Digest != p.Digest {
		t.Errorf("account = %+v, want version 1 chained", a)
	}
	other := domain.Event{EventID: "e2", Type: "statement.closed", Data: []byte(`{}`)}
	if err := o.handle(context.Background(), kafka.Message{Value: other.Encode()}); err != nil || calls != 2 {
		t.Errorf("an event of another type = %v (%d calls), want skipped", err, calls)
	}
}
