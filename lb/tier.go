package lb

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Tiers: nginx's `backup` servers and failover across datacenters.
//
// A tiered pool holds its instances in ordered tiers — the local primaries,
// the local backups, then each failover datacenter's primaries and backups —
// and a pick takes the first tier that has an instance the request can use:
// an instance that is ejected, draining or already tried by this request
// lets the pick fall through to the next tier, as nginx hands a request to
// its backup servers only when no primary can take it. Each tier is a Pool
// of its own, with its own round robin counter, weights and hash ring, so
// `hash` keeps its mapping within the tier that serves. The "never eject
// every instance" rule looks at the tiers together: only when no tier has a
// ready instance does a pick take an ejected (or backing-off) one, from the
// first tier that has one.

// Tier is one rank of a tiered pool, as discovery hands it to UpdateTiers.
type Tier struct {
	// Datacenter is the Consul datacenter of the instances ("" when not
	// known: the local agent's).
	Datacenter string
	// Backup marks the instances that carry the service's backup tag.
	Backup bool
	// Remote marks a failover datacenter: its instances' long-lived state
	// is keyed by "ID@Datacenter", since service IDs are only unique
	// within one datacenter.
	Remote bool
	// Instances are the tier's instances; copied by UpdateTiers.
	Instances []Instance
}

// TierInfo describes one tier of a pool.
type TierInfo struct {
	Datacenter string
	Backup     bool
	Remote     bool
	// Size is the number of instances in the tier.
	Size int
}

// Name is "primary" or "backup".
func (t TierInfo) Name() string {
	if t.Backup {
		return "backup"
	}
	return "primary"
}

// String names the tier for logs: "dc2 backup", "local primary".
func (t TierInfo) String() string {
	return cmp.Or(t.Datacenter, "local") + " " + t.Name()
}

func (t TierInfo) same(o TierInfo) bool {
	return t.Datacenter == o.Datacenter && t.Backup == o.Backup && t.Remote == o.Remote
}

// Serving says which tier of a balancer serves new requests.
type Serving struct {
	// Tier is the tier that first attempts go to.
	Tier TierInfo
	// Index is the tier's position in the pool (0: the first).
	Index int
	// Since is when that tier began to serve (the first pool for the
	// first tier).
	Since time.Time
	// Reason says why the last switch happened ("" before any switch).
	Reason string
	// Switches counts the switches since the balancer started.
	Switches uint64
}

// servingState is the balancer's record of the serving tier. A first
// attempt that lands on another tier than the recorded one switches it,
// which is rare: the request path only compares a pointer.
type servingState struct {
	cur      atomic.Pointer[Serving]
	mu       sync.Mutex // serializes switches
	switches uint64
}

// Tiers returns the pool's tiers; an untiered pool is one tier, named
// after its instances.
func (p *Pool) Tiers() []TierInfo {
	if p.tierInfo != nil {
		return p.tierInfo
	}
	t := TierInfo{Size: len(p.Instances)}
	if len(p.Instances) > 0 {
		t.Datacenter, t.Backup = p.Instances[0].Datacenter, p.Instances[0].Backup
	}
	return []TierInfo{t}
}

// UpdateTiers publishes a tiered snapshot: tiers in the order they serve
// (empty tiers are dropped). Each tier's instances are prepared as Update
// prepares them (sorted by ID, weights at least 1, one per ID); the pool's
// Instances are the tiers' instances one tier after the other, each
// carrying its tier's index in Tier and its datacenter. Stats are kept per
// instance (per "ID@Datacenter" in remote tiers), so counters survive
// updates and moves between tiers of one datacenter. With a single
// non-empty tier the pool is built exactly as Update builds it.
func (b *Balancer) UpdateTiers(tiers []Tier) {
	tiers = slices.DeleteFunc(slices.Clone(tiers), func(t Tier) bool { return len(t.Instances) == 0 })
	infos := make([]TierInfo, len(tiers))
	total := 0
	for i, t := range tiers {
		infos[i] = TierInfo{Datacenter: t.Datacenter, Backup: t.Backup, Remote: t.Remote, Size: len(t.Instances)}
		total += len(t.Instances)
	}
	if len(tiers) <= 1 && (len(tiers) == 0 || !tiers[0].Remote) {
		if len(tiers) == 1 {
			b.update(tiers[0].Instances, &tiers[0])
		} else {
			b.update(nil, nil)
		}
		b.recheckServing(b.pool.Load())
		return
	}

	b.mu.Lock()
	stats := make(map[string]*Stats, total)
	all := make([]*Instance, 0, total)
	pools := make([]*Pool, len(tiers))
	b.version++
	for ti, t := range tiers {
		vals := make([]Instance, len(t.Instances))
		copy(vals, t.Instances)
		slices.SortStableFunc(vals, func(x, y Instance) int { return cmp.Compare(x.ID, y.ID) })
		vals = slices.CompactFunc(vals, func(x, y Instance) bool { return x.ID == y.ID })
		list := make([]*Instance, 0, len(vals))
		for i := range vals {
			in := &vals[i]
			key := in.ID
			if t.Remote {
				key = in.ID + "@" + t.Datacenter
			}
			if stats[key] != nil {
				continue // the same instance in two tiers: the first wins
			}
			in.Weight = max(in.Weight, 1)
			if in.Service == "" {
				in.Service = b.service
			}
			if in.HostPort == "" && in.Address != "" {
				in.HostPort = net.JoinHostPort(in.Address, strconv.Itoa(in.Port))
			}
			in.Datacenter, in.Backup, in.Tier = t.Datacenter, t.Backup, ti
			st := b.stats[key]
			if st == nil {
				st = new(Stats)
			}
			in.Stats = st
			stats[key] = st
			list = append(list, in)
		}
		infos[ti].Size = len(list)
		pools[ti] = newPool(b.service, list, b.version, b.policy, nil)
		all = append(all, list...)
	}
	b.stats = stats
	p := &Pool{
		Service:   b.service,
		Instances: all,
		Version:   b.version,
		Updated:   time.Now(),
		policy:    b.policy,
		tiers:     pools,
		tierInfo:  infos,
	}
	b.pool.Store(p)
	b.mu.Unlock()
	b.recheckServing(p)
}

// pickTiers picks from the first tier, starting at from, that has a ready
// instance; without one it returns the best instance of any tier (the
// first tier's on equal rank), which keeps "never eject them all" across
// tiers. An untiered pool is its own single tier.
func (p *Pool) pickTiers(r *http.Request, tried []*Instance, from int) *Instance {
	if p.tiers == nil {
		if from > 0 {
			return nil
		}
		return p.pick(r, tried)
	}
	var best *Instance
	bestRank := rankNone
	var c clock
	for _, t := range p.tiers[min(from, len(p.tiers)):] {
		in := t.pick(r, tried)
		if in == nil {
			continue
		}
		rk := rank(in, tried, &c)
		if rk == rankReady {
			return in
		}
		if rk < bestRank {
			best, bestRank = in, rk
		}
	}
	return best
}

// PickFrom is Pick restricted to the tiers from index tier on: the proxy
// uses it when a request has used up its tries in a tier and goes on to
// the next (backups and failover datacenters do not count against the
// tries of the tiers before them). It returns an ErrNoInstance error when
// no tier from there can serve.
func (b *Balancer) PickFrom(r *http.Request, tried []*Instance, tier int) (*Instance, error) {
	p := b.pool.Load()
	if p == nil {
		return nil, b.errNoPool
	}
	in := p.pickTiers(r, tried, tier)
	if in == nil {
		return nil, b.errNoInstance
	}
	in.Stats.InFlight.Add(1)
	in.Stats.Requests.Add(1)
	return in, nil
}

// HasTierAfter reports whether the current pool has a tier after index
// tier.
func (b *Balancer) HasTierAfter(tier int) bool {
	p := b.pool.Load()
	return p != nil && tier+1 < len(p.tiers)
}

// noteServing records the tier a first attempt landed on: the tier that
// serves. It costs a pointer load and compare unless the tier changed.
func (b *Balancer) noteServing(p *Pool, in *Instance) {
	if p.tiers == nil || in == nil {
		return
	}
	cur := b.serving.cur.Load()
	if cur != nil && cur.Index == in.Tier && cur.Tier.same(p.tierInfo[in.Tier]) {
		return
	}
	b.switchServing(p, in.Tier)
}

// recheckServing finds the serving tier of p without a request (after an
// update, or when someone asks): the first tier with a ready instance.
func (b *Balancer) recheckServing(p *Pool) {
	if p == nil {
		return
	}
	idx := p.servingIndex()
	cur := b.serving.cur.Load()
	infos := p.Tiers()
	if cur != nil && cur.Index == idx && cur.Tier.same(infos[idx]) {
		if cur.Tier.Size != infos[idx].Size {
			next := *cur
			next.Tier = infos[idx]
			b.serving.cur.CompareAndSwap(cur, &next)
		}
		return
	}
	b.switchServing(p, idx)
}

// servingIndex is the tier a first attempt would go to: the first with a
// ready instance, else the first with the best rank, else 0.
func (p *Pool) servingIndex() int {
	if p.tiers == nil {
		return 0
	}
	var c clock
	best, bestRank := 0, rankNone
	for i, t := range p.tiers {
		for _, in := range t.Instances {
			rk := rank(in, nil, &c)
			if rk == rankReady {
				return i
			}
			if rk < bestRank {
				best, bestRank = i, rk
			}
		}
	}
	return best
}

func (b *Balancer) switchServing(p *Pool, idx int) {
	b.serving.mu.Lock()
	defer b.serving.mu.Unlock()
	infos := p.Tiers()
	if idx >= len(infos) {
		return
	}
	to := infos[idx]
	cur := b.serving.cur.Load()
	if cur != nil && cur.Index == idx && cur.Tier.same(to) {
		return // a concurrent pick switched it already
	}
	next := &Serving{Tier: to, Index: idx, Since: time.Now(), Switches: b.serving.switches}
	if cur == nil {
		b.serving.cur.Store(next)
		return
	}
	if cur.Index == idx && cur.Tier.Backup == to.Backup && cur.Tier.Remote == to.Remote &&
		(cur.Tier.Datacenter == "" || to.Datacenter == "") {
		// The same tier, now (or no longer) named after its datacenter:
		// discovery learned the local datacenter's name. Not a switch.
		renamed := *cur
		renamed.Tier = to
		b.serving.cur.Store(&renamed)
		return
	}
	b.serving.switches++
	next.Switches = b.serving.switches
	next.Reason = p.switchReason(cur.Tier, idx)
	b.serving.cur.Store(next)
	b.log.Warn("serving tier changed", "service", b.service, "from", cur.Tier.String(), "to", to.String(),
		"tier", idx, "reason", next.Reason)
}

// switchReason says why tier idx serves: what keeps each tier before it
// from serving, or that the tier serves again.
func (p *Pool) switchReason(from TierInfo, idx int) string {
	infos := p.Tiers()
	var parts []string
	fromFound := false
	for i := 0; i < idx; i++ {
		parts = append(parts, infos[i].String()+": "+p.tierState(i))
		fromFound = fromFound || infos[i].same(from)
	}
	if !fromFound && idx < len(infos) {
		// Moving up (or from a tier no longer in the pool).
		why := infos[idx].String() + " can serve again (" + p.tierState(idx) + ")"
		if len(parts) > 0 {
			why += "; " + strings.Join(parts, "; ")
		}
		if !slices.ContainsFunc(infos, from.same) {
			why = from.String() + " has no instances in Consul; " + why
		}
		return why
	}
	if !slices.ContainsFunc(infos[:idx], from.same) {
		parts = append([]string{from.String() + ": no instances in Consul"}, parts...)
	}
	return strings.Join(parts, "; ")
}

// tierState counts a tier's instances by state: "2 instances: 1 ejected,
// 1 draining".
func (p *Pool) tierState(i int) string {
	t := p.tierPool(i)
	if t == nil || len(t.Instances) == 0 {
		return "no instances"
	}
	var c clock
	var ready, ejected, draining, backoff int
	for _, in := range t.Instances {
		switch {
		case in.Stats.Draining.Load():
			draining++
		default:
			switch rank(in, nil, &c) {
			case rankReady:
				ready++
			case rankEjected:
				ejected++
			case rankBackoff:
				backoff++
			}
		}
	}
	return fmt.Sprintf("%d instances: %d ready, %d ejected by passive health, %d draining, %d backing off",
		len(t.Instances), ready, ejected, draining, backoff)
}

func (p *Pool) tierPool(i int) *Pool {
	if p.tiers == nil {
		if i == 0 {
			return p
		}
		return nil
	}
	if i < len(p.tiers) {
		return p.tiers[i]
	}
	return nil
}

// Serving returns which tier serves new requests, since when and why,
// checked against the current pool (so it is right without traffic too).
// The zero Serving before the first update.
func (b *Balancer) Serving() Serving {
	p := b.pool.Load()
	if p == nil {
		return Serving{}
	}
	b.recheckServing(p)
	if cur := b.serving.cur.Load(); cur != nil {
		return *cur
	}
	return Serving{}
}
