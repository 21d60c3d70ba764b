package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// Per-try timeouts and hedging. An idempotent request whose body can be
// replayed gets a per-try timeout: when its instance has sent no response
// head by then, the request is also sent to another instance, and whichever
// head comes first is forwarded; the other attempt is cancelled and its
// connection dropped. This is what Envoy's per_try_timeout with
// hedge_on_per_try_timeout does; it turns an instance that stalled, or one
// on a host that vanished with requests on its kept-alive connections, from
// a wait for TCP or the response-header timeout into a delay of one per-try
// timeout. Requests that are not idempotent never get one: sending them
// twice could run them twice.
//
// The timeout adapts to the service: TryTimeoutMultiple times the p99 of
// its recent times to response head, within [TryTimeoutFloor,
// TryTimeoutCeiling]; TryTimeoutUnobserved until enough latency has been
// observed. Every hedge is taken from the service's retry budget
// (budget.go), so a service that is slow for everyone is not sent twice
// the load.

// Per-try timeout settings of a Route (TryTimeout).
const (
	TryTimeoutAdaptive = time.Duration(0)  // the default: from observed latency
	TryTimeoutOff      = time.Duration(-1) // no per-try timeout, no hedging
)

// Adaptive per-try timeout bounds.
const (
	TryTimeoutMultiple   = 3
	TryTimeoutFloor      = 50 * time.Millisecond
	TryTimeoutCeiling    = 10 * time.Second
	TryTimeoutUnobserved = time.Second
	// minLatencySamples is how many observed latencies the adaptive
	// timeout needs before it trusts their p99.
	minLatencySamples = 50
)

// tryTimeoutFor is the per-try timeout policy: setting is the route's
// TryTimeout; p99 and samples describe the observed latency.
func tryTimeoutFor(setting, p99 time.Duration, samples int64) time.Duration {
	switch {
	case setting < 0:
		return 0
	case setting > 0:
		return setting
	case samples < minLatencySamples:
		return TryTimeoutUnobserved
	}
	return min(max(TryTimeoutMultiple*p99, TryTimeoutFloor), TryTimeoutCeiling)
}

// mayHedge reports whether a request may get a per-try timeout and
// hedges: idempotent (gRPC calls excepted), replayable, no upgrade.
func mayHedge(idempotent, replayable, grpc bool, upgrade string) bool {
	return idempotent && replayable && !grpc && upgrade == ""
}

// Why an attempt's context was cancelled by the proxy itself.
var (
	errHedgeLost    = errors.New("proxy: another attempt answered first")
	errInstanceLeft = errors.New("proxy: instance left the pool")
)

// serviceHedge is the per-try timeout state of one service: the setting,
// the observed latency and the retry budget. It outlives route updates.
type serviceHedge struct {
	service string
	setting atomic.Int64 // a Route's TryTimeout
	lat     latencyTracker
	budget  budget

	cached   atomic.Int64 // the current timeout, ns
	cachedAt atomic.Int64 // unix ns of its computation
}

// tryTimeout returns the per-try timeout for a request starting at now (0:
// none), recomputing it from the latency at most every 100ms.
func (h *serviceHedge) tryTimeout(now time.Time) time.Duration {
	setting := time.Duration(h.setting.Load())
	if setting != TryTimeoutAdaptive {
		return tryTimeoutFor(setting, 0, 0)
	}
	at := h.cachedAt.Load()
	if ns := now.UnixNano(); ns-at > int64(100*time.Millisecond) && h.cachedAt.CompareAndSwap(at, ns) {
		p99, n := h.lat.quantile(now, 0.99)
		h.cached.Store(int64(tryTimeoutFor(setting, p99, n)))
	}
	if d := time.Duration(h.cached.Load()); d > 0 {
		return d
	}
	return TryTimeoutUnobserved
}

// hedges keeps the serviceHedge of every balancer the proxy routes to.
type hedges struct {
	mu sync.Mutex
	m  map[*lb.Balancer]*serviceHedge
}

// attach gives every route of rt its service's serviceHedge, creating it
// the first time, and applies the routes' TryTimeout.
func (hs *hedges) attach(rt *routeTable) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.m == nil {
		hs.m = make(map[*lb.Balancer]*serviceHedge)
	}
	rt.each(func(cr *compiledRoute) {
		h := hs.m[cr.balancer]
		if h == nil {
			h = &serviceHedge{service: cr.service}
			hs.m[cr.balancer] = h
		}
		h.setting.Store(int64(cr.tryTimeout))
		cr.hedge = h
	})
}

// BudgetStats returns every routed service's retry budget use.
func (p *Proxy) BudgetStats() []BudgetStats {
	p.hedges.mu.Lock()
	defer p.hedges.mu.Unlock()
	now := time.Now()
	out := make([]BudgetStats, 0, len(p.hedges.m))
	for _, h := range p.hedges.m {
		req, extra := h.budget.sums(now)
		avail := BudgetRatio*float64(req) + BudgetMinPerSecond*budgetWindow.Seconds() - float64(extra)
		out = append(out, BudgetStats{
			Service: h.service, Requests: h.budget.requests.Load(),
			Retries: h.budget.retries.Load(), Hedges: h.budget.hedges.Load(),
			Unbudgeted: h.budget.free.Load(), Refused: h.budget.refused.Load(),
			Available: max(avail, 0), TryTimeout: h.tryTimeout(now),
		})
	}
	return out
}

// retryAllowed reports whether the retry of an attempt that failed with
// err fits the service's retry budget. A connect failure or an instance
// that left the pool is always allowed.
func (x *exchange) retryAllowed(err error) bool {
	h := x.route.hedge
	if h == nil {
		return true
	}
	if _, ok := errors.AsType[*DialError](err); ok || errors.Is(err, errInstanceLeft) {
		h.budget.free.Add(1)
		return true
	}
	return h.budget.withdraw(time.Now(), false)
}

// send runs attempt a: with a per-try timeout and hedges when the request
// may have them, else alone. It returns the attempt whose response head
// came first, or the failed first attempt; every other attempt is
// finished. Instances it hedged to are added to tried.
func (x *exchange) send(a *attempt, tried *[]*lb.Instance) (*attempt, *http.Response, error) {
	h := x.route.hedge
	if h != nil && a.n == 1 {
		h.budget.request(a.start)
	}
	if h != nil && x.attempts < x.p.cfg.MaxAttempts && mayHedge(x.idempotent, x.replayable(), x.grpc, x.upgrade) {
		if d := h.tryTimeout(a.start); d > 0 {
			return x.race(a, d, tried)
		}
	}
	res, err := x.sendOne(a)
	return a, res, err
}

// sendOne runs one attempt until its response head, registered with the
// proxy's in-flight set so that it can be cancelled when its instance
// leaves the pool.
func (x *exchange) sendOne(a *attempt) (*http.Response, error) {
	x.p.inflight.add(a)
	var (
		res *http.Response
		err error
	)
	if x.fastPath(a.inst) {
		res, err = x.p.h1.roundTrip(&a.req, a.inst.HostPort, &a.h1)
	} else {
		res, err = x.transportFor(a.inst).RoundTrip(&a.req)
	}
	x.p.inflight.remove(a)
	if err != nil {
		if cause := context.Cause(a.req.Context()); x.ctx.Err() == nil && (cause == errHedgeLost || cause == errInstanceLeft) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		return nil, err
	}
	if h := x.route.hedge; h != nil {
		h.lat.observe(time.Now(), time.Since(a.start))
	}
	return res, nil
}

// hedgeRace is the state of one race (one allocation): the first attempt
// runs on the request's goroutine, hedges on their own.
type hedgeRace struct {
	x     *exchange
	a     *attempt // the first attempt
	d     time.Duration
	timer *time.Timer

	mu         sync.Mutex
	closed     bool // a has returned: no more hedges
	winner     *attempt
	winRes     *http.Response
	wg         sync.WaitGroup
	running    []*attempt // hedges started
	exclude    []*lb.Instance
	runBuf     [2]*attempt
	excludeBuf [4]*lb.Instance
}

// race sends a and, each time d passes with no response head, the request
// to one more instance while the budget and MaxAttempts allow. The first
// head wins; the others are cancelled (their connections dropped) and
// finished before race returns, so only the winner outlives it.
func (x *exchange) race(a *attempt, d time.Duration, tried *[]*lb.Instance) (*attempt, *http.Response, error) {
	r := &hedgeRace{x: x, a: a, d: d}
	r.running = r.runBuf[:0]
	// Hedges pick on a copy of tried: the caller's slice is only touched
	// again after wg.Wait.
	r.exclude = append(append(r.excludeBuf[:0], *tried...), a.inst)
	r.mu.Lock()
	r.timer = time.AfterFunc(d, r.hedge)
	r.mu.Unlock()

	res, err := x.sendOne(a)

	r.mu.Lock()
	r.closed = true
	r.timer.Stop()
	if err == nil && r.winner == nil {
		r.winner, r.winRes = a, res
		for _, o := range r.running {
			o.cancel(errHedgeLost)
		}
	}
	started := len(r.running) > 0
	r.mu.Unlock()
	if started {
		r.wg.Wait() // a hedge that answers first wins; losers end at once
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.running {
		*tried = append(*tried, o.inst)
	}
	switch {
	case r.winner == a:
		return a, res, nil
	case r.winner != nil:
		a.lose(res, err, d)
		x.inst = r.winner.inst
		return r.winner, r.winRes, nil
	}
	// Every attempt failed: report the first, the others are finished.
	return a, nil, err
}

// hedge starts one more attempt, on the timer's goroutine.
func (r *hedgeRace) hedge() {
	x := r.x
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.winner != nil || x.attempts >= x.p.cfg.MaxAttempts || x.ctx.Err() != nil {
		return
	}
	bud := &x.route.hedge.budget
	if !bud.allows(time.Now()) {
		bud.refused.Add(1)
		return
	}
	inst, err := x.route.balancer.Pick(x.r, r.exclude)
	if err != nil {
		return // nowhere else to go: keep waiting on what runs
	}
	if !bud.withdraw(time.Now(), true) {
		x.route.balancer.Done(inst, lb.Result{}) // spent meanwhile: the pick is not used
		return
	}
	x.attempts++
	r.exclude = append(r.exclude, inst)
	b := x.newAttempt(inst, x.attempts)
	if x.rec != nil {
		x.recordHedge()
	}
	r.running = append(r.running, b)
	r.wg.Add(1)
	go r.run(b)
	if x.attempts < x.p.cfg.MaxAttempts {
		r.timer.Reset(r.d)
	}
}

// run sends hedge b; the first head of the race wins, b is finished if it
// lost.
func (r *hedgeRace) run(b *attempt) {
	defer r.wg.Done()
	res, err := r.x.sendOne(b)
	r.mu.Lock()
	if err == nil && r.winner == nil {
		r.winner, r.winRes = b, res
		r.a.cancel(errHedgeLost)
		for _, o := range r.running {
			if o != b {
				o.cancel(errHedgeLost)
			}
		}
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	b.lose(res, err, r.d)
}

// lose ends an attempt that did not win a race: its response, if any, is
// dropped with its connection. The balancer hears of a failure when the
// attempt failed by itself or went unanswered for the per-try timeout d
// (which passive health then counts like any timeout), else of a try that
// merely came second.
func (a *attempt) lose(res *http.Response, err error, d time.Duration) {
	a.lost = true
	a.cancel(errHedgeLost)
	took := time.Since(a.start)
	if res != nil {
		res.Body.Close()
		a.finish(lb.Result{Status: res.StatusCode, Latency: took}, res.StatusCode, nil)
		return
	}
	result := lb.Result{Latency: took}
	switch {
	case !errors.Is(err, errHedgeLost):
		result = a.x.failedResult(a, err)
	case took >= d && a.x.ctx.Err() == nil:
		result.Err, err = errTryTimeout, errTryTimeout
	}
	a.finish(result, 0, err)
}

// errTryTimeout is what the balancer hears of an attempt that had no
// response head after the per-try timeout and lost to a hedge.
var errTryTimeout = &timeoutError{"proxy: per-try timeout: no response head, another instance answered"}

// inflight is the set of attempts waiting on their response head, by
// instance address, so that the attempts on an instance that left the pool
// can be cancelled at once.
type inflight struct {
	mu sync.RWMutex
	m  map[string]*inflightSet // host:port → set
}

type inflightSet struct {
	mu sync.Mutex
	m  map[*attempt]struct{}
}

func (f *inflight) set(addr string) *inflightSet {
	f.mu.RLock()
	s := f.m[addr]
	f.mu.RUnlock()
	if s != nil {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s = f.m[addr]; s == nil {
		if f.m == nil {
			f.m = make(map[string]*inflightSet)
		}
		s = &inflightSet{m: make(map[*attempt]struct{})}
		f.m[addr] = s
	}
	return s
}

func (f *inflight) add(a *attempt) {
	s := f.set(a.inst.HostPort)
	a.inflight = s
	s.mu.Lock()
	s.m[a] = struct{}{}
	s.mu.Unlock()
}

func (f *inflight) remove(a *attempt) {
	s := a.inflight
	s.mu.Lock()
	delete(s.m, a)
	s.mu.Unlock()
}

// cancel cancels every attempt waiting on addr and returns how many.
func (f *inflight) cancel(addr string) int {
	s := f.set(addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	for a := range s.m {
		a.cancel(errInstanceLeft)
		if a.onLeft != nil {
			a.onLeft(a)
		}
	}
	return len(s.m)
}

// InstancesLeft is told that instances left their service's pool because
// they failed (their node; not a drain, whose instances finish what they
// have): it closes their idle upstream connections and cancels
// the attempts still waiting on their response head. Idempotent requests
// among them are sent to another instance at once; the others fail with
// 502, never sent again. It returns how many attempts it cancelled.
func (p *Proxy) InstancesLeft(insts []*lb.Instance) int {
	n := 0
	for _, in := range insts {
		p.h1.closeIdleTo(in.HostPort)
		closeLoopIdle(p, in.HostPort)
		n += p.inflight.cancel(in.HostPort)
	}
	if len(insts) > 0 {
		// net/http's transports cannot close one host's idle connections:
		// close them all (they are redialled on demand).
		p.transport.CloseIdleConnections()
		p.h2c.CloseIdleConnections()
	}
	return n
}

// latencyTracker keeps a histogram of recent times to response head in two
// rotating windows of latencyWindow: quantiles cover the last one to two
// windows.
type latencyTracker struct {
	win [2]latencyWindowHist
}

const latencyWindow = 5 * time.Second

// latencyBuckets covers 1µs to hours in quarter powers of two.
const latencyBuckets = 4 * 40

type latencyWindowHist struct {
	epoch  atomic.Int64
	counts [latencyBuckets]atomic.Int64
}

func (t *latencyTracker) hist(epoch int64) *latencyWindowHist {
	h := &t.win[epoch&1]
	if old := h.epoch.Load(); old != epoch && h.epoch.CompareAndSwap(old, epoch) {
		for i := range h.counts {
			h.counts[i].Store(0)
		}
	}
	return h
}

func (t *latencyTracker) observe(now time.Time, d time.Duration) {
	t.hist(now.UnixNano() / int64(latencyWindow)).counts[latencyBucket(d)].Add(1)
}

// quantile returns the q-quantile (bucket upper bound) of the latencies of
// the current and previous windows, and how many there are.
func (t *latencyTracker) quantile(now time.Time, q float64) (time.Duration, int64) {
	epoch := now.UnixNano() / int64(latencyWindow)
	var counts [latencyBuckets]int64
	var total int64
	for i := range t.win {
		h := &t.win[i]
		if e := h.epoch.Load(); e != epoch && e != epoch-1 {
			continue
		}
		for j := range h.counts {
			c := h.counts[j].Load()
			counts[j] += c
			total += c
		}
	}
	if total == 0 {
		return 0, 0
	}
	rank := int64(q*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			return latencyBucketUpper(i), total
		}
	}
	return latencyBucketUpper(latencyBuckets - 1), total
}

// latencyBucket maps d to a bucket: four per power of two of microseconds.
func latencyBucket(d time.Duration) int {
	us := uint64(max(d/time.Microsecond, 0)) + 1
	l := bits.Len64(us) // us in [2^(l-1), 2^l)
	sub := 0
	if l >= 3 {
		sub = int(us>>(l-3)) & 3
	}
	return min(l*4+sub, latencyBuckets-1)
}

// latencyBucketUpper is the largest latency bucket i holds.
func latencyBucketUpper(i int) time.Duration {
	l, sub := i/4, i%4
	var us uint64
	if l < 3 {
		us = 1 << l
	} else {
		us = uint64(4+sub+1) << (l - 3)
	}
	return time.Duration(us-1) * time.Microsecond
}

// each calls fn for every route of the table.
func (rt *routeTable) each(fn func(*compiledRoute)) {
	for _, rs := range rt.exact {
		for _, cr := range rs {
			fn(cr)
		}
	}
	for _, w := range rt.wildcard {
		for _, cr := range w.routes {
			fn(cr)
		}
	}
	for _, cr := range rt.any {
		fn(cr)
	}
}

// closeIdleTo closes the idle connections to addr.
func (c *h1Client) closeIdleTo(addr string) {
	v, ok := c.pools.Load(addr)
	if !ok {
		return
	}
	p := v.(*h1Pool)
	p.mu.Lock()
	for _, pc := range p.idle {
		pc.conn.Close()
	}
	clear(p.idle)
	p.idle = p.idle[:0]
	p.mu.Unlock()
}
