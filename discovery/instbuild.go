package discovery

import (
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

// instanceBuilder turns answers into pools as Instances does, reusing what
// it built from the previous answer: an entry whose service ModifyIndex,
// node address and warning state did not change gets the instance built
// last time (its strings, Tags and Meta included) without decoding
// anything. Consul bumps a service's ModifyIndex whenever its registration
// changes; an index of 0 (never seen from Consul, but fakes send it) is
// never trusted. Only the goroutine feeding one watcher uses a builder.
//
// An unchanged pool of 10,000 instances then costs a map lookup per entry
// (none for an entry the decoder copied from the last answer, which
// carries its record: see healthEntry.built),
// and a changed one a few fresh instances and a merge, instead of decoding
// and sorting 10,000 instances.
type instanceBuilder struct {
	byKey map[string]*builtInst
	gen   uint32
	// lastIDs are the IDs of the previous output, in order, and
	// lastQualified whether any of them was qualified with @node (ranks
	// then follow qualified IDs, so the slow path runs). The output itself
	// is not kept: the instances live in the builtInsts, and a copy per
	// instance held here cost 170 bytes each (17 MB at 100,000).
	lastIDs       []string
	lastQualified bool
	// scratch buffers, reused.
	key   []byte
	cands []candidate
	slots []*builtInst
	order []*builtInst
}

// builtInst is one instance as last built, keyed by raw service ID and
// node.
type builtInst struct {
	inst     lb.Instance // ID not qualified
	node     string
	index    uint64
	nodeAddr string
	warning  bool
	gen      uint32
	rank     int // position in the last output, -1 if not in it
}

type candidate struct {
	b *builtInst
}

// forget stops trusting the recorded ModifyIndexes: the next answer may
// come from a Consul that restarted (or another agent), whose indexes
// start over and may equal old ones for other registrations. Every entry
// is built again once and compared by value, so nothing changes that did
// not change.
func (ib *instanceBuilder) forget() {
	for _, b := range ib.byKey {
		b.index = 0
	}
}

func newInstanceBuilder() *instanceBuilder {
	return &instanceBuilder{byKey: map[string]*builtInst{}}
}

// build returns the pool for a, sorted by ID, and whether it differs from
// the previous one (ID, service, address, port, weight, tags, meta). warn
// is called as Instances calls it. The instances' Tags and Meta are shared
// with later pools of the same builder and must not be modified.
func (ib *instanceBuilder) build(a *healthAnswer, warn func(id, reason string)) ([]lb.Instance, bool) {
	reported := map[string]bool{}
	report := func(id, reason string) {
		if warn == nil || reported[id] {
			return
		}
		reported[id] = true
		warn(id, reason)
	}
	ib.gen++
	gen := ib.gen
	cands := ib.cands[:0]
	changed := false
	claimed := 0 // records of byKey this build uses
	for i := range a.entries {
		e := &a.entries[i]
		if !e.hasService {
			continue
		}
		warning, ok := usableStates(a.entryChecks(e))
		if !ok {
			continue
		}
		rawID := e.id
		if len(rawID) == 0 {
			rawID = e.name // Consul defaults the ID to the name
		}
		if len(rawID) == 0 {
			report("", "no service ID and no service name")
			continue
		}
		// An entry copied from the last answer built carries the
		// record that build found or made in byKey for its key (the
		// same bytes, so the same key): no key to make and look up.
		b, keyed := e.built, false
		if b == nil || e.builtBy != ib || e.builtGen != gen-1 {
			ib.key = append(append(append(ib.key[:0], rawID...), 0), e.node...)
			b, keyed = ib.byKey[string(ib.key)], true
		}
		e.built, e.builtBy, e.builtGen = nil, nil, 0
		if b != nil && b.gen != gen && e.modifyIndex != 0 && b.index == e.modifyIndex &&
			b.warning == warning && (len(e.addr) > 0 || string(e.nodeAddr) == b.nodeAddr) {
			b.gen = gen
			claimed++
			e.built, e.builtBy, e.builtGen = b, ib, gen
			cands = append(cands, candidate{b: b})
			continue
		}
		inst, reason := buildInstance(e, rawID, warning)
		if reason != "" {
			report(inst.ID, reason)
			continue
		}
		if b != nil && b.gen != gen {
			// Same key, changed (or untrusted) index: compare the
			// values, since an equal instance is no change.
			if b.rank < 0 || !sameInstance(b.inst, inst) {
				changed = true
			}
			b.inst, b.index, b.warning = inst, e.modifyIndex, warning
			b.nodeAddr = string(e.nodeAddr)
			claimed++
			e.built, e.builtBy, e.builtGen = b, ib, gen
		} else {
			// New, or the same key twice in one answer (the slow
			// path below keeps the first).
			changed = true
			b = &builtInst{inst: inst, node: string(e.node), index: e.modifyIndex,
				nodeAddr: string(e.nodeAddr), warning: warning, rank: -1}
			if !keyed {
				ib.key = append(append(append(ib.key[:0], rawID...), 0), e.node...)
			}
			if ib.byKey[string(ib.key)] == nil {
				ib.byKey[string(ib.key)] = b
				claimed++
				e.built, e.builtBy, e.builtGen = b, ib, gen
			}
		}
		b.gen = gen
		cands = append(cands, candidate{b: b})
	}
	if claimed != len(ib.byKey) {
		// Some instance of the last answer is gone (or unusable now).
		for k, b := range ib.byKey {
			if b.gen != gen {
				delete(ib.byKey, k)
			}
		}
	}

	order, out, qualified, ok := ib.fastOrder(cands)
	if !ok {
		order, out, qualified = slowOrder(cands, report)
		// Values were compared entry by entry above; what is left to
		// differ is which IDs the pool holds.
		changed = changed || !sameIDs(out, ib.lastIDs)
	}
	if len(out) != len(ib.lastIDs) || qualified != ib.lastQualified {
		changed = true
	}
	for i := range cands {
		cands[i].b.rank = -1
	}
	for i, b := range order {
		b.rank = i
	}
	clear(order)
	ib.order = order[:0]
	ib.lastIDs = ib.lastIDs[:0]
	for i := range out {
		ib.lastIDs = append(ib.lastIDs, out[i].ID)
	}
	ib.lastQualified = qualified
	clear(cands)
	ib.cands = cands[:0]
	return out, changed
}

// fastOrder sorts the candidates by ID in linear time when it can: those
// that were in the last pool are placed by their rank there, the others
// (few, in an update) are sorted and merged in. It gives up (ok false)
// when an ID must be qualified with @node, now or last time, or a key came
// twice.
func (ib *instanceBuilder) fastOrder(cands []candidate) (order []*builtInst, out []lb.Instance, qualified, ok bool) {
	if ib.lastQualified {
		return nil, nil, false, false
	}
	// slots and order are scratch kept between builds: at 10,000
	// instances each was 80 kB made and cleared per update.
	slots := slices.Grow(ib.slots[:0], len(ib.lastIDs))[:len(ib.lastIDs)]
	clear(slots)
	defer func() { clear(slots); ib.slots = slots[:0] }()
	var unranked []*builtInst
	for i := range cands {
		b := cands[i].b
		if b.rank < 0 || b.rank >= len(slots) {
			unranked = append(unranked, b)
			continue
		}
		if slots[b.rank] != nil {
			return nil, nil, false, false
		}
		slots[b.rank] = b
	}
	slices.SortFunc(unranked, func(x, y *builtInst) int { return strings.Compare(x.inst.ID, y.inst.ID) })
	order = slices.Grow(ib.order[:0], len(cands))
	u := 0
	for _, b := range slots {
		if b == nil {
			continue
		}
		for u < len(unranked) && unranked[u].inst.ID < b.inst.ID {
			order = append(order, unranked[u])
			u++
		}
		order = append(order, b)
	}
	order = append(order, unranked[u:]...)
	out = make([]lb.Instance, len(order))
	for i, b := range order {
		if i > 0 && order[i-1].inst.ID == b.inst.ID {
			return nil, nil, false, false
		}
		out[i] = b.inst
	}
	return order, out, false, true
}

// slowOrder is Instances' general rule: IDs registered on several nodes
// become ID@node, the first of two equal IDs on one node is kept, and the
// pool is sorted by ID.
func slowOrder(cands []candidate, report func(id, reason string)) (order []*builtInst, out []lb.Instance, qualified bool) {
	count := make(map[string]int, len(cands))
	for _, c := range cands {
		count[c.b.inst.ID]++
	}
	seen := make(map[string]bool, len(cands))
	type pair struct {
		b    *builtInst
		inst lb.Instance
	}
	var ps []pair
	for _, c := range cands {
		in := c.b.inst
		if count[in.ID] > 1 {
			report(in.ID, "service ID registered on several nodes: using ID@node")
			in.ID += "@" + c.b.node
			qualified = true
		}
		if seen[in.ID] {
			// Same ID on the same node twice: Consul never answers that,
			// but a pool must not hold two instances with one ID.
			continue
		}
		seen[in.ID] = true
		ps = append(ps, pair{c.b, in})
	}
	slices.SortFunc(ps, func(x, y pair) int { return strings.Compare(x.inst.ID, y.inst.ID) })
	order = make([]*builtInst, len(ps))
	out = make([]lb.Instance, len(ps))
	for i, p := range ps {
		order[i], out[i] = p.b, p.inst
	}
	return order, out, qualified
}

// buildInstance makes the instance of an entry, or says why it cannot be
// dialled.
func buildInstance(e *healthEntry, rawID []byte, warning bool) (lb.Instance, string) {
	id := string(rawID)
	addr := e.addr
	if len(addr) == 0 {
		addr = e.nodeAddr
	}
	address := string(addr)
	if reason := checkEndpoint(address, e.port); reason != "" {
		return lb.Instance{ID: id}, reason
	}
	weight := e.passing
	if warning {
		weight = e.warning
	}
	if weight <= 0 {
		weight = 1
	}
	tags, err := entryTags(e)
	if err != nil {
		return lb.Instance{ID: id}, "invalid tags: " + err.Error()
	}
	meta, err := entryMeta(e)
	if err != nil {
		return lb.Instance{ID: id}, "invalid meta: " + err.Error()
	}
	if e.decoded { // consul/api's values: do not share them
		tags, meta = cloneTags(tags), cloneMeta(meta)
	} else if len(tags) == 0 {
		tags = nil // as cloneTags gives it
	}
	if len(meta) == 0 {
		meta = nil
	}
	return lb.Instance{
		ID:       id,
		Service:  string(e.name),
		Address:  address,
		Port:     e.port,
		HostPort: net.JoinHostPort(address, strconv.Itoa(e.port)),
		Weight:   weight,
		Tags:     tags,
		Meta:     meta,
	}, ""
}

// usableStates is usable over decoded check states.
func usableStates(checks []checkState) (warning, ok bool) {
	for _, c := range checks {
		if c.nullCheck {
			continue
		}
		if string(c.id) == api.NodeMaint || strings.HasPrefix(string(c.id), api.ServiceMaintPrefix) {
			return false, false
		}
		switch string(c.status) {
		case api.HealthPassing:
		case api.HealthWarning:
			warning = true
		default: // critical, maintenance, or a state this code does not know
			return false, false
		}
	}
	return warning, true
}

// sameIDs: the pool holds the given IDs, in that order.
func sameIDs(p []lb.Instance, ids []string) bool {
	if len(p) != len(ids) {
		return false
	}
	for i := range p {
		if p[i].ID != ids[i] {
			return false
		}
	}
	return true
}

// sameInstance compares what sameInstances compares, for one instance.
func sameInstance(x, y lb.Instance) bool {
	return x.ID == y.ID && x.Service == y.Service && x.Address == y.Address &&
		x.Port == y.Port && x.HostPort == y.HostPort && x.Weight == y.Weight &&
		slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
}
