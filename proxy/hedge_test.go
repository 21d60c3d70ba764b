package proxy

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

func TestTryTimeoutFor(t *testing.T) {
	for _, tc := range []struct {
		name         string
		setting, p99 time.Duration
		samples      int64
		want         time.Duration
	}{
		{"off", TryTimeoutOff, time.Millisecond, 1000, 0},
		{"any negative is off", -5 * time.Second, time.Millisecond, 1000, 0},
		{"fixed", 250 * time.Millisecond, time.Second, 1000, 250 * time.Millisecond},
		{"nothing observed", TryTimeoutAdaptive, 0, 0, TryTimeoutUnobserved},
		{"too little observed", TryTimeoutAdaptive, 5 * time.Second, minLatencySamples - 1, TryTimeoutUnobserved},
		{"multiple of p99", TryTimeoutAdaptive, 40 * time.Millisecond, 1000, 120 * time.Millisecond},
		{"floor", TryTimeoutAdaptive, time.Millisecond, 1000, TryTimeoutFloor},
		{"ceiling", TryTimeoutAdaptive, time.Minute, 1000, TryTimeoutCeiling},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tryTimeoutFor(tc.setting, tc.p99, tc.samples); got != tc.want {
				t.Errorf("tryTimeoutFor(%v, %v, %d) = %v, want %v", tc.setting, tc.p99, tc.samples, got, tc.want)
			}
		})
	}
	if TryTimeoutUnobserved > time.Second {
		t.Errorf("TryTimeoutUnobserved %v: must be at most 1s", TryTimeoutUnobserved)
	}
}

func TestMayHedge(t *testing.T) {
	for _, tc := range []struct {
		idem, replay, grpc bool
		upgrade            string
		want               bool
	}{
		{true, true, false, "", true},
		{false, true, false, "", false}, // POST
		{true, false, false, "", false}, // streamed body
		{true, true, true, "", false},   // gRPC
		{true, true, false, "websocket", false},
	} {
		if got := mayHedge(tc.idem, tc.replay, tc.grpc, tc.upgrade); got != tc.want {
			t.Errorf("mayHedge(%v, %v, %v, %q) = %v, want %v", tc.idem, tc.replay, tc.grpc, tc.upgrade, got, tc.want)
		}
	}
}

func TestBudgetAllows(t *testing.T) {
	for _, tc := range []struct {
		requests, extra int64
		want            bool
	}{
		{0, 0, true},    // the floor: 10/s over 10s
		{0, 99, true},   // the 100th
		{0, 100, false}, // over the floor
		{1000, 299, true},
		{1000, 300, false}, // 20% of 1000 + 100
		{100000, 20099, true},
		{100000, 20100, false},
	} {
		if got := budgetAllows(tc.requests, tc.extra, BudgetRatio, BudgetMinPerSecond, budgetWindow); got != tc.want {
			t.Errorf("budgetAllows(%d requests, %d extra) = %v, want %v", tc.requests, tc.extra, got, tc.want)
		}
	}
}

func TestBudgetWindow(t *testing.T) {
	var b budget
	now := time.Unix(1_000_000, 0)
	for range 1000 {
		b.request(now)
	}
	granted := 0
	for range 1000 {
		if b.withdraw(now, true) {
			granted++
		}
	}
	if granted != 300 {
		t.Errorf("granted %d extra attempts for 1000 requests, want 300 (20%% + 10/s over 10s)", granted)
	}
	if b.refused.Load() != 700 || b.hedges.Load() != 300 {
		t.Errorf("refused %d hedges %d, want 700 and 300", b.refused.Load(), b.hedges.Load())
	}
	// The window slides: ten seconds later the old counts are gone.
	later := now.Add(budgetWindow)
	if req, extra := b.sums(later); req != 0 || extra != 0 {
		t.Errorf("after the window: %d requests %d extra, want 0 0", req, extra)
	}
	if !b.withdraw(later, false) {
		t.Error("a fresh window refused a retry")
	}
}

func TestLatencyBuckets(t *testing.T) {
	for d := time.Duration(0); d < 20*time.Second; d = d*9/8 + time.Microsecond {
		up := latencyBucketUpper(latencyBucket(d))
		if up < d.Truncate(time.Microsecond) || up > d*5/4+2*time.Microsecond {
			t.Fatalf("latency %v in bucket %d with upper bound %v", d, latencyBucket(d), up)
		}
	}
	var lt latencyTracker
	now := time.Unix(1_000_000, 0)
	for i := range 1000 {
		d := time.Millisecond
		if i%100 == 0 {
			d = 200 * time.Millisecond // 1%
		}
		if i%50 == 1 {
			d = 20 * time.Millisecond // 2%
		}
		lt.observe(now, d)
	}
	p99, n := lt.quantile(now, 0.99)
	if n != 1000 || p99 < 20*time.Millisecond || p99 > 25*time.Millisecond {
		t.Errorf("p99 %v of %d samples, want about 20ms of 1000", p99, n)
	}
	// Two windows later the samples are forgotten.
	if _, n := lt.quantile(now.Add(2*latencyWindow), 0.99); n != 0 {
		t.Errorf("%d samples two windows later, want 0", n)
	}
}

// stallUpstream answers nothing until release is closed.
func stallUpstream(t *testing.T, id string, release chan struct{}) *upstream {
	return newUpstream(t, id, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write([]byte(id))
	})
}

func TestHedgeAnswersFromTheOtherInstance(t *testing.T) {
	ctx := testCtx(t)
	release := make(chan struct{})
	defer close(release)
	slow := stallUpstream(t, "slow", release)
	fast := nameUpstream(t, "fast")
	bal := newBalancer(t, "web", slow.instance(), fast.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal, TryTimeout: 50 * time.Millisecond})

	for i := range 6 {
		start := time.Now()
		res, body := f.do(t, ctx, http.MethodGet, "/", nil, nil)
		took := time.Since(start)
		if res.StatusCode != 200 || body != "fast" {
			t.Fatalf("GET %d: %d %q, want 200 from fast", i, res.StatusCode, body)
		}
		if took > 2*time.Second {
			t.Errorf("GET %d took %v: the hedge did not answer", i, took)
		}
	}
	// Round robin sent about half the first attempts to slow: each was
	// hedged and cancelled there.
	if slow.hits.Load() == 0 {
		t.Fatal("no request went to the stalled instance: the test proves nothing")
	}
	st := f.p.BudgetStats()
	if len(st) != 1 || st[0].Hedges == 0 || st[0].Requests != 6 {
		t.Fatalf("budget stats %+v, want 6 requests and some hedges", st)
	}

	// A POST is never hedged: it waits for the stalled instance. (A fresh
	// balancer: passive health has ejected slow from the first one.)
	f = newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", slow.instance(), fast.instance()), TryTimeout: 50 * time.Millisecond})
	slowHits := slow.hits.Load()
	go func() {
		for slow.hits.Load() == slowHits && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // four per-try timeouts with the POST parked on slow
		release <- struct{}{}
	}()
	bodies := map[string]bool{}
	for range 2 { // round robin: one of the two lands on slow
		res, body := f.do(t, ctx, http.MethodPost, "/", strings.NewReader("x"), nil)
		if res.StatusCode != 200 {
			t.Fatalf("POST: %d %q", res.StatusCode, body)
		}
		bodies[body] = true
	}
	if !bodies["slow"] {
		t.Errorf("no POST answered by the stalled instance: %v", bodies)
	}
	if st := f.p.BudgetStats(); st[0].Hedges != 0 {
		t.Errorf("POSTs got %d hedges, want none", st[0].Hedges)
	}
}

func TestHedgeBoundedByBudget(t *testing.T) {
	ctx := testCtx(t)
	release := make(chan struct{})
	defer close(release)
	a := stallUpstream(t, "a", release)
	b := stallUpstream(t, "b", release)
	bal := newBalancer(t, "web", a.instance(), b.instance())
	f := newFrontend(t, Config{ResponseHeaderTimeout: 300 * time.Millisecond}, Route{Balancer: bal, TryTimeout: 20 * time.Millisecond})
	// Every instance stalls: every request is hedged until the budget's
	// floor (100 over the window) is spent, then no more.
	const n = 150
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, _ := f.do(t, ctx, http.MethodGet, "/", nil, nil)
			if res.StatusCode != http.StatusGatewayTimeout {
				t.Errorf("status %d, want 504", res.StatusCode)
			}
		}()
	}
	wg.Wait()
	st := f.p.BudgetStats()[0]
	t.Logf("budget after %d stalled GETs: %+v", n, st)
	if st.Hedges+st.Retries > 100+uint64(BudgetRatio*n) {
		t.Errorf("%d hedges and %d retries for %d requests: over the budget", st.Hedges, st.Retries, n)
	}
	if st.Hedges == 0 || st.Refused == 0 {
		t.Errorf("%d hedges, %d refused: want some of each", st.Hedges, st.Refused)
	}
}

func TestInstancesLeftResendsIdempotentAndFailsPOST(t *testing.T) {
	ctx := testCtx(t)
	release := make(chan struct{})
	defer close(release)
	gone := stallUpstream(t, "gone", release)
	other := nameUpstream(t, "other")
	bal := newBalancer(t, "web", gone.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal, TryTimeout: TryTimeoutOff})

	type out struct {
		status int
		body   string
	}
	results := make(chan out, 2)
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		go func() {
			res, body := f.do(t, ctx, m, "/", strings.NewReader("x"), nil)
			results <- out{res.StatusCode, body}
		}()
	}
	for gone.hits.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	in := bal.Pool().Instances[0]
	bal.Update([]lb.Instance{other.instance()})
	if n := f.p.InstancesLeft([]*lb.Instance{in}); n != 2 {
		t.Errorf("InstancesLeft cancelled %d attempts, want 2", n)
	}
	got := map[int]string{}
	for range 2 {
		r := <-results
		got[r.status] = r.body
	}
	if got[200] != "other" {
		t.Errorf("the GET was not re-sent to the other instance: %v", got)
	}
	if b, ok := got[http.StatusBadGateway]; !ok || !strings.Contains(b, "left the pool") {
		t.Errorf("the POST did not fail with 502 naming the instance leaving: %v", got)
	}
	if other.hits.Load() != 1 {
		t.Errorf("the other instance got %d requests, want 1 (the GET; never the POST)", other.hits.Load())
	}
}

// TestInstancesLeftWithNoOtherSaysWhy: when the last instance leaves, the
// GET that would have been resent and the POST that never is fail with
// 502, each saying why it was not sent again.
func TestInstancesLeftWithNoOtherSaysWhy(t *testing.T) {
	ctx := testCtx(t)
	release := make(chan struct{})
	defer close(release)
	gone := stallUpstream(t, "gone", release)
	bal := newBalancer(t, "web", gone.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal, TryTimeout: TryTimeoutOff})
	type out struct {
		method, body string
		status       int
	}
	results := make(chan out, 2)
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		go func() {
			res, body := f.do(t, ctx, m, "/", strings.NewReader("x"), nil)
			results <- out{m, body, res.StatusCode}
		}()
	}
	waitFor(t, ctx, "both requests at the instance", func() bool { return gone.hits.Load() >= 2 })
	in := bal.Pool().Instances[0]
	bal.Update(nil)
	if n := f.p.InstancesLeft([]*lb.Instance{in}); n != 2 {
		t.Errorf("InstancesLeft cancelled %d attempts, want 2", n)
	}
	want := map[string]string{
		http.MethodGet:  "no other attempt was possible",
		http.MethodPost: "not sent again: not idempotent",
	}
	for range 2 {
		r := <-results
		if r.status != http.StatusBadGateway || !strings.Contains(r.body, "left the pool") || !strings.Contains(r.body, want[r.method]) {
			t.Errorf("%s: %d %q, want 502 saying %q", r.method, r.status, r.body, want[r.method])
		}
	}
}
