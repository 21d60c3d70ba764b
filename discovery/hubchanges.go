package discovery

import (
	"hash/fnv"
	"slices"
	"sort"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// changeTracker decides, from the answers of the hub's two long polls,
// which watched services must be read again. It does no I/O and keeps no
// clock; only the hub's loop touches it.
type changeTracker struct {
	watched map[string]bool
	// checks is the digest of each watched service's checks; a service
	// without checks has none.
	checks map[string]uint64
	// nodeChecks is the digest of each node's own checks (serfHealth,
	// _node_maintenance: ServiceID "").
	nodeChecks map[string]uint64
	// tags is each watched service's catalog tag list; absent when the
	// service is not in the catalog.
	tags map[string][]string
	// nodeSvcs maps a node to the watched services that had an instance on
	// it at their last read; svcNodes is the other way round.
	nodeSvcs map[string]map[string]bool
	svcNodes map[string][]string
}

func newChangeTracker(services []string) *changeTracker {
	t := &changeTracker{
		watched:    make(map[string]bool, len(services)),
		checks:     map[string]uint64{},
		nodeChecks: map[string]uint64{},
		tags:       map[string][]string{},
		nodeSvcs:   map[string]map[string]bool{},
		svcNodes:   map[string][]string{},
	}
	for _, s := range services {
		t.watched[s] = true
	}
	return t
}

// stateAnswer takes an answer of /v1/health/state/any and returns the
// watched services to read again, sorted: those whose checks changed
// (added, removed, another status or ModifyIndex), and those with
// instances on a node whose own checks changed. nodes is true when any
// node's own checks changed: the services on a node are known only from
// their last recorded read, so a read in flight, which may show an
// instance on that node as it was before the change, must be made again.
// With baseline it only records the answer: the caller reads every service
// anyway.
func (t *changeTracker) stateAnswer(checks api.HealthChecks, baseline bool) (dirty []string, nodes bool) {
	svcRecs := map[string][]string{}
	nodeRecs := map[string][]string{}
	for _, c := range checks {
		if c == nil {
			continue
		}
		rec := c.Node + "\x00" + c.CheckID + "\x00" + c.ServiceID + "\x00" + c.Status + "\x00" + strconv.FormatUint(c.ModifyIndex, 10)
		switch {
		case c.ServiceID == "" && c.ServiceName == "":
			nodeRecs[c.Node] = append(nodeRecs[c.Node], rec)
		case t.watched[c.ServiceName]:
			svcRecs[c.ServiceName] = append(svcRecs[c.ServiceName], rec)
		}
	}
	svcDig, nodeDig := digests(svcRecs), digests(nodeRecs)
	set := map[string]bool{}
	if !baseline {
		for s := range changedKeys(t.checks, svcDig) {
			set[s] = true
		}
		for n := range changedKeys(t.nodeChecks, nodeDig) {
			nodes = true
			for s := range t.nodeSvcs[n] {
				set[s] = true
			}
		}
	}
	t.checks, t.nodeChecks = svcDig, nodeDig
	return sortedKeys(set), nodes
}

// catalogAnswer takes an answer of /v1/catalog/services whose index moved
// and returns the watched services that appeared, disappeared or changed
// tags, sorted, to read at once. full is true whenever the index moved,
// even with dirty services: the answer has names and tags only, so an
// instance added, removed or changed (a port, an address) shows in no
// service's entry, and the same index (one transaction, or several writes
// between two answers) may hold such changes of other services beside
// those it names. The caller must read every service (a full pass). With
// baseline it only records the answer.
func (t *changeTracker) catalogAnswer(services map[string][]string, baseline bool) (dirty []string, full bool) {
	tags := make(map[string][]string, len(t.watched))
	for s := range t.watched {
		if tl, ok := services[s]; ok {
			tl = slices.Clone(tl)
			slices.Sort(tl)
			if tl == nil {
				tl = []string{}
			}
			tags[s] = tl
		}
	}
	if !baseline {
		for s := range t.watched {
			old, had := t.tags[s]
			cur, has := tags[s]
			if had != has || !slices.Equal(old, cur) {
				dirty = append(dirty, s)
			}
		}
		sort.Strings(dirty)
	}
	t.tags = tags
	return dirty, !baseline
}

// read records the nodes of a service's instances from its last read
// (answerNodes), so that a node check change reaches the services on that
// node.
func (t *changeTracker) read(service string, readNodes []string) {
	for _, n := range t.svcNodes[service] {
		delete(t.nodeSvcs[n], service)
		if len(t.nodeSvcs[n]) == 0 {
			delete(t.nodeSvcs, n)
		}
	}
	var nodes []string
	for _, n := range readNodes {
		if n == "" {
			continue
		}
		if t.nodeSvcs[n] == nil {
			t.nodeSvcs[n] = map[string]bool{}
		}
		if !t.nodeSvcs[n][service] {
			t.nodeSvcs[n][service] = true
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		delete(t.svcNodes, service)
		return
	}
	t.svcNodes[service] = nodes
}

// answerNodes returns the distinct node names of an answer's entries, in
// order; nil for a nil answer.
func answerNodes(a *healthAnswer) []string {
	if a == nil {
		return nil
	}
	var nodes []string
	var last []byte
	for i := range a.entries {
		e := &a.entries[i]
		if !e.hasNode || len(e.node) == 0 || string(e.node) == string(last) {
			continue
		}
		last = e.node
		nodes = append(nodes, string(e.node))
	}
	return nodes
}

// digests hashes each key's records, in sorted order.
func digests(recs map[string][]string) map[string]uint64 {
	out := make(map[string]uint64, len(recs))
	for k, rs := range recs {
		slices.Sort(rs)
		h := fnv.New64a()
		for _, r := range rs {
			h.Write([]byte(r))
			h.Write([]byte{0xff})
		}
		out[k] = h.Sum64()
	}
	return out
}

// changedKeys returns the keys added, removed or changed between a and b.
func changedKeys(a, b map[string]uint64) map[string]bool {
	out := map[string]bool{}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			out[k] = true
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out[k] = true
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
