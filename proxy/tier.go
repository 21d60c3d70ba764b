package proxy

import "github.com/meshlb/meshlb/lb"

// Tiers (lb.UpdateTiers): MaxAttempts bounds the tries of a request within
// one tier of the pool. When a request has used them up in a tier — the
// local primaries, say, all dead — it goes on to the next tier (the
// backups, then the failover datacenters) within the same request, as
// nginx's backup servers take what the primaries could not: backups do not
// count against max_attempts. In an untiered pool every instance is in
// tier 0 and this is the plain MaxAttempts bound.

// pick picks the instance of the next attempt, skipping the tiers whose
// tries this request has used up.
func (x *exchange) pick(bal *lb.Balancer, tried []*lb.Instance) (*lb.Instance, error) {
	if from := x.exhaustedTiers(tried); from > 0 {
		return bal.PickFrom(x.r, tried, from)
	}
	return bal.Pick(x.r, tried)
}

// exhaustedTiers returns one past the last tier in which tried holds
// MaxAttempts tries (0 when none).
func (x *exchange) exhaustedTiers(tried []*lb.Instance) int {
	from := 0
	for i, t := range tried {
		if t.Tier+1 <= from {
			continue
		}
		n := 1
		for _, u := range tried[i+1:] {
			if u.Tier == t.Tier {
				n++
			}
		}
		if n >= x.p.cfg.MaxAttempts {
			from = t.Tier + 1
		}
	}
	return from
}

// triesLeft reports whether the request may try again after its attempt
// on inst (not yet in tried): in inst's tier, or in a tier after it.
func (x *exchange) triesLeft(inst *lb.Instance, tried []*lb.Instance) bool {
	n := 1
	for _, t := range tried {
		if t.Tier == inst.Tier {
			n++
		}
	}
	return n < x.p.cfg.MaxAttempts || x.route.balancer.HasTierAfter(inst.Tier)
}
