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

// pick asks the snapshot's policy (policy.go's registry) for an instance.
func (p *Pool) pick(r *http.Request, tried []*Instance) *Instance {
	if len(p.Instances) == 0 {
		return nil
	}
	return p.policy.def.pick(p, r, tried)
}
