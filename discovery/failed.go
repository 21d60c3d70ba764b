package discovery

import (
	"strings"

	"github.com/hashicorp/consul/api"
)

// DrainNote starts the output of the critical check a registrar sets when
// it drains its instance: the instance is going away on purpose and
// finishes the requests it has.
const DrainNote = "draining"

// FailedIDs returns the IDs of the entries that cannot get traffic because
// something failed: a check of the service or of its node (serfHealth: the
// node stopped answering gossip) is critical, and none of the critical
// checks is a drain (output starting with DrainNote) or maintenance.
// Requests in flight on such an instance will not be answered; a drained
// one still answers them. IDs are qualified as Instances qualifies them
// only for the plain case; an ID registered on several nodes is reported
// as ID@node.
func FailedIDs(entries []*api.ServiceEntry) map[string]bool {
	var out map[string]bool
	count := make(map[string]int, len(entries))
	for _, e := range entries {
		if e != nil && e.Service != nil {
			count[e.Service.ID]++
		}
	}
	for _, e := range entries {
		if e == nil || e.Service == nil || !failed(e.Checks) {
			continue
		}
		id := e.Service.ID
		if id == "" {
			id = e.Service.Service
		}
		if count[e.Service.ID] > 1 && e.Node != nil {
			id += "@" + e.Node.Node
		}
		if out == nil {
			out = make(map[string]bool)
		}
		out[id] = true
	}
	return out
}

func failed(checks api.HealthChecks) bool {
	crit := false
	for _, c := range checks {
		if c == nil {
			continue
		}
		if c.CheckID == api.NodeMaint || strings.HasPrefix(c.CheckID, api.ServiceMaintPrefix) {
			return false
		}
		if c.Status == api.HealthCritical {
			if strings.HasPrefix(c.Output, DrainNote) || strings.HasPrefix(c.Notes, DrainNote) {
				return false
			}
			crit = true
		}
	}
	return crit
}

// failedInAnswer is FailedIDs for a decoded answer, which carries no check
// output: only a failed node (serfHealth critical, not in maintenance)
// counts, since a drain cannot be told from a failed service check there.
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
