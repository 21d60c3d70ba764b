package lb

import "net/http"

// PolicyRoundRobin is smooth weighted round robin, nginx's default; the
// empty spec means it too.
const PolicyRoundRobin = "round_robin"

var roundRobin = policyDef{
	name: PolicyRoundRobin,
	pick: func(p *Pool, _ *http.Request, tried []*Instance) *Instance {
		var c clock
		return p.pickRR(tried, &c)
	},
}

// maxSchedule bounds the length of a smooth weighted round robin schedule
// (4 bytes an entry). Weights whose gcd-reduced sum exceeds it are scaled
// down proportionally (each keeping at least 1), which approximates extreme
// weight ratios but keeps a snapshot small and quick to build.
const maxSchedule = 1 << 16

// rrAttempts bounds how many schedule slots a pick draws before falling back
// to a full scan when the drawn instances are not ready.
const rrAttempts = 16

// pickRR is round robin: an atomic counter indexes the precomputed smooth
// schedule (grpc-go style), so a pick is lock-free. A slot whose instance
// is not ready is skipped by drawing the next counter value rather than
// walking to the neighbouring slot: that removes the slot from the cycle, so
// its share spreads over all the others instead of doubling one neighbour's.
func (p *Pool) pickRR(tried []*Instance, c *clock) *Instance {
	insts := p.Instances
	n := uint64(len(insts))
	if p.sched != nil {
		n = uint64(len(p.sched))
	}
	for range min(len(insts), rrAttempts) {
		slot := p.next.Add(1) % n
		idx := int(slot)
		if p.sched != nil {
			idx = int(p.sched[slot])
		}
		if in := insts[idx]; rank(in, tried, c) == rankReady {
			return in
		}
	}
	return p.scan(tried, c, costNone)
}

// buildSchedule returns nginx's smooth weighted round robin sequence over
// one period for the instances' weights, or nil when all weights are equal
// (plain round robin needs no schedule). Weights are reduced by their gcd,
// which does not change the sequence.
//
// nginx picks, at step s, the instance with the highest current weight
// s*w - T*k (T the weight sum, k its picks so far; the first one on ties).
// Instances of equal weight are picked in index order, so they form a group
// with a cursor and a step costs O(distinct weights), not O(instances).
func buildSchedule(insts []*Instance) []int32 {
	if len(insts) == 0 {
		return nil
	}
	w := make([]int64, len(insts))
	equal := true
	for i, in := range insts {
		w[i] = int64(max(in.Weight, 1))
		equal = equal && w[i] == w[0]
	}
	if equal {
		return nil
	}
	total := reduceWeights(w)
	if total > maxSchedule {
		for i := range w {
			w[i] = max(1, int64(float64(w[i])*maxSchedule/float64(total)))
		}
		total = reduceWeights(w)
	}

	type group struct {
		w       int64
		members []int32 // ascending instance indexes
		next    int     // next member to pick
		round   int64   // picks of members[next:]; members[:next] have one more
	}
	var groups []group
	byWeight := map[int64]int{}
	for i, wi := range w {
		g, ok := byWeight[wi]
		if !ok {
			g = len(groups)
			byWeight[wi] = g
			groups = append(groups, group{w: wi})
		}
		groups[g].members = append(groups[g].members, int32(i))
	}

	sched := make([]int32, 0, total)
	for s := int64(1); s <= total; s++ {
		best, bestVal, bestIdx := -1, int64(0), int32(0)
		for gi := range groups {
			g := &groups[gi]
			val, idx := s*g.w-total*g.round, g.members[g.next]
			if best < 0 || val > bestVal || (val == bestVal && idx < bestIdx) {
				best, bestVal, bestIdx = gi, val, idx
			}
		}
		g := &groups[best]
		sched = append(sched, bestIdx)
		if g.next++; g.next == len(g.members) {
			g.next, g.round = 0, g.round+1
		}
	}
	return sched
}

// reduceWeights divides w by its gcd in place and returns the new sum.
func reduceWeights(w []int64) int64 {
	g := int64(0)
	for _, x := range w {
		g = gcd(g, x)
	}
	var total int64
	for i := range w {
		w[i] /= g
		total += w[i]
	}
	return total
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
