package lb

import (
	"math/bits"
	"math/rand/v2"
	"time"
)

// What every policy judges instances by: their rank (ready, backing off,
// ejected, not a candidate), their cost, and the scan every policy falls
// back to when its quick choice is not ready (least_conn is the scan alone).

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

type costKind uint8

const (
	costNone costKind = iota // any ready instance will do
	costLoad                 // in-flight requests per unit of weight
	costEWMA                 // latency EWMA times (in-flight + 1), per unit of weight
)

func cost(in *Instance, kind costKind, c *clock) float64 {
	switch kind {
	case costLoad:
		return float64(max(in.Stats.InFlight.Load(), 0)) / float64(in.Weight)
	case costEWMA:
		return ewmaCost(in, c.now())
	}
	return 0
}

// scan visits every instance and returns one with the best rank and the
// lowest cost within it. Equally good instances win with equal probability
// (reservoir sampling), as nginx breaks least_conn ties by round robin, so
// that equal instances share the load whatever the pattern of in-flight
// counts. With costNone (any ready instance will do) it stops at the first
// ready instance after a random offset. It is least_conn, and the fallback
// of the other policies when their quick choice is not ready.
func (p *Pool) scan(tried []*Instance, c *clock, kind costKind) *Instance {
	insts := p.Instances
	n := len(insts)
	i := rand.IntN(n)
	var best *Instance
	bestRank, bestCost, ties := rankNone, 0.0, 0
	var rng wyrand
	for range n {
		in := insts[i]
		if i++; i == n {
			i = 0
		}
		var r int
		var k float64
		if bestRank == rankReady {
			// Only an equally cheap or cheaper ready instance matters:
			// look at the cost first, it is the cheaper test.
			if k = cost(in, kind, c); k > bestCost {
				continue
			}
			if r = rank(in, tried, c); r != rankReady {
				continue
			}
		} else {
			if r = rank(in, tried, c); r == rankNone || r > bestRank {
				continue
			}
			k = cost(in, kind, c)
		}
		switch {
		case r < bestRank || k < bestCost:
			best, bestRank, bestCost, ties = in, r, k, 1
		case k == bestCost:
			if ties++; rng.intn(ties) == 0 {
				best = in
			}
		default:
			continue
		}
		if kind == costNone && bestRank == rankReady {
			break
		}
	}
	return best
}

// wyrand is a stack-local generator for the scan's tie breaks: under load a
// quarter of a pool can tie, and rand.IntN for each was 40% of a
// least_conn scan of 10000 instances (55 vs 35 µs).
type wyrand uint64

// intn returns a number in [0, n); the bias of a multiply-shift without
// rejection is below n/2^64, irrelevant here.
func (r *wyrand) intn(n int) int {
	if *r == 0 {
		*r = wyrand(rand.Uint64() | 1)
	}
	*r += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(uint64(*r), uint64(*r)^0xe7037ed1a0b428db)
	hi, _ = bits.Mul64(hi^lo, uint64(n))
	return int(hi)
}
