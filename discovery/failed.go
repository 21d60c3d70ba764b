package discovery

import (
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

// DrainNote starts the output of the critical check a registrar sets when
// it drains its instance: the instance is going away on purpose and
// finishes the requests it has. It is internal/wire's.
const DrainNote = wire.DrainNote

// failedInAnswer returns the IDs of the instances that Consul reports
// failed (see checksFailed): requests in flight on them will not be
// answered. Each is listed under its ID (its name if the ID is empty) and
// as ID@node, as Instances names an ID registered on several nodes.
func failedInAnswer(a *healthAnswer) map[string]bool {
	if a == nil {
		return nil
	}
	var out map[string]bool
	for i := range a.entries {
		e := &a.entries[i]
		if !e.hasService || !e.checksSet || !checksFailed(a.entryChecks(e)) {
			continue
		}
		if out == nil {
			out = make(map[string]bool)
		}
		id := string(e.id)
		if id == "" {
			id = string(e.name)
		}
		out[id] = true
		out[id+"@"+string(e.node)] = true
	}
	return out
}

// checksFailed reports whether an instance with these checks (its own and
// its node's, as /v1/health/service lists them) failed, rather than left
// on purpose:
//   - in maintenance (node or service): not failed, whatever else is
//     critical; an operator took it out and decides what it finishes;
//   - its node failed (serfHealth critical): failed, drain or not, since a
//     node that stopped answering gossip answers nothing;
//   - a check is critical with output that does not start with DrainNote:
//     failed, unless another critical check is a drain: a draining
//     instance finishes what it has, and its other checks may fail
//     because of the drain (an app closing its listener);
//   - warning is not failed (the instance stays in the pool).
func checksFailed(checks []checkState) bool {
	nodeDown, crit, drain := false, false, false
	for i := range checks {
		c := &checks[i]
		if c.nullCheck {
			continue
		}
		id := string(c.id)
		if id == api.NodeMaint || strings.HasPrefix(id, api.ServiceMaintPrefix) {
			return false
		}
		if string(c.status) != api.HealthCritical {
			continue
		}
		switch {
		case id == "serfHealth":
			nodeDown = true
		case c.drain:
			drain = true
		default:
			crit = true
		}
	}
	return nodeDown || (crit && !drain)
}

// Failed returns the IDs of the service's instances that the last answer
// from Consul reports failed: their node (serfHealth) or one of their
// checks is critical, not because the instance drains (a check's output
// starting with DrainNote) and not in maintenance; see checksFailed. The
// map must not be modified.
func (w *Watcher) Failed() map[string]bool {
	if m := w.failedIDs.Load(); m != nil {
		return *m
	}
	return nil
}

// FailedLeft returns the instances of old, a pool this watch fed, that are
// not in now because Consul reports them failed (Failed): the requests
// waiting on them will not be answered, and those on instances that drain
// or were deregistered will. old may be nil.
func (w *Watcher) FailedLeft(old *lb.Pool, now []lb.Instance) []*lb.Instance {
	failed := w.Failed()
	if old == nil || len(failed) == 0 {
		return nil
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
	return gone
}
