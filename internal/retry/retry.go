// Package retry holds what every loop that talks to something which may be
// down needs, once: a capped exponential backoff with jitter, and the
// bookkeeping of a run of failures that decides which of them to log (the
// first, then every Nth or one per interval, then the recovery: the Nomad
// service client's pattern). It does no I/O and logs nothing itself: the
// caller keeps its own words and levels.
package retry

import (
	"math/rand/v2"
	"time"
)

// Jitter is how a Backoff spreads its waits under the ceiling.
type Jitter int

const (
	// FullJitter draws uniformly in [0, ceiling]: it spreads out the
	// retries of many clients that lost the same server at the same
	// moment best; a limiter or a minimum elsewhere keeps a loop from
	// spinning when the draw is near zero.
	FullJitter Jitter = iota
	// EqualJitter draws in [ceiling/2, ceiling]: never sooner than half
	// the ceiling, for loops with nothing else pacing them.
	EqualJitter
)

// Backoff is a capped exponential backoff: the n-th consecutive failure
// waits a random time under min(Max, Min·2^(n-1)), spread by Jitter. Reset
// is called on success, so the next failure starts from Min again. The zero
// Jitter is FullJitter. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	Jitter   Jitter
	// Rand returns a float64 in [0, 1); nil means math/rand/v2.
	Rand     func() float64
	failures int
}

// NewBackoff returns a full-jitter backoff between lo and hi.
func NewBackoff(lo, hi time.Duration) *Backoff {
	return &Backoff{Min: lo, Max: hi}
}

// Ceiling is the upper bound of the n-th wait (n >= 1).
func (b *Backoff) Ceiling(n int) time.Duration {
	d := b.Min
	for i := 1; i < n; i++ {
		if d >= b.Max/2 {
			return b.Max
		}
		d *= 2
	}
	return min(d, b.Max)
}

// Next records a failure and returns how long to wait before retrying.
func (b *Backoff) Next() time.Duration {
	b.failures++
	c := b.Ceiling(b.failures)
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	if b.Jitter == EqualJitter {
		return c/2 + time.Duration(r()*float64(c/2+1))
	}
	return time.Duration(r() * float64(c+1))
}

// Failures is the number of failures since the last Reset.
func (b *Backoff) Failures() int { return b.failures }

// Reset forgets past failures.
func (b *Backoff) Reset() { b.failures = 0 }

// Outage is the bookkeeping of a run of failures: how many, since when,
// and which of them to log. Every and Interval choose the lines: the first
// failure of a run is always logged, then every Every-th (0: not by count),
// and any failure at least Interval after the last logged one (0: not by
// time). The zero value logs only the first. Not safe for concurrent use.
type Outage struct {
	Every    int
	Interval time.Duration

	failures   int
	since      time.Time
	lastLogged time.Time
	suppressed int
}

// Fail records a failure at now and says whether to log it; skipped is the
// number of failures not logged since the last line.
func (o *Outage) Fail(now time.Time) (log bool, skipped int) {
	o.failures++
	if o.failures == 1 {
		o.since = now
	}
	log = o.failures == 1 ||
		(o.Every > 0 && o.failures%o.Every == 0) ||
		(o.Interval > 0 && now.Sub(o.lastLogged) >= o.Interval)
	if !log {
		o.suppressed++
		return false, 0
	}
	skipped, o.suppressed, o.lastLogged = o.suppressed, 0, now
	return true, skipped
}

// Failures is the number of failures in the current run (0 while things
// work).
func (o *Outage) Failures() int { return o.failures }

// Since is when the current run began; zero while things work.
func (o *Outage) Since() time.Time { return o.since }

// Recover ends the run at now. It returns how many failures it held and how
// long it lasted; ok is false when there was no run (nothing to log).
func (o *Outage) Recover(now time.Time) (failures int, lasted time.Duration, ok bool) {
	if o.failures == 0 {
		return 0, 0, false
	}
	failures, lasted = o.failures, now.Sub(o.since)
	o.failures, o.since, o.suppressed, o.lastLogged = 0, time.Time{}, 0, time.Time{}
	return failures, lasted, true
}
