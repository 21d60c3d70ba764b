package lb

import (
	"math"
	"math/rand/v2"
	"net/http"
)

// Power of two random choices, nginx's "random two least_conn" and, with a
// latency EWMA for cost, Finagle's and Linkerd's p2c_ewma.
const (
	PolicyRandomTwo = "random_two"
	PolicyP2CEWMA   = "p2c_ewma"
)

var (
	randomTwo = policyDef{
		name: PolicyRandomTwo,
		pick: func(p *Pool, _ *http.Request, tried []*Instance) *Instance {
			var c clock
			return p.pickTwo(tried, &c, costLoad)
		},
	}
	p2cEWMA = policyDef{
		name: PolicyP2CEWMA,
		pick: func(p *Pool, _ *http.Request, tried []*Instance) *Instance {
			var c clock
			return p.pickTwo(tried, &c, costEWMA)
		},
	}
)

// unknownLatencyCost is the cost of a busy instance that has no latency
// sample yet (Finagle's Peak EWMA does the same): idle, it costs nothing and
// gets probed; busy, it is avoided until its first answer tells us its
// latency. It grows with the in-flight count so that busy newcomers still
// compare among themselves.
const unknownLatencyCost = 1e12

// pickTwo is the power of two random choices: two distinct instances drawn
// at random, the cheaper one wins (random_two: in-flight per weight;
// p2c_ewma: latency EWMA times in-flight + 1). If neither is ready it falls
// back to a full scan with the same cost.
func (p *Pool) pickTwo(tried []*Instance, c *clock, kind costKind) *Instance {
	insts := p.Instances
	n := len(insts)
	if n < 2 {
		return p.scan(tried, c, kind)
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b := insts[i], insts[j]
	ra, rb := rank(a, tried, c), rank(b, tried, c)
	switch {
	case ra == rankReady && rb == rankReady:
		if cost(b, kind, c) < cost(a, kind, c) {
			return b
		}
		return a
	case ra == rankReady:
		return a
	case rb == rankReady:
		return b
	}
	return p.scan(tried, c, kind)
}

// ewmaCost is p2c_ewma's cost of sending one more request to in.
func ewmaCost(in *Instance, now int64) float64 {
	st := in.Stats
	inflight := float64(max(st.InFlight.Load(), 0))
	lat := decayedLatency(st, now)
	if lat == 0 {
		return unknownLatencyCost * inflight
	}
	return lat * (inflight + 1) / float64(in.Weight)
}

// decayedLatency is the latency EWMA in nanoseconds, decayed towards zero
// for the time since its last update (0: no sample yet).
func decayedLatency(st *Stats, now int64) float64 {
	v := math.Float64frombits(st.EWMABits.Load())
	if v == 0 {
		return 0
	}
	dt := now - st.EWMAStamp.Load()
	if dt <= 0 {
		return v
	}
	// Under load the estimate is a few milliseconds old: a second-order
	// Taylor step (relative error below 5e-6) then saves math.Exp, which
	// cost about 30 ns a call in the p2c_ewma pick profile.
	x := float64(dt) / float64(ewmaDecay)
	if x < 1.0/32 {
		return v * (1 - x + x*x/2)
	}
	return v * math.Exp(-x)
}
