package main

import (
	"github.com/meshlb/meshlb/lb"
)

// instancesLeft tells every proxy about the instances of s that left the
// pool (old → now) because Consul reports their node failed (not a drain,
// whose instances finish what they have; see discovery's Watcher.Failed):
// the proxies
// close their idle connections and send the idempotent requests waiting on
// them elsewhere at once, rather than waiting for TCP or the response
// header timeout; the others fail with 502.
func (a *agent) instancesLeft(s *serviceState, old *lb.Pool, now []lb.Instance) {
	if old == nil || s.watcher == nil {
		return
	}
	failed := s.watcher.Failed()
	if len(failed) == 0 {
		return
	}
	still := make(map[string]bool, len(now))
	for i := range now {
		still[now[i].ID] = true
	}
	var gone []*lb.Instance
	for _, in := range old.Instances {
		if !still[in.ID] && failed[in.ID] {
			gone = append(gone, in)
		}
	}
	if len(gone) == 0 {
		return
	}
	n := 0
	for _, p := range a.proxies {
		n += p.InstancesLeft(gone)
	}
	ids := make([]string, len(gone))
	for i, in := range gone {
		ids[i] = in.ID
	}
	a.log.Info("failed instances left the pool: their waiting requests cancelled", "service", s.name, "instances", ids, "cancelled", n)
}
