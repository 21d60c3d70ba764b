package lb

import (
	"errors"
	"math"
	"net/http"
	"syscall"
	"testing"
	"time"
)

func TestRandomTwo(t *testing.T) {
	ctx := testContext(t)
	b := newBalancer(t, "random_two", instances(5))
	idle := counts(ctx, t, b, nil, 5000)
	for _, in := range b.Pool().Instances {
		if c := idle[in.ID]; c < 800 || c > 1200 {
			t.Fatalf("5000 idle picks over 5 instances gave %v", idle)
		}
	}
	// The busiest instance loses every comparison: two distinct choices.
	byID(b, "web-00003").Stats.InFlight.Store(50)
	if got := counts(ctx, t, b, nil, 2000); got["web-00003"] != 0 {
		t.Fatalf("the busiest instance got picks: %v", got)
	}
}

// simulate picks n times, reporting for each instance the outcome that
// outcome gives, and returns the picks per instance.
func simulate(t *testing.T, b *Balancer, n int, outcome func(id string) Result) map[string]int {
	t.Helper()
	ctx := testContext(t)
	got := map[string]int{}
	for range n {
		if ctx.Err() != nil {
			t.Fatalf("timed out: %v", ctx.Err())
		}
		in, err := b.Pick(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[in.ID]++
		b.Done(in, outcome(in.ID))
	}
	return got
}

func TestP2CEWMAAvoidsSlowAndFailing(t *testing.T) {
	b, err := NewBalancer("web", Config{Policy: "p2c_ewma", MaxFails: -1}) // EWMA alone, no ejection
	if err != nil {
		t.Fatal(err)
	}
	b.Update(instances(7))
	const slow, failing = "web-00005", "web-00006"
	outcome := func(id string) Result {
		switch id {
		case slow:
			return Result{Status: http.StatusOK, Latency: 300 * time.Millisecond}
		case failing: // fails fast: must not look fast
			return Result{Err: syscall.ECONNREFUSED, Latency: 100 * time.Microsecond}
		}
		return Result{Status: http.StatusOK, Latency: 10 * time.Millisecond}
	}
	got := simulate(t, b, 7000, outcome)
	// The slow one wins only against the failing one: 1 pair in 21.
	if got[slow] > 7000/10 || got[failing] > 7000/100 {
		t.Fatalf("picks %v: the slow or the failing instance was not avoided", got)
	}
	for _, in := range instances(5) {
		if got[in.ID] < 1000 {
			t.Fatalf("picks %v: fast instances do not share the load", got)
		}
	}

	// The estimate decays: an instance avoided for a while is probed again.
	for _, id := range []string{slow, failing} {
		st := byID(b, id).Stats
		st.EWMAStamp.Add(-int64(time.Minute))
	}
	got = simulate(t, b, 700, func(string) Result { return Result{Status: http.StatusOK, Latency: 10 * time.Millisecond} })
	if got[slow] == 0 || got[failing] == 0 {
		t.Fatalf("picks %v: decayed instances were not probed again", got)
	}
}

func TestP2CEWMAUnknownLatency(t *testing.T) {
	b := newBalancer(t, "p2c_ewma", instances(2))
	known, fresh := byID(b, "web-00000"), byID(b, "web-00001")
	b.Done(known, Result{Status: http.StatusOK, Latency: 20 * time.Millisecond})
	known.Stats.InFlight.Add(1) // Done took one out: keep it at 0
	// Idle and unknown: probed (cost 0).
	if got := mustPick(t, b, nil); got != fresh {
		t.Fatalf("picked %s, want the idle newcomer", got.ID)
	}
	// Busy and unknown: avoided until its first answer.
	fresh.Stats.EWMABits.Store(0) // forget the sample mustPick reported
	fresh.Stats.InFlight.Store(1)
	for range 20 {
		if got := mustPick(t, b, nil); got != known {
			t.Fatalf("picked %s, want the measured instance while the newcomer is busy", got.ID)
		}
	}
}

// TestBackoffIsSoft checks that every policy avoids instances backing off
// after a Retry-After, yet uses them when nothing else is left.
func TestBackoffIsSoft(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, policy, instances(3))
			for _, id := range []string{"web-00000", "web-00002"} {
				in := byID(b, id)
				in.Stats.InFlight.Add(1)
				b.Done(in, Result{Status: http.StatusTooManyRequests, RetryAfter: time.Hour})
			}
			for _, key := range []string{"", "alice", "bob", "carol"} {
				if got := counts(ctx, t, b, request(key), 20); got["web-00001"] != 20 {
					t.Fatalf("key %q: picks %v, want all on the one not backing off", key, got)
				}
			}
			in := byID(b, "web-00001")
			in.Stats.InFlight.Add(1)
			b.Done(in, Result{Status: http.StatusServiceUnavailable, RetryAfter: time.Hour})
			if _, err := b.Pick(request("alice"), nil); err != nil {
				t.Fatalf("all backing off: %v, want a pick anyway", err)
			}
		})
	}
}

func TestRetryAfterOnlyOn429And503(t *testing.T) {
	tests := []struct {
		status int
		want   bool
	}{
		{http.StatusTooManyRequests, true},
		{http.StatusServiceUnavailable, true},
		{http.StatusOK, false},
		{http.StatusBadGateway, false},
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			b, err := NewBalancer("web", Config{MaxFails: -1})
			if err != nil {
				t.Fatal(err)
			}
			b.Update(instances(1))
			in, err := b.Pick(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			b.Done(in, Result{Status: tc.status, RetryAfter: 30 * time.Second})
			until := in.Stats.BackoffUntil.Load()
			if got := until != 0; got != tc.want {
				t.Fatalf("status %d: backoff set %v, want %v", tc.status, got, tc.want)
			}
			if tc.want {
				if d := time.Duration(until - before.UnixNano()); d < 29*time.Second || d > 31*time.Second {
					t.Errorf("backoff for %s, want about 30s", d)
				}
			}
		})
	}
}

func TestFailureFeedsPenalty(t *testing.T) {
	b := newBalancer(t, "p2c_ewma", instances(1))
	in := b.Pool().Instances[0]
	b.Done(in, Result{Status: http.StatusOK, Latency: 5 * time.Millisecond})
	if got := in.Stats.Latency(time.Now()); got < 4*time.Millisecond || got > 5*time.Millisecond {
		t.Fatalf("latency %s after a 5ms sample", got)
	}
	b.Done(in, Result{Err: errors.New("connection reset"), Latency: time.Millisecond})
	if got := in.Stats.Latency(time.Now()); got < minFailPenalty*9/10 {
		t.Fatalf("latency %s after a fast failure, want at least about %s", got, minFailPenalty)
	}
	before := in.Stats.Latency(time.Now())
	b.Done(in, Result{Status: http.StatusOK, Latency: 5 * time.Millisecond})
	if got := in.Stats.Latency(time.Now()); got >= before || got < before/2 {
		t.Fatalf("latency %s after a fast success following %s, want it pulled down by %v", got, before, ewmaAlpha)
	}
}

func TestDecayedLatency(t *testing.T) {
	const v = float64(100 * time.Millisecond)
	for _, dt := range []time.Duration{0, time.Millisecond, 100 * time.Millisecond, 312 * time.Millisecond,
		313 * time.Millisecond, time.Second, ewmaDecay, time.Minute} {
		t.Run(dt.String(), func(t *testing.T) {
			var st Stats
			st.EWMABits.Store(math.Float64bits(v))
			st.EWMAStamp.Store(1_000_000)
			got := decayedLatency(&st, 1_000_000+int64(dt))
			want := v * math.Exp(-float64(dt)/float64(ewmaDecay))
			if math.Abs(got-want) > want*1e-5 {
				t.Fatalf("decayed %v after %s, want %v", got, dt, want)
			}
		})
	}
	var none Stats
	if got := decayedLatency(&none, 1e18); got != 0 {
		t.Fatalf("no sample: %v, want 0", got)
	}
}
