package lb

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestRoundRobinEqualWeights(t *testing.T) {
	for _, n := range []int{1, 2, 5, 10} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, "round_robin", instances(n))
			// Every window of n consecutive picks is a permutation, so 2n
			// picks give each instance exactly twice.
			for round := range 3 {
				got := counts(ctx, t, b, nil, n)
				if len(got) != n {
					t.Fatalf("round %d: %d picks gave %v", round, n, got)
				}
			}
			if got := counts(ctx, t, b, nil, 2*n); len(got) != n {
				t.Fatalf("%d picks gave %v", 2*n, got)
			} else {
				for id, c := range got {
					if c != 2 {
						t.Errorf("%s picked %d times in %d picks, want 2", id, c, 2*n)
					}
				}
			}
		})
	}
}

func TestRoundRobinStartsAtRandomOffset(t *testing.T) {
	first := map[string]bool{}
	for range 50 {
		b := newBalancer(t, "round_robin", instances(5))
		first[mustPick(t, b, nil).ID] = true
	}
	if len(first) < 2 {
		t.Fatalf("50 fresh balancers all started on %v", first)
	}
}

// TestSmoothSchedule checks the schedule against nginx's documented example
// and against a direct implementation of nginx's algorithm.
func TestSmoothSchedule(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		want    string // one period, as instance indexes; "" means compare with nginx only
	}{
		{name: "nginx example", weights: []int{5, 1, 1}, want: "0010200"},
		{name: "two to one", weights: []int{2, 1}, want: "010"},
		{name: "gcd reduced", weights: []int{4, 2, 2}, want: "0120"},
		{name: "equal", weights: []int{3, 3, 3}, want: ""},
		{name: "passing and warning", weights: []int{10, 1, 10, 10, 1}},
		{name: "mixed", weights: []int{1, 2, 3, 4, 5, 6, 7, 3, 2, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			insts := make([]*Instance, len(tc.weights))
			for i, w := range tc.weights {
				insts[i] = &Instance{Weight: w}
			}
			sched := buildSchedule(insts)
			var got strings.Builder
			for _, idx := range sched {
				got.WriteString(fmt.Sprint(idx))
			}
			if tc.want != "" && got.String() != tc.want {
				t.Errorf("schedule %s, want %s", got.String(), tc.want)
			}
			if tc.want == "" && tc.name == "equal" {
				if sched != nil {
					t.Errorf("schedule %v for equal weights, want nil", sched)
				}
				return
			}
			if want := nginxSWRR(tc.weights); got.String() != want {
				t.Errorf("schedule %s, nginx gives %s", got.String(), want)
			}
		})
	}
}

// nginxSWRR is nginx's smooth weighted round robin as written in
// ngx_http_upstream_get_peer, over one period of the gcd-reduced weights.
func nginxSWRR(weights []int) string {
	w := make([]int64, len(weights))
	for i, x := range weights {
		w[i] = int64(x)
	}
	total := reduceWeights(w)
	cur := make([]int64, len(w))
	var s strings.Builder
	for range total {
		best := -1
		for i := range w {
			cur[i] += w[i]
			if best < 0 || cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		s.WriteString(fmt.Sprint(best))
	}
	return s.String()
}

// TestRoundRobinWeightedChiSquare checks the spread of weighted picks with a
// chi-square test, as grpc-go's weighted round robin tests do.
func TestRoundRobinWeightedChiSquare(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		picks   int
	}{
		{name: "small", weights: []int{1, 2, 3, 4}, picks: 10_000},
		{name: "passing and warning", weights: []int{10, 1, 10, 10, 1}, picks: 10_000},
		// Large weights make the schedule longer than maxSchedule: they are
		// scaled down, which must keep the spread.
		{name: "scaled", weights: []int{100_003, 200_000, 299_999}, picks: 60_000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, "round_robin", instances(len(tc.weights), tc.weights...))
			got := counts(ctx, t, b, nil, tc.picks)
			total := 0
			for _, w := range tc.weights {
				total += w
			}
			chi2 := 0.0
			for i, in := range instances(len(tc.weights)) {
				want := float64(tc.picks) * float64(tc.weights[i]) / float64(total)
				d := float64(got[in.ID]) - want
				chi2 += d * d / want
			}
			// Critical values at p = 0.001 for 2..4 degrees of freedom
			// are 13.8, 16.3, 18.5: use the smallest.
			if chi2 > 13.8 {
				t.Errorf("chi-square %.2f over %v for weights %v", chi2, got, tc.weights)
			}
		})
	}
}

// TestRoundRobinSkipsEjected checks that an ejected instance's turn is
// spread over the others rather than doubling its neighbour's share.
func TestRoundRobinSkipsEjected(t *testing.T) {
	ctx := testContext(t)
	b := newBalancer(t, "round_robin", instances(5))
	byID(b, "web-00002").Stats.EjectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
	got := counts(ctx, t, b, nil, 40)
	if got["web-00002"] != 0 || len(got) != 4 {
		t.Fatalf("picks %v with web-00002 ejected", got)
	}
	for id, c := range got {
		if c != 10 {
			t.Errorf("%s picked %d times of 40, want 10: %v", id, c, got)
		}
	}
}
