package lb

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

var errReset = errors.New("connection reset by peer")

func fail(b *Balancer, in *Instance) {
	in.Stats.InFlight.Add(1)
	b.Done(in, Result{Err: errReset, Latency: time.Millisecond})
}

func succeed(b *Balancer, in *Instance) {
	in.Stats.InFlight.Add(1)
	b.Done(in, Result{Status: http.StatusOK, Latency: time.Millisecond})
}

// ejectedFor returns how much longer in is ejected (0: not ejected).
func ejectedFor(in *Instance) time.Duration {
	return max(0, time.Duration(in.Stats.EjectedUntil.Load()-time.Now().UnixNano()))
}

func newHealthBalancer(t *testing.T, maxFails int, failTimeout time.Duration, n int) *Balancer {
	t.Helper()
	b, err := NewBalancer("web", Config{MaxFails: maxFails, FailTimeout: failTimeout})
	if err != nil {
		t.Fatal(err)
	}
	b.Update(instances(n))
	return b
}

func TestEjectionAfterMaxFails(t *testing.T) {
	tests := []struct {
		name     string
		maxFails int
		outcomes string // f: failure, s: success
		ejected  bool
	}{
		{"below max fails", 3, "ff", false},
		{"at max fails", 3, "fff", true},
		{"default max fails", 0, "fff", true},
		{"reset by a success", 3, "ffsff", false},
		{"one is enough", 1, "f", true},
		{"passive health off", -1, "ffffffffff", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			b := newHealthBalancer(t, tc.maxFails, 10*time.Second, 3)
			in := byID(b, "web-00001")
			for _, o := range tc.outcomes {
				if o == 'f' {
					fail(b, in)
				} else {
					succeed(b, in)
				}
			}
			if got := ejectedFor(in) > 0; got != tc.ejected {
				t.Fatalf("ejected %v after %q, want %v", got, tc.outcomes, tc.ejected)
			}
			if in.Stats.Ejected(time.Now()) != tc.ejected {
				t.Fatalf("Stats.Ejected disagrees")
			}
			picks := counts(ctx, t, b, nil, 30)
			if tc.ejected && picks[in.ID] != 0 {
				t.Fatalf("ejected instance picked: %v", picks)
			}
			if !tc.ejected && picks[in.ID] != 10 {
				t.Fatalf("healthy instance not in rotation: %v", picks)
			}
		})
	}
}

// TestEjectionDoubles checks the ejection period: FailTimeout, then twice
// that after each expiry followed by a failure, capped at MaxEjection, and
// back to FailTimeout after a success.
func TestEjectionDoubles(t *testing.T) {
	const base = 40 * time.Second
	b := newHealthBalancer(t, 2, base, 2)
	in := byID(b, "web-00000")
	expire := func() { in.Stats.EjectedUntil.Store(time.Now().Add(-time.Millisecond).UnixNano()) }
	near := func(got, want time.Duration) bool { return got > want-time.Second && got <= want }

	fail(b, in)
	fail(b, in)
	want := base
	for k := 1; k <= 6; k++ {
		if got := ejectedFor(in); !near(got, want) {
			t.Fatalf("ejection %d: %s, want %s", k, got, want)
		}
		if got := in.Stats.Ejections.Load(); got != int32(k) {
			t.Fatalf("ejection %d: Ejections = %d", k, got)
		}
		// While ejected, failures of requests still in flight change nothing.
		fail(b, in)
		if got := ejectedFor(in); !near(got, want) {
			t.Fatalf("ejection %d extended by a failure while ejected: %s", k, got)
		}
		// Expiry: the instance is picked again; one failure re-ejects it.
		expire()
		if got := mustPickID(t, b, "web-00000"); !got {
			t.Fatalf("ejection %d: expired ejection still skips the instance", k)
		}
		fail(b, in)
		want = min(2*want, MaxEjection)
	}
	expire()
	succeed(b, in)
	if in.Stats.Ejections.Load() != 0 || in.Stats.ConsecFails.Load() != 0 || in.Stats.EjectedUntil.Load() != 0 {
		t.Fatalf("a success did not reset: ejections %d, consecutive failures %d, until %d",
			in.Stats.Ejections.Load(), in.Stats.ConsecFails.Load(), in.Stats.EjectedUntil.Load())
	}
	fail(b, in)
	fail(b, in)
	if got := ejectedFor(in); !near(got, base) {
		t.Fatalf("ejection after a recovery: %s, want %s", got, base)
	}
}

// mustPickID reports whether id comes up within a round of picks.
func mustPickID(t *testing.T, b *Balancer, id string) bool {
	for range 2 * len(b.Pool().Instances) {
		in, err := b.Pick(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		in.Stats.InFlight.Add(-1) // not Done: the outcome is the caller's to report
		if in.ID == id {
			return true
		}
	}
	return false
}

func TestEjectionCapAndLongFailTimeout(t *testing.T) {
	b := newHealthBalancer(t, 1, time.Hour, 1)
	if got := b.ejectionPeriod(5); got != time.Hour {
		t.Errorf("a fail timeout above MaxEjection: period %s, want the fail timeout", got)
	}
	b = newHealthBalancer(t, 1, time.Second, 1)
	for k, want := range map[int32]time.Duration{1: time.Second, 2: 2 * time.Second, 9: 256 * time.Second, 10: MaxEjection, 1000: MaxEjection} {
		if got := b.ejectionPeriod(k); got != want {
			t.Errorf("ejection %d: %s, want %s", k, got, want)
		}
	}
}

func TestNeverEjectAll(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ctx := testContext(t)
			b, err := NewBalancer("web", Config{Policy: policy, MaxFails: 1})
			if err != nil {
				t.Fatal(err)
			}
			b.Update(instances(3))
			insts := b.Pool().Instances
			fail(b, insts[0])
			fail(b, insts[1])
			// Ejected ones are avoided while one is left ...
			for _, key := range []string{"", "alice", "bob"} {
				if got := counts(ctx, t, b, request(key), 10); got["web-00002"] != 10 {
					t.Fatalf("key %q: picks %v, want the one not ejected", key, got)
				}
			}
			// ... and used when none is: ejection is ignored, not draining or tried.
			fail(b, insts[2])
			for _, key := range []string{"", "alice"} {
				in, err := b.Pick(request(key), insts[:1])
				if err != nil || in == insts[0] {
					t.Fatalf("key %q: all ejected, first tried: %v, %v", key, in, err)
				}
				in.Stats.InFlight.Add(-1)
			}
			if err := b.SetDraining("web-00001", true); err != nil {
				t.Fatal(err)
			}
			in, err := b.Pick(nil, insts[2:])
			if err != nil || in != insts[0] {
				t.Fatalf("all ejected, one draining, one tried: %v, %v; want the third", in, err)
			}
		})
	}
}

func TestConcurrentFailuresEjectOnce(t *testing.T) {
	ctx := testContext(t)
	b := newHealthBalancer(t, 3, 10*time.Second, 2)
	in := byID(b, "web-00000")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50 && ctx.Err() == nil; i++ {
				fail(b, in)
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal(ctx.Err())
	}
	if got := in.Stats.Ejections.Load(); got != 1 {
		t.Fatalf("400 concurrent failures gave %d ejections, want 1", got)
	}
	if got := in.Stats.Failures.Load(); got != 400 {
		t.Fatalf("failures %d, want 400", got)
	}
}

func TestFailedStatuses(t *testing.T) {
	tests := []struct {
		res    Result
		failed bool
	}{
		{Result{Status: http.StatusOK}, false},
		{Result{Status: http.StatusInternalServerError}, false}, // the app's error, not the instance's health
		{Result{Status: http.StatusTooManyRequests}, false},
		{Result{Status: http.StatusBadGateway}, true},
		{Result{Status: http.StatusServiceUnavailable}, true},
		{Result{Status: http.StatusGatewayTimeout}, true},
		{Result{Err: errReset}, true},
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.res.Status), func(t *testing.T) {
			b := newHealthBalancer(t, 1, time.Second, 1)
			in := b.Pool().Instances[0]
			in.Stats.InFlight.Add(1)
			b.Done(in, tc.res)
			if got := in.Stats.Failures.Load() == 1; got != tc.failed {
				t.Fatalf("%+v counted as failure: %v, want %v", tc.res, got, tc.failed)
			}
			if got := ejectedFor(in) > 0; got != tc.failed {
				t.Fatalf("%+v ejected (max fails 1): %v, want %v", tc.res, got, tc.failed)
			}
		})
	}
}
