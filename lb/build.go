package lb

import (
	"maps"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Building a snapshot from the last one. A pool update at 10,000 instances
// usually changes a handful: the unchanged instances keep their *Instance
// (so Instances of both snapshots share them), the round robin schedule is
// reused when no weight moved, and a hash ring keeps the points of the
// instances whose point count did not change, so an update costs a merge
// instead of hashing and sorting 2^18 points.

// mergeInstances appends to list (and returns it), for each instance of
// insts (sorted by ID; of equal IDs the first counts), the previous
// snapshot's instance when it equals the normalized value (same ID,
// service, address, port, host:port, weight, tags and meta), else a fresh
// copy with the Stats of that ID. The fresh copies share one array made for
// them alone: an update that changes 20 instances of 10,000 copies 20, and
// a snapshot does not keep a whole update's array alive for the few
// instances that changed in it. It keeps b.stats in step: IDs gone from the pool lose
// their Stats. Callers hold b.mu.
func (b *Balancer) mergeInstances(insts []Instance, t *Tier, list []*Instance) []*Instance {
	var prev []*Instance
	if p := b.pool.Load(); p != nil && p.tiers == nil {
		// A tiered snapshot's instances are in tier order and keyed
		// ID@datacenter in remote tiers: nothing to walk by ID.
		prev = p.Instances
	}
	out := list
	var freshAt []int32 // positions in insts of the fresh instances
	j := 0
	for i := range insts {
		if i > 0 && insts[i].ID == insts[i-1].ID {
			continue
		}
		v := b.normalized(&insts[i], t)
		for j < len(prev) && prev[j].ID < v.ID {
			delete(b.stats, prev[j].ID)
			j++
		}
		if j < len(prev) && prev[j].ID == v.ID {
			old := prev[j]
			j++
			if sameValue(old, &v) {
				out = append(out, old)
				continue
			}
		}
		freshAt = append(freshAt, int32(i))
		out = append(out, nil)
	}
	for ; j < len(prev); j++ {
		delete(b.stats, prev[j].ID)
	}
	vals := make([]Instance, len(freshAt))
	k := 0
	for n := range out {
		if out[n] != nil {
			continue
		}
		in := &vals[k]
		*in = b.normalized(&insts[freshAt[k]], t)
		k++
		st := b.stats[in.ID]
		if st == nil {
			st = new(Stats)
			b.stats[in.ID] = st
		}
		in.Stats = st
		out[n] = in
	}
	// b.stats may still hold IDs that were in no snapshot (or a tiered
	// snapshot's keys); keep it exactly the pool's IDs.
	if len(b.stats) != len(out) {
		clear(b.stats)
		for _, in := range out {
			b.stats[in.ID] = in.Stats
		}
	}
	return out
}

// normalized is in as a snapshot holds it: weight at least 1, the
// balancer's service when none, host:port made, no Stats yet, and t's
// datacenter, backup mark and tier 0 when t is not nil.
func (b *Balancer) normalized(in *Instance, t *Tier) Instance {
	v := *in
	v.Weight = max(v.Weight, 1)
	if v.Service == "" {
		v.Service = b.service
	}
	if v.HostPort == "" && v.Address != "" {
		v.HostPort = net.JoinHostPort(v.Address, strconv.Itoa(v.Port))
	}
	v.Stats = nil
	if t != nil {
		v.Datacenter, v.Backup, v.Tier = t.Datacenter, t.Backup, 0
	}
	return v
}

// sameValue compares everything but Stats.
func sameValue(x, y *Instance) bool {
	return x.ID == y.ID && x.Service == y.Service && x.Address == y.Address &&
		x.Port == y.Port && x.HostPort == y.HostPort && x.Weight == y.Weight &&
		x.Datacenter == y.Datacenter && x.Backup == y.Backup && x.Tier == y.Tier &&
		slices.Equal(x.Tags, y.Tags) && sameMeta(x.Meta, y.Meta)
}

// sameMeta is maps.Equal with a shortcut for the same map, which discovery
// hands over for unchanged instances.
func sameMeta(x, y map[string]string) bool {
	if len(x) != len(y) {
		return false
	}
	if len(x) == 0 || reflect.ValueOf(x).UnsafePointer() == reflect.ValueOf(y).UnsafePointer() {
		return true
	}
	return maps.Equal(x, y)
}

// scheduleFrom returns prev's schedule when the weights, in order, are the
// same as before, else builds it.
func scheduleFrom(prev *Pool, insts []*Instance) []int32 {
	if prev != nil && len(prev.Instances) == len(insts) && len(insts) > 0 {
		same := true
		for i, in := range insts {
			if max(prev.Instances[i].Weight, 1) != max(in.Weight, 1) {
				same = false
				break
			}
		}
		if same {
			return prev.sched
		}
	}
	return buildSchedule(insts)
}

// ringFrom returns the ring buildRing(insts) returns, reusing prev's
// points for the instances (by ID) whose point count did not change: their
// points are the same positions with a new owner index.
func ringFrom(prev *Pool, insts []*Instance) *ring {
	if prev == nil || prev.ring == nil || len(prev.Instances) == 0 || len(insts) == 0 {
		return buildRing(insts)
	}
	oldPts, newPts := ringPointsFunc(prev.Instances), ringPointsFunc(insts)
	// remap[old index] = new index, or -1 when its points must be made
	// again (gone, or another count); fresh lists the new indexes that need
	// points.
	remap := make([]int32, len(prev.Instances))
	var fresh []int
	j := 0
	for i, in := range insts {
		for j < len(prev.Instances) && prev.Instances[j].ID < in.ID {
			remap[j] = -1
			j++
		}
		if j < len(prev.Instances) && prev.Instances[j].ID == in.ID {
			if oldPts(prev.Instances[j].Weight) == newPts(in.Weight) {
				remap[j] = int32(i)
				j++
				continue
			}
			remap[j] = -1
			j++
		}
		fresh = append(fresh, i)
	}
	for ; j < len(prev.Instances); j++ {
		remap[j] = -1
	}
	if len(fresh) > len(insts)/2 {
		return buildRing(insts) // mostly new: a plain build is as quick
	}
	kept := make([]uint64, 0, len(prev.ring.points))
	for _, p := range prev.ring.points {
		if o := remap[p&ringOwnerMask]; o >= 0 {
			kept = append(kept, p&^ringOwnerMask|uint64(o))
		}
	}
	if !slices.IsSorted(kept) {
		// Two owners at one position swapped order: vanishingly rare.
		return buildRing(insts)
	}
	var added []uint64
	for _, i := range fresh {
		added = appendPoints(added, insts[i], i, newPts(insts[i].Weight))
	}
	slices.Sort(added)
	pts := make([]uint64, 0, len(kept)+len(added))
	k, a := 0, 0
	for k < len(kept) && a < len(added) {
		if kept[k] <= added[a] {
			pts = append(pts, kept[k])
			k++
		} else {
			pts = append(pts, added[a])
			a++
		}
	}
	pts = append(append(pts, kept[k:]...), added[a:]...)
	return &ring{points: pts}
}

// sortedByID reports whether vals are sorted by ID, so Update can skip
// sorting what discovery already sorted.
func sortedByID(vals []Instance) bool {
	return slices.IsSortedFunc(vals, func(x, y Instance) int { return strings.Compare(x.ID, y.ID) })
}
