// Package retry holds txpipe's one backoff policy and a context-aware
// sleep, shared by the loops that wait out PostgreSQL or Kafka.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Policy is exponential backoff from 100 ms, doubling, capped at
// maxInterval, with no overall deadline (MaxElapsedTime 0: backoff/v4's
// default of 15 minutes would silently give up). Callers that must stop
// bound the attempts themselves (backoff.WithMaxRetries). Not safe for
// concurrent use: one per loop.
func Policy(maxInterval time.Duration) *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.Multiplier = 2
	bo.MaxInterval = maxInterval
	bo.MaxElapsedTime = 0
	bo.Reset()
	return bo
}

// Sleep waits d or until ctx ends, whichever comes first.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
