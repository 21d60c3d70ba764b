package discovery

import (
	"context"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		min, max time.Duration
		ceilings []time.Duration // ceiling of failure 1, 2, 3, ...
	}{
		{"defaults", 250 * time.Millisecond, 30 * time.Second, []time.Duration{
			250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second,
			8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}},
		{"min equals max", time.Second, time.Second, []time.Duration{time.Second, time.Second, time.Second}},
		{"max not a power of two of min", 100 * time.Millisecond, 300 * time.Millisecond, []time.Duration{
			100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackoff(tc.min, tc.max)
			for i, want := range tc.ceilings {
				if got := b.ceiling(i + 1); got != want {
					t.Errorf("ceiling(%d) = %v, want %v", i+1, got, want)
				}
			}
			// Far out it must stay capped, not overflow.
			if got := b.ceiling(10_000); got != tc.max {
				t.Errorf("ceiling(10000) = %v, want the cap %v", got, tc.max)
			}
			// Full jitter: every draw lies in [0, ceiling], the extremes
			// of the random source included.
			for _, r := range []float64{0, 0.5, 0.999999999} {
				b := newBackoff(tc.min, tc.max)
				b.rand = func() float64 { return r }
				for n := 1; n <= 40; n++ {
					c := b.ceiling(n)
					if d := b.next(); d < 0 || d > c {
						t.Fatalf("rand %v, failure %d: next() = %v, want within [0, %v]", r, n, d, c)
					}
				}
			}
			// And with the real source.
			b = newBackoff(tc.min, tc.max)
			for n := 1; n <= 200; n++ {
				if d := b.next(); d < 0 || d > tc.max {
					t.Fatalf("failure %d: next() = %v, want within [0, %v]", n, d, tc.max)
				}
			}
		})
	}
}

func TestBackoffResets(t *testing.T) {
	b := newBackoff(time.Second, time.Minute)
	b.rand = func() float64 { return 0.999999999 } // draw the ceiling
	for range 5 {
		b.next()
	}
	if d := b.next(); d < 30*time.Second {
		t.Fatalf("after 6 failures next() = %v, want about 32s", d)
	}
	b.reset()
	if d := b.next(); d > time.Second {
		t.Fatalf("after reset next() = %v, want at most the minimum 1s", d)
	}
}

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
