package lb

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// allPolicies is one spec of each policy kind.
var allPolicies = []string{
	"round_robin", "least_conn", "random_two", "p2c_ewma",
	"hash:header:X-User", "hash:cookie:sid", "hash:ip",
}

// testContext bounds a test: loops check it, goroutines stop on it.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// instances returns n instances with IDs that sort in index order; weights,
// when given, are per instance.
func instances(n int, weights ...int) []Instance {
	insts := make([]Instance, n)
	for i := range insts {
		insts[i] = Instance{
			ID: fmt.Sprintf("web-%05d", i), Service: "web",
			Address: "10.0.0.1", Port: 8000 + i, Weight: 1,
		}
		if i < len(weights) {
			insts[i].Weight = weights[i]
		}
	}
	return insts
}

func newBalancer(t testing.TB, policy string, insts []Instance) *Balancer {
	t.Helper()
	b, err := NewBalancer("web", Config{Policy: policy})
	if err != nil {
		t.Fatalf("NewBalancer(%q): %v", policy, err)
	}
	if insts != nil {
		b.Update(insts)
	}
	return b
}

// request returns a request carrying key in every hash key source.
func request(key string) *http.Request {
	r, err := http.NewRequest(http.MethodGet, "http://web/", nil)
	if err != nil {
		panic(err)
	}
	if key != "" {
		r.Header.Set("X-User", key)
		r.Header.Set("Cookie", "a=b; sid="+key)
		r.RemoteAddr = key + ":1234"
	} else {
		r.RemoteAddr = ""
	}
	return r
}

// mustPick picks and immediately reports success, so that in-flight counts
// stay at zero.
func mustPick(t testing.TB, b *Balancer, r *http.Request, tried ...*Instance) *Instance {
	t.Helper()
	in, err := b.Pick(r, tried)
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	b.Done(in, Result{Status: http.StatusOK, Latency: time.Millisecond})
	return in
}

// counts picks n times (Pick then Done) and counts picks per instance ID.
func counts(ctx context.Context, t testing.TB, b *Balancer, r *http.Request, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		if ctx.Err() != nil {
			t.Fatalf("timed out: %v", ctx.Err())
		}
		got[mustPick(t, b, r).ID]++
	}
	return got
}

func byID(b *Balancer, id string) *Instance {
	for _, in := range b.Pool().Instances {
		if in.ID == id {
			return in
		}
	}
	panic("no instance " + id)
}
