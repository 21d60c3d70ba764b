package proxy

import (
	"sync/atomic"
	"time"
)

// A retry budget bounds the extra attempts (retries after a failure and
// hedges after a per-try timeout) a service gets, as Finagle's
// RetryBudget and Linkerd's retry budgets do: over a sliding window, extra
// attempts may add up to BudgetRatio of the requests, plus a floor of
// BudgetMinPerSecond a second so a quiet service can still retry. Without
// it, an overloaded service that answers slowly would be sent every request
// twice and pushed further over. A retry after a connect failure (nothing
// was sent) or after the instance left the pool is never refused: it adds
// no load on anything that was serving.
const (
	BudgetRatio        = 0.2
	BudgetMinPerSecond = 10
	budgetWindow       = 10 * time.Second
	budgetSlots        = 10 // one a second
)

// budgetAllows reports whether one more extra attempt fits a budget that
// saw requests first attempts and extra attempts already over window.
func budgetAllows(requests, extra int64, ratio float64, minPerSecond float64, window time.Duration) bool {
	allowed := ratio*float64(requests) + minPerSecond*window.Seconds()
	return float64(extra)+1 <= allowed
}

// budget is a service's retry budget: counts of requests and of extra
// attempts in one-second slots over the last budgetWindow. It is lock free;
// two requests that race at a slot boundary may both count in the new
// slot's first second, which only blurs the window by a few requests.
type budget struct {
	slots [budgetSlots]budgetSlot

	// Totals since start, for metrics.
	requests atomic.Uint64
	retries  atomic.Uint64 // extra attempts after a failure, budgeted
	hedges   atomic.Uint64 // extra attempts after a per-try timeout
	free     atomic.Uint64 // retries never budgeted: connect failure, instance left
	refused  atomic.Uint64 // extra attempts the budget refused
}

type budgetSlot struct {
	sec      atomic.Int64 // the unix second the counts belong to
	requests atomic.Int64
	extra    atomic.Int64
}

// slot returns the slot for the unix second sec, emptied if it held an
// older second.
func (b *budget) slot(sec int64) *budgetSlot {
	s := &b.slots[sec%budgetSlots]
	if old := s.sec.Load(); old != sec && s.sec.CompareAndSwap(old, sec) {
		s.requests.Store(0)
		s.extra.Store(0)
	}
	return s
}

// request counts one request (its first attempt).
func (b *budget) request(now time.Time) {
	b.requests.Add(1)
	b.slot(now.Unix()).requests.Add(1)
}

// sums returns the requests and extra attempts of the window ending now.
func (b *budget) sums(now time.Time) (requests, extra int64) {
	sec := now.Unix()
	for i := range b.slots {
		s := &b.slots[i]
		if d := sec - s.sec.Load(); d >= 0 && d < budgetSlots {
			requests += s.requests.Load()
			extra += s.extra.Load()
		}
	}
	return requests, extra
}

// allows reports whether the budget would grant an extra attempt now.
func (b *budget) allows(now time.Time) bool {
	req, extra := b.sums(now)
	return budgetAllows(req, extra, BudgetRatio, BudgetMinPerSecond, budgetWindow)
}

// withdraw takes one extra attempt from the budget if it allows one;
// hedge says which kind it is, for the metrics.
func (b *budget) withdraw(now time.Time, hedge bool) bool {
	req, extra := b.sums(now)
	if !budgetAllows(req, extra, BudgetRatio, BudgetMinPerSecond, budgetWindow) {
		b.refused.Add(1)
		return false
	}
	b.slot(now.Unix()).extra.Add(1)
	if hedge {
		b.hedges.Add(1)
	} else {
		b.retries.Add(1)
	}
	return true
}

// BudgetStats is a service's retry budget use since the proxy started.
type BudgetStats struct {
	Service string
	// Requests counts the requests routed to the service.
	Requests uint64
	// Retries and Hedges count the extra attempts the budget granted:
	// after a failure, and after a per-try timeout.
	Retries, Hedges uint64
	// Unbudgeted counts the retries the budget never refuses: after a
	// connect failure or after the instance left the pool.
	Unbudgeted uint64
	// Refused counts the extra attempts the budget refused.
	Refused uint64
	// Available is how many extra attempts the budget would grant now.
	Available float64
	// TryTimeout is the per-try timeout a request would get now (0: off).
	TryTimeout time.Duration
}
