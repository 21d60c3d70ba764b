package lb

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestValidatePolicy(t *testing.T) {
	valid := []string{"", "round_robin", "least_conn", "random_two", "p2c_ewma",
		"hash:header:X-User", "hash:header:x-user-id", "hash:cookie:session_id", "hash:ip"}
	for _, spec := range valid {
		t.Run("valid/"+spec, func(t *testing.T) {
			if err := ValidatePolicy(spec); err != nil {
				t.Fatalf("ValidatePolicy(%q) = %v, want nil", spec, err)
			}
		})
	}
	invalid := []struct{ spec, why string }{
		{"roundrobin", "unknown policy"},
		{"ROUND_ROBIN", "unknown policy"},
		{"ip_hash", "unknown policy"},
		{"hash", "unknown policy"},
		{"hash:ip:x", "unknown policy"},
		{"hash:header:", "header name"},
		{"hash:header:X User", "header name"},
		{"hash:cookie:", "cookie name"},
		{"hash:cookie:a;b", "cookie name"},
	}
	for _, tc := range invalid {
		t.Run("invalid/"+tc.spec, func(t *testing.T) {
			err := ValidatePolicy(tc.spec)
			if err == nil {
				t.Fatalf("ValidatePolicy(%q) = nil, want an error", tc.spec)
			}
			msg := err.Error()
			for _, want := range append([]string{`"` + tc.spec + `"`, tc.why}, ValidPolicies()...) {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
			if _, err := NewBalancer("web", Config{Policy: tc.spec}); err == nil {
				t.Errorf("NewBalancer accepted policy %q", tc.spec)
			}
		})
	}
}

func TestNewBalancer(t *testing.T) {
	tests := []struct {
		name    string
		service string
		cfg     Config
		wantErr string // substring; "" means success
		policy  string
	}{
		{name: "defaults", service: "web", policy: "round_robin"},
		{name: "hash", service: "web", cfg: Config{Policy: "hash:header:x-user"}, policy: "hash:header:x-user"},
		{name: "passive health off", service: "web", cfg: Config{MaxFails: -1}, policy: "round_robin"},
		{name: "empty service", service: "", wantErr: "service name"},
		{name: "negative fail timeout", service: "web", cfg: Config{FailTimeout: -time.Second}, wantErr: "fail timeout -1s"},
		{name: "bad policy", service: "web", cfg: Config{Policy: "fastest"}, wantErr: `"fastest"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBalancer(tc.service, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewBalancer: error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewBalancer: %v", err)
			}
			if b.Service() != tc.service || b.Policy() != tc.policy {
				t.Errorf("Service, Policy = %q, %q; want %q, %q", b.Service(), b.Policy(), tc.service, tc.policy)
			}
		})
	}
	b := newBalancer(t, "", nil)
	if b.maxFails != DefaultMaxFails || b.failTimeout != DefaultFailTimeout {
		t.Errorf("defaults: max fails %d, fail timeout %s", b.maxFails, b.failTimeout)
	}
}

func TestNoPoolNoInstance(t *testing.T) {
	b := newBalancer(t, "", nil)
	if b.Pool() != nil {
		t.Fatal("Pool before Update is not nil")
	}
	_, err := b.Pick(request(""), nil)
	if !errors.Is(err, ErrNoPool) || errors.Is(err, ErrNoInstance) {
		t.Fatalf("Pick before Update: %v, want ErrNoPool only", err)
	}
	b.Update(nil)
	_, err = b.Pick(request(""), nil)
	if !errors.Is(err, ErrNoInstance) || errors.Is(err, ErrNoPool) {
		t.Fatalf("Pick on an empty pool: %v, want ErrNoInstance only", err)
	}
	if !strings.Contains(err.Error(), `"web"`) {
		t.Errorf("error %q does not name the service", err)
	}
}

func TestPickSkipsTriedAndDraining(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, policy, instances(5))
			insts := b.Pool().Instances
			for _, key := range []string{"", "alice", "bob"} {
				r := request(key)
				// Tried: everything but web-00003.
				tried := []*Instance{insts[0], insts[1], insts[2], insts[4]}
				for range 50 {
					if got := mustPick(t, b, r, tried...); got.ID != "web-00003" {
						t.Fatalf("key %q: picked %s, tried %v", key, got.ID, tried)
					}
				}
				if _, err := b.Pick(r, insts); !errors.Is(err, ErrNoInstance) {
					t.Fatalf("key %q: every instance tried: %v, want ErrNoInstance", key, err)
				}
				// Draining: all but web-00001.
				for _, in := range insts {
					if err := b.SetDraining(in.ID, in.ID != "web-00001"); err != nil {
						t.Fatal(err)
					}
				}
				if got := counts(ctx, t, b, r, 50); got["web-00001"] != 50 {
					t.Fatalf("key %q: picks %v with all but web-00001 draining", key, got)
				}
				if _, err := b.Pick(r, insts[1:2]); !errors.Is(err, ErrNoInstance) {
					t.Fatalf("key %q: all draining or tried: %v, want ErrNoInstance", key, err)
				}
				for _, in := range insts {
					if err := b.SetDraining(in.ID, false); err != nil {
						t.Fatal(err)
					}
				}
			}
		})
	}
}

func TestTriedFromOlderSnapshot(t *testing.T) {
	b := newBalancer(t, "round_robin", instances(2))
	old := b.Pool().Instances[0]
	next := instances(2)
	next[0].Tags = []string{"changed"} // an unchanged instance would be reused
	b.Update(next)
	if b.Pool().Instances[0] == old {
		t.Fatal("Update reused the instance; the test needs a fresh snapshot")
	}
	for range 10 {
		if got := mustPick(t, b, nil, old); got.ID == old.ID {
			t.Fatalf("picked %s, tried in an older snapshot", got.ID)
		}
	}
}

func TestSetDrainingUnknown(t *testing.T) {
	b := newBalancer(t, "", instances(2))
	err := b.SetDraining("nope-1", true)
	if !errors.Is(err, ErrUnknownInstance) || !strings.Contains(err.Error(), `"nope-1"`) {
		t.Fatalf("SetDraining(unknown) = %v, want ErrUnknownInstance naming the id", err)
	}
}

func TestUpdate(t *testing.T) {
	b := newBalancer(t, "", nil)
	in := instances(3)
	in[0], in[2] = in[2], in[0] // unsorted input
	in[1].Weight = 0
	in[2].HostPort = ""
	in = append(in, Instance{ID: in[0].ID, Port: 1}) // duplicate ID: dropped
	b.Update(in)
	in[0].ID = "changed-by-caller"

	p := b.Pool()
	if p.Version != 1 || p.Service != "web" || p.Updated.IsZero() {
		t.Errorf("pool version %d, service %q, updated %v", p.Version, p.Service, p.Updated)
	}
	var ids []string
	for _, x := range p.Instances {
		ids = append(ids, x.ID)
		if x.Weight < 1 || x.Stats == nil {
			t.Errorf("%s: weight %d, stats %p", x.ID, x.Weight, x.Stats)
		}
	}
	if got := strings.Join(ids, ","); got != "web-00000,web-00001,web-00002" {
		t.Fatalf("instances %s, want sorted, deduplicated, unaffected by the caller", got)
	}
	if hp := p.Instances[0].HostPort; hp != "10.0.0.1:8000" {
		t.Errorf("HostPort %q, want it filled in", hp)
	}

	// Stats survive an update for kept IDs and are dropped for removed ones.
	kept, removed := byID(b, "web-00001"), byID(b, "web-00002")
	kept.Stats.Requests.Store(7)
	removed.Stats.Requests.Store(9)
	if err := b.SetDraining("web-00001", true); err != nil {
		t.Fatal(err)
	}
	b.Update(instances(2))
	if v := b.Pool().Version; v != 2 {
		t.Errorf("version %d after the second update, want 2", v)
	}
	if st := byID(b, "web-00001").Stats; st != kept.Stats || st.Requests.Load() != 7 || !st.Draining.Load() {
		t.Errorf("stats of a kept instance were not kept")
	}
	if err := b.SetDraining("web-00002", true); !errors.Is(err, ErrUnknownInstance) {
		t.Errorf("SetDraining on a removed instance: %v, want ErrUnknownInstance", err)
	}
	b.Update(instances(3))
	if st := byID(b, "web-00002").Stats; st == removed.Stats || st.Requests.Load() != 0 {
		t.Errorf("a re-added instance got the stats it had before removal")
	}
}

func TestPickAndDoneCount(t *testing.T) {
	b := newBalancer(t, "", instances(1))
	in, err := b.Pick(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if in.Stats.InFlight.Load() != 1 || in.Stats.Requests.Load() != 1 {
		t.Fatalf("after Pick: in flight %d, requests %d", in.Stats.InFlight.Load(), in.Stats.Requests.Load())
	}
	b.Done(in, Result{Status: http.StatusBadGateway})
	if in.Stats.InFlight.Load() != 0 || in.Stats.Failures.Load() != 1 || in.Stats.ConsecFails.Load() != 1 {
		t.Fatalf("after Done: in flight %d, failures %d, consecutive %d",
			in.Stats.InFlight.Load(), in.Stats.Failures.Load(), in.Stats.ConsecFails.Load())
	}
	b.Done(nil, Result{})                // ignored
	b.Done(&Instance{ID: "x"}, Result{}) // no stats: ignored
}

// TestConcurrent runs Pick/Done, Update and SetDraining together under the
// race detector and checks that every pick was reported back.
func TestConcurrent(t *testing.T) {
	for _, policy := range allPolicies {
		t.Run(policy, func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, policy, instances(8))
			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				seen   = map[*Stats]bool{}
				errs   = make(chan error, 16)
				picks  = 2000
				pickGo = 6
			)
			for g := range pickGo {
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := map[*Stats]bool{}
					r := request("user-" + string(rune('a'+g)))
					for i := 0; i < picks && ctx.Err() == nil; i++ {
						in, err := b.Pick(r, nil)
						if errors.Is(err, ErrNoInstance) {
							continue // the updater may publish a small pool with all draining
						}
						if err != nil {
							errs <- err
							return
						}
						local[in.Stats] = true
						res := Result{Status: http.StatusOK, Latency: time.Duration(1+rand.IntN(5)) * time.Millisecond}
						if rand.IntN(10) == 0 {
							res = Result{Status: http.StatusServiceUnavailable, RetryAfter: time.Millisecond}
						}
						b.Done(in, res)
					}
					mu.Lock()
					for st := range local {
						seen[st] = true
					}
					mu.Unlock()
				}()
			}
			stop := make(chan struct{})
			var bg sync.WaitGroup
			bg.Add(2)
			go func() { // updater: pools of 4 to 8 instances
				defer bg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-ctx.Done():
						return
					default:
					}
					b.Update(instances(4 + i%5))
				}
			}()
			go func() { // operator: drains and undrains
				defer bg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-ctx.Done():
						return
					default:
					}
					_ = b.SetDraining(instances(8)[i%8].ID, i%3 == 0)
				}
			}()
			wg.Wait()
			close(stop)
			bg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("Pick: %v", err)
			}
			if ctx.Err() != nil {
				t.Fatalf("timed out: %v", ctx.Err())
			}
			for st := range seen {
				if n := st.InFlight.Load(); n != 0 {
					t.Errorf("in flight %d after every pick was reported back", n)
				}
			}
			if len(seen) < 4 {
				t.Errorf("only %d distinct instances picked", len(seen))
			}
		})
	}
}
