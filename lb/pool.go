package lb

import (
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"
)

// Pool is an immutable snapshot of a service's instances together with the
// picker state built for them. It is replaced whole, never modified: readers
// may keep using an old Pool while a new one is published.
type Pool struct {
	// Service is the service name.
	Service string
	// Instances are sorted by ID (tier by tier in a tiered pool, see
	// UpdateTiers); their Stats are shared with other snapshots of the same
	// balancer.
	Instances []*Instance
	// Version increases by one with every Update of the balancer.
	Version uint64
	// Updated is when the snapshot was built.
	Updated time.Time

	policy policy
	// next is the round robin counter, started at a random offset so that
	// several balancers (or agents) do not all start on the same instance.
	next atomic.Uint64
	// sched is the smooth weighted round robin schedule (indexes into
	// Instances); nil when all weights are equal and the counter indexes
	// Instances directly.
	sched []int32
	// ring is the consistent hash ring of hash policies, else nil.
	ring *ring
	// tiers are the pools of a tiered snapshot in serving order, nil when
	// untiered; tierInfo describes them (see tier.go).
	tiers    []*Pool
	tierInfo []TierInfo
}

// newPool builds a snapshot; prev, when not nil, is the snapshot it
// replaces, whose schedule and ring are reused where the instances allow
// (build.go).
func newPool(service string, insts []*Instance, version uint64, pol policy, prev *Pool) *Pool {
	p := &Pool{
		Service:   service,
		Instances: insts,
		Version:   version,
		Updated:   time.Now(),
		policy:    pol,
		sched:     scheduleFrom(prev, insts),
	}
	p.next.Store(rand.Uint64())
	if pol.hashed() {
		p.ring = ringFrom(prev, insts)
	}
	return p
}

// pick dispatches on the policy with a switch rather than an interface, so
// that r, tried and the stack clock never escape: a pick does not allocate.
func (p *Pool) pick(r *http.Request, tried []*Instance) *Instance {
	if len(p.Instances) == 0 {
		return nil
	}
	var c clock
	switch p.policy.kind {
	case kindLeastConn:
		return p.scan(tried, &c, costLoad)
	case kindRandomTwo:
		return p.pickTwo(tried, &c, costLoad)
	case kindP2CEWMA:
		return p.pickTwo(tried, &c, costEWMA)
	case kindHashHeader, kindHashCookie, kindHashIP:
		if key, ok := p.policy.hashKey(r); ok {
			return p.pickHash(key, tried, &c)
		}
	}
	return p.pickRR(tried, &c)
}

// Ranks order the candidates of a pick: a policy returns the first
// rankReady instance it finds and otherwise the best rank below rankNone.
const (
	rankReady   = iota // not tried, not draining, not ejected, not backing off
	rankBackoff        // asked us to back off (Retry-After): a soft preference
	rankEjected        // ejected: picked only when all others are (never eject all)
	rankNone           // tried or draining: never picked
)

func rank(in *Instance, tried []*Instance, c *clock) int {
	st := in.Stats
	if st.Draining.Load() || isTried(in, tried) {
		return rankNone
	}
	if u := st.EjectedUntil.Load(); u != 0 && u > c.now() {
		return rankEjected
	}
	if u := st.BackoffUntil.Load(); u != 0 && u > c.now() {
		return rankBackoff
	}
	return rankReady
}

// isTried compares Stats too: tried may hold instances of an older snapshot.
func isTried(in *Instance, tried []*Instance) bool {
	for _, t := range tried {
		if t == in || (t != nil && t.Stats == in.Stats) {
			return true
		}
	}
	return false
}

// clock reads the time at most once per pick, and only when an instance
// carries a deadline or the policy needs it: round robin's common path reads
// no clock at all.
type clock struct{ ns int64 }

func (c *clock) now() int64 {
	if c.ns == 0 {
		c.ns = nanotime()
	}
	return c.ns
}

// Deadlines are unix nanoseconds, read as the wall time at start plus the
// monotonic time since: time.Now reads two clocks, time.Since one, 55 vs
// 30 ns a call on the 2-core kvm-clock VM this was measured on, which is a
// sixth of a p2c_ewma pick. Periods also stay right across wall clock steps.
var (
	epoch     = time.Now()
	epochUnix = epoch.UnixNano()
)

func nanotime() int64 { return epochUnix + int64(time.Since(epoch)) }
