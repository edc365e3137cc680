package producers

import (
	"math"
	"sync"
	"time"
)

// limiter is a token bucket per API key, counting commands (a batch of 500
// takes 500 tokens): a key may send rate commands a second on average and
// burst at once.
type limiter struct {
	rate  float64
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// take spends n tokens of key's bucket. When they are not there it spends
// nothing and returns how long until they will be.
func (l *limiter) take(key string, n int, now time.Time) (ok bool, wait time.Duration) {
	if l == nil || l.rate <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, seen := l.buckets[key]
	if !seen {
		if len(l.buckets) > 100000 {
			clear(l.buckets) // bounded: keys are few, but never trust that
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	need := float64(n)
	if b.tokens >= need {
		b.tokens -= need
		return true, 0
	}
	return false, time.Duration((need - b.tokens) / l.rate * float64(time.Second))
}
