package retry

import (
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
			b := NewBackoff(tc.min, tc.max)
			for i, want := range tc.ceilings {
				if got := b.Ceiling(i + 1); got != want {
					t.Errorf("Ceiling(%d) = %v, want %v", i+1, got, want)
				}
			}
			// Far out it must stay capped, not overflow.
			if got := b.Ceiling(10_000); got != tc.max {
				t.Errorf("Ceiling(10000) = %v, want the cap %v", got, tc.max)
			}
			// Full jitter: every draw lies in [0, ceiling], the extremes
			// of the random source included.
			for _, r := range []float64{0, 0.5, 0.999999999} {
				b := NewBackoff(tc.min, tc.max)
				b.Rand = func() float64 { return r }
				for n := 1; n <= 40; n++ {
					c := b.Ceiling(n)
					if d := b.Next(); d < 0 || d > c {
						t.Fatalf("rand %v, failure %d: Next() = %v, want within [0, %v]", r, n, d, c)
					}
				}
			}
			// And with the real source.
			b = NewBackoff(tc.min, tc.max)
			for n := 1; n <= 200; n++ {
				if d := b.Next(); d < 0 || d > tc.max {
					t.Fatalf("failure %d: Next() = %v, want within [0, %v]", n, d, tc.max)
				}
			}
		})
	}
}

func TestBackoffResets(t *testing.T) {
	b := NewBackoff(time.Second, time.Minute)
	b.Rand = func() float64 { return 0.999999999 } // draw the ceiling
	for range 5 {
		b.Next()
	}
	if d := b.Next(); d < 30*time.Second {
		t.Fatalf("after 6 failures Next() = %v, want about 32s", d)
	}
	b.Reset()
	if d := b.Next(); d > time.Second {
		t.Fatalf("after reset Next() = %v, want at most the minimum 1s", d)
	}
}

func TestBackoffEqualJitter(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999999999} {
		b := &Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: EqualJitter, Rand: func() float64 { return r }}
		for n := 1; n <= 20; n++ {
			c := b.Ceiling(n)
			if d := b.Next(); d < c/2 || d > c {
				t.Fatalf("rand %v, failure %d: Next() = %v, want within [%v, %v]", r, n, d, c/2, c)
			}
		}
	}
}

func TestOutageLogsFirstEveryNthAndRecovery(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	o := Outage{Every: 10}
	var logged []int
	for n := 1; n <= 25; n++ {
		if log, skipped := o.Fail(t0.Add(time.Duration(n) * time.Second)); log {
			logged = append(logged, n)
			if want := map[int]int{1: 0, 10: 8, 20: 9}[n]; skipped != want {
				t.Errorf("failure %d: skipped = %d, want %d", n, skipped, want)
			}
		}
	}
	if want := []int{1, 10, 20}; !equal(logged, want) {
		t.Fatalf("logged failures %v, want %v", logged, want)
	}
	if !o.Since().Equal(t0.Add(time.Second)) || o.Failures() != 25 {
		t.Fatalf("since %v, failures %d; want %v, 25", o.Since(), o.Failures(), t0.Add(time.Second))
	}
	n, lasted, ok := o.Recover(t0.Add(30 * time.Second))
	if !ok || n != 25 || lasted != 29*time.Second {
		t.Fatalf("Recover = %d, %v, %v; want 25, 29s, true", n, lasted, ok)
	}
	if _, _, ok := o.Recover(t0.Add(31 * time.Second)); ok {
		t.Fatal("a second Recover reports a run that already ended")
	}
	if log, _ := o.Fail(t0.Add(40 * time.Second)); !log || o.Failures() != 1 {
		t.Fatal("the first failure of a new run is not logged")
	}
}

func TestOutageByInterval(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	o := Outage{Interval: 30 * time.Second}
	var logged []int
	for s := 0; s <= 70; s += 5 { // a failure every 5 s
		if log, _ := o.Fail(t0.Add(time.Duration(s) * time.Second)); log {
			logged = append(logged, s)
		}
	}
	if want := []int{0, 30, 60}; !equal(logged, want) {
		t.Fatalf("logged at %v s, want %v", logged, want)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
