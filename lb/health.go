package lb

import (
	"math"
	"net/http"
	"time"
)

// Latency EWMA (Peak EWMA, as Finagle and Linkerd do it): a sample above the
// estimate replaces it at once, so a slow instance is noticed on its first
// slow answer; lower samples pull it down by ewmaAlpha; and the estimate
// decays towards zero with time constant ewmaDecay, so an instance avoided
// for being slow gets probed again instead of starving forever.
const (
	ewmaAlpha = 0.3
	ewmaDecay = 10 * time.Second
	// A failed attempt feeds a penalty into the EWMA, so that an instance
	// that fails fast does not look fast: twice its current estimate, at
	// least minFailPenalty and at most maxFailPenalty (unless the failure
	// itself took longer).
	minFailPenalty = time.Second
	maxFailPenalty = time.Minute
)

// Done reports the outcome of an attempt on inst, which Pick returned. It
// takes the attempt out of the in-flight count, does passive health
// (MaxFails consecutive failures eject the instance for
// FailTimeout*2^(k-1) on its k-th consecutive ejection; a success resets
// both counts), feeds the latency EWMA, and honours a Retry-After on a 429
// or 503 by making the instance back off until then.
func (b *Balancer) Done(inst *Instance, res Result) {
	if inst == nil || inst.Stats == nil {
		return
	}
	st := inst.Stats
	st.InFlight.Add(-1)
	now := nanotime()
	if res.Failed() {
		st.Failures.Add(1)
		b.failed(inst, now)
		penalty := min(max(2*decayedLatency(st, now), float64(minFailPenalty)), float64(maxFailPenalty))
		observeLatency(st, max(float64(res.Latency), penalty), now)
	} else {
		b.succeeded(inst, now)
		if res.Latency > 0 {
			observeLatency(st, float64(res.Latency), now)
		}
	}
	if res.RetryAfter > 0 && (res.Status == http.StatusTooManyRequests || res.Status == http.StatusServiceUnavailable) {
		st.BackoffUntil.Store(now + int64(min(res.RetryAfter, MaxEjection)))
	}
}

// failed counts a consecutive failure and ejects the instance when there are
// MaxFails of them. Once the ejection expires the count is still at
// MaxFails, so the next failure ejects again, for twice as long (a half-open
// circuit breaker); failures of requests that were in flight while it was
// ejected do not extend the ejection.
func (b *Balancer) failed(inst *Instance, now int64) {
	st := inst.Stats
	n := st.ConsecFails.Add(1)
	if b.maxFails < 0 || n < b.maxFails {
		return
	}
	until := st.EjectedUntil.Load()
	if until > now {
		return
	}
	k := st.Ejections.Load() + 1
	d := b.ejectionPeriod(k)
	if !st.EjectedUntil.CompareAndSwap(until, now+int64(d)) {
		return // a concurrent failure ejected it
	}
	st.Ejections.Store(k)
	b.log.Warn("instance ejected", "service", b.service, "instance", inst.ID,
		"consecutive_failures", n, "ejection", k, "period", d)
}

// ejectionPeriod is FailTimeout*2^(k-1), capped at maxEjection.
func (b *Balancer) ejectionPeriod(k int32) time.Duration {
	d := b.failTimeout
	for i := int32(1); i < k && d < b.maxEjection; i++ {
		d *= 2
	}
	return min(d, b.maxEjection)
}

// succeeded resets the failure and ejection counts, and clears deadlines that
// have passed so that later picks need not read the clock. It writes only
// what changes: the success path is every request's.
func (b *Balancer) succeeded(inst *Instance, now int64) {
	st := inst.Stats
	if st.ConsecFails.Load() != 0 {
		st.ConsecFails.Store(0)
	}
	if st.Ejections.Load() != 0 && st.Ejections.Swap(0) != 0 {
		b.log.Info("instance recovered", "service", b.service, "instance", inst.ID)
	}
	if u := st.EjectedUntil.Load(); u != 0 && u <= now {
		st.EjectedUntil.CompareAndSwap(u, 0)
	}
	if u := st.BackoffUntil.Load(); u != 0 && u <= now {
		st.BackoffUntil.CompareAndSwap(u, 0)
	}
}

// observeLatency folds a sample (nanoseconds) into the EWMA. The value and
// its stamp are two atomics, not one: a reader may briefly pair a new value
// with the old stamp and see it a little more decayed, which is harmless.
func observeLatency(st *Stats, sample float64, now int64) {
	for {
		bits := st.EWMABits.Load()
		cur := decayedLatency(st, now)
		next := sample
		if cur > 0 && sample < cur {
			next = cur + ewmaAlpha*(sample-cur)
		}
		if st.EWMABits.CompareAndSwap(bits, math.Float64bits(next)) {
			st.EWMAStamp.Store(now)
			return
		}
	}
}

// Latency returns the instance's latency estimate (the decayed EWMA that
// p2c_ewma uses), 0 before the first sample.
func (s *Stats) Latency(now time.Time) time.Duration {
	return time.Duration(decayedLatency(s, now.UnixNano()))
}

// Ejected reports whether passive health has ejected the instance at now.
func (s *Stats) Ejected(now time.Time) bool {
	return s.EjectedUntil.Load() > now.UnixNano()
}
