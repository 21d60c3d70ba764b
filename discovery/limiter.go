package discovery

import (
	"context"
	"sync"
	"time"
)

// limiter is a token bucket: it holds up to burst tokens, earns one every
// interval and each query spends one. Consul's blocking-query docs ask for
// exactly this ("a token bucket with burst of 2"): in the happy case a long
// poll lasts long enough for the bucket to refill and the loop never waits,
// but when the result churns the loop degrades into polling once per
// interval instead of a busy loop. A plain sleep per iteration would delay
// every update instead.
type limiter struct {
	mu       sync.Mutex
	interval time.Duration
	burst    float64
	tokens   float64
	last     time.Time
	now      func() time.Time
}

func newLimiter(interval time.Duration, burst int, now func() time.Time) *limiter {
	if now == nil {
		now = time.Now
	}
	return &limiter{interval: interval, burst: float64(burst), tokens: float64(burst), last: now(), now: now}
}

// reserve takes a token and returns how long the caller must wait before
// using it (0 when a token was available).
func (l *limiter) reserve() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.interval <= 0 {
		return 0
	}
	if elapsed := now.Sub(l.last); elapsed > 0 {
		l.tokens = min(l.burst, l.tokens+float64(elapsed)/float64(l.interval))
	}
	l.last = now
	l.tokens--
	if l.tokens >= 0 {
		return 0
	}
	return time.Duration(-l.tokens * float64(l.interval))
}

// wait blocks until the next query may start or ctx is done.
func (l *limiter) wait(ctx context.Context) error {
	return sleepCtx(ctx, l.reserve())
}

// sleepCtx waits d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
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
