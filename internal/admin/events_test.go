package admin

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/lb"
)

// TestPollDiff drives pollOnce by hand through every kind of change.
func TestPollDiff(t *testing.T) {
	b := newBalancer(t, "web")
	s := New(Options{Services: []Service{{Balancer: b}}})
	stats := func(id string) *lb.Stats { return findIn(b.Pool(), id).Stats }
	now := time.Now()

	tests := []struct {
		name   string
		change func()
		want   []string
	}{
		{"no pool yet", func() {}, nil},
		{"first pool", func() { b.Update([]lb.Instance{inst("web", "a", 1), inst("web", "b", 2)}) },
			[]string{"joined a", "joined b"}},
		{"nothing changed", func() { b.Update([]lb.Instance{inst("web", "a", 1), inst("web", "b", 2)}) }, nil},
		{"one joins one leaves", func() { b.Update([]lb.Instance{inst("web", "b", 2), inst("web", "c", 3)}) },
			[]string{"joined c", "left a"}},
		{"ejected", func() { stats("b").EjectedUntil.Store(now.Add(time.Minute).UnixNano()) },
			[]string{"ejected b"}},
		{"ejection expires", func() { stats("b").EjectedUntil.Store(now.Add(-time.Second).UnixNano()) },
			[]string{"unejected b"}},
		{"drained", func() {
			if err := b.SetDraining("c", true); err != nil {
				t.Fatal(err)
			}
		}, []string{"draining c"}},
		{"undrained and ejected", func() {
			if err := b.SetDraining("c", false); err != nil {
				t.Fatal(err)
			}
			stats("c").EjectedUntil.Store(now.Add(time.Minute).UnixNano())
		}, []string{"ejected c", "undrained c"}},
		{"all gone", func() { b.Update(nil) }, []string{"left b", "left c"}},
	}
	var last uint64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.change()
			s.pollOnce(now)
			evs, seq, _ := s.eventsAfter(last)
			last = seq
			var got []string
			for _, ev := range evs {
				got = append(got, KindName(ev.GetKind())+" "+ev.GetInstance().GetId())
			}
			slices.Sort(got) // map order for departures
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("events %q, want %q", got, want)
			}
		})
	}
}

// TestEventRing checks that the ring keeps the last maxEvents events and
// that a reader behind it gets what is left, in order.
func TestEventRing(t *testing.T) {
	s := New(Options{Services: []Service{{Balancer: newBalancer(t, "web")}}})
	const n = maxEvents + 37
	for i := 0; i < n; i++ {
		s.publish([]*adminpb.PoolEvent{{Service: "web"}})
	}
	tests := []struct {
		name        string
		after       uint64
		first, last uint64
	}{
		{"from the start", 0, n - maxEvents + 1, n},
		{"inside the ring", n - 10, n - 9, n},
		{"up to date", n, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, seq, _ := s.eventsAfter(tt.after)
			if seq != n {
				t.Errorf("last seq = %d, want %d", seq, n)
			}
			if tt.first == 0 {
				if len(evs) != 0 {
					t.Errorf("got %d events, want none", len(evs))
				}
				return
			}
			if len(evs) != int(tt.last-tt.first+1) {
				t.Fatalf("got %d events, want %d", len(evs), tt.last-tt.first+1)
			}
			for i, ev := range evs {
				if ev.GetSeq() != tt.first+uint64(i) {
					t.Fatalf("event %d has seq %d, want %d", i, ev.GetSeq(), tt.first+uint64(i))
				}
			}
		})
	}
}

// TestPollDiffMatchesRebuild drives random pool changes (instances joining,
// leaving, leaving and coming back between two polls, changing, ejected
// and drained, a remote tier reusing local IDs) and checks every poll's
// events against the diff that rebuilt a map of the whole pool on each
// change (refDiff), which pollOnce's in-place diff replaced.
func TestPollDiffMatchesRebuild(t *testing.T) {
	b := newBalancer(t, "web")
	s := New(Options{Services: []Service{{Balancer: b}}})
	ref := &refDiff{}
	rng := rand.New(rand.NewPCG(1, 19))
	now := time.Now()
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	pool := func() []lb.Instance {
		var out []lb.Instance
		for i, id := range ids {
			if rng.IntN(3) > 0 {
				in := inst("web", id, 1000+i)
				if rng.IntN(4) == 0 {
					in.Tags = []string{"v" + strconv.Itoa(rng.IntN(3))}
				}
				out = append(out, in)
			}
		}
		return out
	}
	var last uint64
	for step := range 400 {
		for range rng.IntN(3) { // 0 to 2 updates between polls
			if rng.IntN(4) == 0 {
				b.UpdateTiers([]lb.Tier{{Instances: pool()}, {Datacenter: "dc2", Remote: true, Instances: pool()}})
			} else {
				b.Update(pool())
			}
		}
		if p := b.Pool(); p != nil && len(p.Instances) > 0 && rng.IntN(2) == 0 {
			in := p.Instances[rng.IntN(len(p.Instances))]
			switch rng.IntN(3) {
			case 0:
				in.Stats.EjectedUntil.Store(now.Add(time.Duration(rng.IntN(3)-1) * time.Minute).UnixNano())
			case 1:
				in.Stats.Draining.Store(!in.Stats.Draining.Load())
			}
		}
		s.pollOnce(now)
		evs, seq, _ := s.eventsAfter(last)
		last = seq
		var got []string
		for _, ev := range evs {
			in := ev.GetInstance()
			got = append(got, KindName(ev.GetKind())+" "+in.GetId()+"@"+in.GetDatacenter()+" "+strings.Join(in.GetTags(), ","))
		}
		want := ref.poll(b.Pool(), now)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: events %q, want %q", step, got, want)
		}
	}
}

// refDiff is the diff pollOnce made before it updated its state in place.
type refDiff struct {
	prev     map[string]refSeen
	prevPool *lb.Pool
}

type refSeen struct {
	inst              *lb.Instance
	ejected, draining bool
}

func (r *refDiff) poll(p *lb.Pool, now time.Time) []string {
	var evs []string
	add := func(kind adminpb.PoolEvent_Kind, in *lb.Instance) {
		evs = append(evs, KindName(kind)+" "+in.ID+"@"+in.Datacenter+" "+strings.Join(in.Tags, ","))
	}
	if p != nil && p == r.prevPool {
		for _, in := range p.Instances {
			old := r.prev[in.ID]
			ej, dr := ejected(in, now), draining(in)
			if ej != old.ejected {
				add(pick(ej, adminpb.PoolEvent_KIND_EJECTED, adminpb.PoolEvent_KIND_UNEJECTED), in)
			}
			if dr != old.draining {
				add(pick(dr, adminpb.PoolEvent_KIND_DRAINING, adminpb.PoolEvent_KIND_UNDRAINED), in)
			}
			if ej != old.ejected || dr != old.draining {
				old.ejected, old.draining = ej, dr
				r.prev[in.ID] = old
			}
		}
		return evs
	}
	r.prevPool = p
	var cur map[string]refSeen
	if p != nil {
		cur = make(map[string]refSeen, len(p.Instances))
		for _, in := range p.Instances {
			st := refSeen{inst: in, ejected: ejected(in, now), draining: draining(in)}
			cur[in.ID] = st
			old, ok := r.prev[in.ID]
			switch {
			case !ok:
				add(adminpb.PoolEvent_KIND_JOINED, in)
				continue
			case old.inst.Stats != in.Stats:
				add(adminpb.PoolEvent_KIND_LEFT, old.inst)
				add(adminpb.PoolEvent_KIND_JOINED, in)
				continue
			}
			if st.ejected != old.ejected {
				add(pick(st.ejected, adminpb.PoolEvent_KIND_EJECTED, adminpb.PoolEvent_KIND_UNEJECTED), in)
			}
			if st.draining != old.draining {
				add(pick(st.draining, adminpb.PoolEvent_KIND_DRAINING, adminpb.PoolEvent_KIND_UNDRAINED), in)
			}
		}
	}
	for id, old := range r.prev {
		if _, ok := cur[id]; !ok {
			add(adminpb.PoolEvent_KIND_LEFT, old.inst)
		}
	}
	r.prev = cur
	return evs
}
