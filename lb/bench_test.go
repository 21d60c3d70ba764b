package lb

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// loadedBalancer returns a balancer over n instances with a request in
// flight on each (1 to 4 of them): no instance is idle, so least_conn scans
// the whole pool, its worst case; every instance has a latency estimate.
func loadedBalancer(tb testing.TB, policy string, n int) (*Balancer, *http.Request) {
	b := newBalancer(tb, policy, instances(n))
	for i, in := range b.Pool().Instances {
		in.Stats.InFlight.Add(1)
		b.Done(in, Result{Status: http.StatusOK, Latency: time.Duration(1+i%7) * time.Millisecond})
		in.Stats.InFlight.Store(int64(1 + i%4))
	}
	return b, request("10.9.8.7")
}

func BenchmarkPick(b *testing.B) {
	for _, policy := range allPolicies {
		for _, n := range []int{5, 1000, 10_000} {
			b.Run(fmt.Sprintf("%s/n=%d", policy, n), func(b *testing.B) {
				bal, r := loadedBalancer(b, policy, n)
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					in, err := bal.Pick(r, nil)
					if err != nil {
						b.Fatal(err)
					}
					in.Stats.InFlight.Add(-1) // keep the load steady
				}
			})
		}
	}
}

// BenchmarkPickRetry measures a retry: one instance already tried.
func BenchmarkPickRetry(b *testing.B) {
	for _, policy := range allPolicies {
		b.Run(policy, func(b *testing.B) {
			bal, r := loadedBalancer(b, policy, 1000)
			tried := []*Instance{bal.Pool().Instances[0]}
			b.ReportAllocs()
			for b.Loop() {
				in, err := bal.Pick(r, tried)
				if err != nil {
					b.Fatal(err)
				}
				in.Stats.InFlight.Add(-1)
			}
		})
	}
}

func BenchmarkDone(b *testing.B) {
	bal, _ := loadedBalancer(b, "p2c_ewma", 5)
	in := bal.Pool().Instances[0]
	res := Result{Status: http.StatusOK, Latency: 3 * time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		in.Stats.InFlight.Add(1)
		bal.Done(in, res)
	}
}

func BenchmarkUpdate(b *testing.B) {
	for _, policy := range []string{"round_robin", "hash:ip"} {
		for _, n := range []int{5, 1000, 10_000} {
			b.Run(fmt.Sprintf("%s/n=%d", policy, n), func(b *testing.B) {
				insts := instances(n)
				for i := range insts {
					insts[i].Weight = 1 + i%2 // passing and warning: a real schedule
				}
				bal := newBalancer(b, policy, nil)
				b.ReportAllocs()
				for b.Loop() {
					bal.Update(insts)
				}
			})
		}
	}
}

// TestPickDoesNotAllocate enforces what the benchmarks show: no policy
// allocates on a pick, a retry, an ejected pool or a Done.
func TestPickDoesNotAllocate(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			b, r := loadedBalancer(t, policy, 50)
			tried := b.Pool().Instances[:2]
			res := Result{Status: http.StatusOK, Latency: time.Millisecond}
			pickDone := func(r *http.Request, tried []*Instance) func() {
				return func() {
					in, err := b.Pick(r, tried)
					if err != nil {
						t.Fatal(err)
					}
					b.Done(in, res)
				}
			}
			cases := map[string]func(){
				"pick":    pickDone(r, nil),
				"no key":  pickDone(request(""), nil),
				"retry":   pickDone(r, tried),
				"cookie":  pickDone(request("a-session-id"), nil),
				"failure": func() { _, _ = b.Pick(r, b.Pool().Instances) },
			}
			for name, f := range cases {
				if allocs := testing.AllocsPerRun(200, f); allocs != 0 {
					t.Errorf("%s: %.1f allocations per run, want 0", name, allocs)
				}
			}
			for _, in := range b.Pool().Instances {
				in.Stats.EjectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
			}
			if allocs := testing.AllocsPerRun(200, pickDone(r, tried)); allocs != 0 {
				t.Errorf("all ejected: %.1f allocations per run, want 0", allocs)
			}
		})
	}
}
