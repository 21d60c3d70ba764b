package discovery

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// backoff returns the delay before retry number n (1-based): capped
// exponential growth from min to max, with jitter over the upper half so
// that many watchers do not retry in step.
func backoff(n int, minD, maxD time.Duration) time.Duration {
	if n < 1 {
		n = 1
	}
	d := minD << min(n-1, 30)
	if d <= 0 || d > maxD {
		d = maxD
	}
	return d/2 + rand.N(d/2+1)
}

// limiter is a token bucket: burst queries at once, then one per interval.
// It keeps a watch loop from spinning when the index changes very often.
type limiter struct {
	mu       sync.Mutex
	interval time.Duration
	burst    float64
	tokens   float64
	last     time.Time
}

func newLimiter(interval time.Duration, burst int) *limiter {
	return &limiter{interval: interval, burst: float64(burst), tokens: float64(burst)}
}

// wait takes a token, sleeping until one is available or ctx is done.
func (l *limiter) wait(ctx context.Context) error {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+float64(now.Sub(l.last))/float64(l.interval))
	}
	l.last = now
	var d time.Duration
	if l.tokens >= 1 {
		l.tokens--
	} else {
		d = time.Duration((1 - l.tokens) * float64(l.interval))
		l.tokens = 0
		l.last = now.Add(d)
	}
	l.mu.Unlock()
	if d == 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
