package lb

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestUpdateReusesUnchanged: an update keeps the *Instance of every
// unchanged instance and the Stats of every ID, and drops the Stats of the
// IDs that left.
func TestUpdateReusesUnchanged(t *testing.T) {
	b := newBalancer(t, "", instances(5))
	p0 := b.Pool()
	p0.Instances[1].Stats.Failures.Add(3)
	next := instances(6)
	next[1].Meta = map[string]string{"v": "2"}
	next = slices.Delete(next, 3, 4) // web-00003 leaves, web-00005 joins
	b.Update(next)
	p1 := b.Pool()
	for _, in := range p1.Instances {
		old := byIDIn(p0, in.ID)
		switch {
		case in.ID == "web-00001":
			if in == old || in.Stats != old.Stats || in.Stats.Failures.Load() != 3 {
				t.Errorf("%s changed: want a new *Instance with the same Stats", in.ID)
			}
		case in.ID == "web-00005":
			if old != nil || in.Stats == nil {
				t.Errorf("%s joined: want new Stats", in.ID)
			}
		default:
			if in != old {
				t.Errorf("%s unchanged: want the same *Instance", in.ID)
			}
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.stats) != len(p1.Instances) || b.stats["web-00003"] != nil {
		t.Errorf("stats hold %d IDs (web-00003: %v), want the pool's %d", len(b.stats), b.stats["web-00003"] != nil, len(p1.Instances))
	}
}

func byIDIn(p *Pool, id string) *Instance {
	for _, in := range p.Instances {
		if in.ID == id {
			return in
		}
	}
	return nil
}

// TestIncrementalStructuresMatchFresh: after random joins, leaves and
// weight changes, the reused ring and schedule are exactly what a fresh
// build gives.
func TestIncrementalStructuresMatchFresh(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{1, 7, 300, 3000} {
		for _, pol := range []string{"round_robin", "hash:ip"} {
			t.Run(fmt.Sprintf("%s/%d", pol, size), func(t *testing.T) {
				cur := map[int]int{} // index → weight
				for i := range size {
					cur[i] = 1
				}
				mk := func() []Instance {
					var out []Instance
					for i, w := range cur {
						out = append(out, Instance{ID: fmt.Sprintf("i-%06d", i), Address: "10.0.0.1", Port: 80, Weight: w})
					}
					return out
				}
				b := newBalancer(t, pol, mk())
				for step := range 20 {
					for range 1 + rng.IntN(5) {
						switch k := rng.IntN(size + 10); {
						case rng.IntN(3) == 0:
							delete(cur, k)
						case step%4 == 3:
							cur[k] = 1 + rng.IntN(4)
						default:
							cur[k] = 1
						}
					}
					b.Update(mk())
					p := b.Pool()
					if want := buildSchedule(p.Instances); !slices.Equal(p.sched, want) {
						t.Fatalf("step %d: schedule differs from a fresh build", step)
					}
					if p.ring != nil {
						if want := buildRing(p.Instances); !slices.Equal(p.ring.points, want.points) {
							t.Fatalf("step %d: ring differs from a fresh build (%d vs %d points)", step, len(p.ring.points), len(want.points))
						}
					}
				}
			})
		}
	}
}

// BenchmarkUpdate10k: a balancer update at 10,000 instances with 20 of them
// changed, per policy.
func BenchmarkUpdate10k(b *testing.B) {
	for _, pol := range []string{"round_robin", "p2c_ewma", "hash:ip"} {
		b.Run(pol, func(b *testing.B) {
			base := instances(10000)
			changed := instances(10000)
			for i := range 20 {
				changed[i*500].Tags = []string{"v2"}
			}
			bal := newBalancer(b, pol, base)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					bal.Update(changed)
				} else {
					bal.Update(base)
				}
			}
		})
	}
}
