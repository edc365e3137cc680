package retry

import (
	"context"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
)

func TestPolicyNeverGivesUpAndCaps(t *testing.T) {
	bo := Policy(time.Second)
	var last time.Duration
	for range 100 {
		last = bo.NextBackOff()
		if last == backoff.Stop {
			t.Fatal("Policy gave up")
		}
	}
	if last > 1500*time.Millisecond { // cap plus randomization (0.5)
		t.Errorf("interval after 100 attempts = %v, want at most the 1 s cap (±50%%)", last)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { Sleep(ctx, time.Hour); close(done) }()
	<-done // a Sleep that ignored ctx would hang the test
}
