package main

import (
	"context"
	"sync"

	"github.com/meshlb/meshlb/discovery"
	"github.com/meshlb/meshlb/lb"
)

// Tiers: every service's local instances go through a discovery.Failover,
// which splits off the backups (tag backup, per service backup_tag) and
// adds the failover datacenters' instances it watches, and hands the ranked
// tiers to the balancer (lb.UpdateTiers; a service with local primaries
// only gets an ordinary pool).

// tierState is a service's local side of the ranking, guarded by
// serviceState.mu: what the local watch last delivered.
type tierState struct {
	failover *discovery.Failover
	// local is the size of the last local set applied, lastIndex and
	// lastErrors the local watch's index and error count then: an empty
	// answer is held for the empty-pool grace only when Consul may have
	// lost its state (see mayHaveLostState).
	local      int
	applied    bool
	lastIndex  uint64
	lastErrors uint64
}

// failoverWatchers counts the long polls of the failover datacenters'
// watches, which share the Consul client.
func failoverWatchers(cfg *config) int {
	n := 0
	for _, sc := range cfg.services {
		n += len(sc.failover.Datacenters)
	}
	return n
}

// newFailovers makes each service's Failover.
func (a *agent) newFailovers() error {
	for _, s := range a.ordered {
		sc := a.cfg.service(s.name)
		fc := sc.failover
		fc.Service, fc.Tag = s.name, sc.tag
		fc.Logger = a.log.Named("failover")
		s := s
		f, err := discovery.NewFailover(a.client, fc, func(tiers []lb.Tier) { a.applyTiers(s, tiers) })
		if err != nil {
			return err
		}
		s.tiers.failover = f
	}
	return nil
}

// runFailovers starts the failover datacenters' watches.
func (a *agent) runFailovers(ctx context.Context, wg *sync.WaitGroup) {
	for _, s := range a.ordered {
		if f := s.tiers.failover; f.Active() {
			wg.Add(1)
			go func() { defer wg.Done(); _ = f.Run(ctx) }()
		}
	}
}

// setLocal hands the local instances to the ranking; s.mu is held.
func (a *agent) setLocal(s *serviceState, insts []lb.Instance) {
	s.tiers.local, s.tiers.applied = len(insts), true
	if s.watcher != nil {
		st := s.watcher.Status()
		s.tiers.lastIndex, s.tiers.lastErrors = st.Index, st.Errors
	}
	s.tiers.failover.SetLocal(insts)
}

// applyTiers publishes the ranked tiers. It runs under the Failover's lock,
// from the local update or a failover datacenter's watch.
func (a *agent) applyTiers(s *serviceState, tiers []lb.Tier) {
	s.balancer.UpdateTiers(tiers)
	n := 0
	for _, t := range tiers {
		n += len(t.Instances)
	}
	if len(tiers) > 0 && n > len(tiers[0].Instances) {
		a.log.Info("pool updated", "service", s.name, "instances", n, "tiers", len(s.balancer.Pool().Tiers()))
	} else {
		a.log.Info("pool updated", "service", s.name, "instances", n)
	}
	a.kickSave()
}

// mayHaveLostState reports whether an empty local answer may come from a
// Consul agent that lost its state (restarted empty) rather than from
// instances that failed or were deregistered: the watch failed since the
// last applied answer, its index went backwards, or nothing came from
// Consul yet (a pool restored from the snapshot). Only then is an empty
// answer held for --empty-pool-grace; instances that really failed leave
// at once, so a switch to the backups or another datacenter is not
// delayed. s.mu is held.
func (a *agent) mayHaveLostState(s *serviceState) bool {
	if s.watcher == nil || s.tiers.lastIndex == 0 {
		return true
	}
	st := s.watcher.Status()
	return st.Errors != s.tiers.lastErrors || st.Index < s.tiers.lastIndex
}
