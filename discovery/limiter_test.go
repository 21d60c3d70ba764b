package discovery

import (
	"context"
	"testing"
	"time"
)

// fakeClock is a settable clock for the limiter.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestBackoffLimiterBurstThenRate(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	l := newLimiter(time.Second, 2, clk.now)
	steps := []struct {
		name    string
		advance time.Duration
		want    time.Duration
	}{
		{"first of the burst", 0, 0},
		{"second of the burst", 0, 0},
		{"third waits a full interval", 0, time.Second},
		{"fourth queues behind it", 0, 2 * time.Second},
		{"time passes: debt paid, one earned", 3 * time.Second, 0},
		{"half an interval later: waits the other half", 500 * time.Millisecond, 500 * time.Millisecond},
		{"a long poll later the bucket is full again", time.Minute, 0},
		{"and holds two, not more", 0, 0},
		{"third after refill waits", 0, time.Second},
	}
	for _, s := range steps {
		clk.advance(s.advance)
		if got := l.reserve(); got != s.want {
			t.Fatalf("%s: reserve() = %v, want %v", s.name, got, s.want)
		}
	}
}

func TestBackoffLimiterWaitHonoursContext(t *testing.T) {
	l := newLimiter(time.Hour, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.wait(ctx); err != nil {
		t.Fatalf("first wait: %v", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	start := time.Now()
	if err := l.wait(cctx); err != context.Canceled {
		t.Fatalf("wait with a cancelled context = %v, want context.Canceled", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("cancelled wait took %v", el)
	}
}
