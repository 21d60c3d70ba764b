package discovery

import (
	"strings"

	"github.com/hashicorp/consul/api"
)

// DrainNote starts the output of the critical check a registrar sets when
// it drains its instance: the instance is going away on purpose and
// finishes the requests it has.
const DrainNote = "draining"

// failedInAnswer returns the IDs of the instances whose node failed
// (serfHealth critical, not in maintenance): requests in flight on them will
// not be answered. A failed service check does not count: the decoded
// answer carries no check output, so it cannot be told from a drain
// (DrainNote), whose instance still answers what it has.
func failedInAnswer(a *healthAnswer) map[string]bool {
	if a == nil {
		return nil
	}
	var out map[string]bool
	for i := range a.entries {
		e := &a.entries[i]
		if !e.hasService || !e.checksSet {
			continue
		}
		nodeDown, maint := false, false
		for _, c := range a.entryChecks(e) {
			id := string(c.id)
			switch {
			case id == api.NodeMaint || strings.HasPrefix(id, api.ServiceMaintPrefix):
				maint = true
			case id == "serfHealth" && string(c.status) == api.HealthCritical:
				nodeDown = true
			}
		}
		if !nodeDown || maint {
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
		out[id+"@"+string(e.node)] = true // as Instances names an ID registered on several nodes
	}
	return out
}

// Failed returns the IDs of the service's instances that the last answer
// from Consul listed on a failed node (see failedInAnswer: the watch's lean
// decoder keeps no check output, so a failed service check cannot be told
// from a drain and does not count). The map must not be modified.
func (w *Watcher) Failed() map[string]bool {
	if m := w.failedIDs.Load(); m != nil {
		return *m
	}
	return nil
}
