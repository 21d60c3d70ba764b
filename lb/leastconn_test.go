package lb

import (
	"testing"
)

func TestLeastConn(t *testing.T) {
	tests := []struct {
		name     string
		weights  []int
		inflight []int64
		want     string
	}{
		{name: "prefers the idle one", inflight: []int64{3, 0, 2}, want: "web-00001"},
		{name: "prefers the least busy", inflight: []int64{3, 4, 2, 5}, want: "web-00002"},
		{name: "per unit of weight", weights: []int{1, 4}, inflight: []int64{2, 3}, want: "web-00001"},
		{name: "a warning instance gets less", weights: []int{10, 1}, inflight: []int64{5, 1}, want: "web-00000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, "least_conn", instances(len(tc.inflight), tc.weights...))
			for i, in := range b.Pool().Instances {
				in.Stats.InFlight.Store(tc.inflight[i])
			}
			if got := counts(ctx, t, b, nil, 100); got[tc.want] != 100 {
				t.Fatalf("picks %v, want all on %s", got, tc.want)
			}
		})
	}
}

// TestLeastConnSharesTies checks that equal instances share the load, both
// when requests pile up (in-flight counts rise in turn) and when they are
// all idle (ties are broken at random).
func TestLeastConnSharesTies(t *testing.T) {
	ctx := testContext(t)
	b := newBalancer(t, "least_conn", instances(4))
	got := map[string]int{}
	for range 8 {
		in, err := b.Pick(nil, nil) // no Done: requests stay in flight
		if err != nil {
			t.Fatal(err)
		}
		got[in.ID]++
	}
	for _, in := range b.Pool().Instances {
		if got[in.ID] != 2 {
			t.Fatalf("8 piled-up picks over 4 instances gave %v, want 2 each", got)
		}
		in.Stats.InFlight.Store(0)
	}
	idle := counts(ctx, t, b, nil, 4000)
	for _, in := range b.Pool().Instances {
		if c := idle[in.ID]; c < 800 || c > 1200 {
			t.Fatalf("4000 idle picks over 4 instances gave %v", idle)
		}
	}
	// A lasting pattern (long requests in flight) must not favour the
	// instance that follows a run of busier ones.
	b = newBalancer(t, "least_conn", instances(5))
	for i, n := range []int64{1, 2, 2, 2, 1} {
		b.Pool().Instances[i].Stats.InFlight.Store(n)
	}
	got = counts(ctx, t, b, nil, 4000)
	if a, z := got["web-00000"], got["web-00004"]; a+z != 4000 || a < 1800 || z < 1800 {
		t.Fatalf("4000 picks with in-flight 1,2,2,2,1 gave %v, want the two least busy to share", got)
	}
}
