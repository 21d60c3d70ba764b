package lb

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

var hashPolicies = []string{"hash:header:X-User", "hash:cookie:sid", "hash:ip"}

// assign maps keys to the instance IDs b picks for them.
func assign(t *testing.T, b *Balancer, keys []string) map[string]string {
	t.Helper()
	ctx := testContext(t)
	m := make(map[string]string, len(keys))
	for _, k := range keys {
		if ctx.Err() != nil {
			t.Fatalf("timed out: %v", ctx.Err())
		}
		m[k] = mustPick(t, b, request(k)).ID
	}
	return m
}

func keys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("10.1.%d.%d", i/256, i%256) // an IP works for every key source
	}
	return ks
}

func TestHashSameKeySameInstance(t *testing.T) {
	for _, policy := range hashPolicies {
		t.Run(policy, func(t *testing.T) {
			b := newBalancer(t, policy, instances(10))
			ks := keys(2000)
			first := assign(t, b, ks)
			again := assign(t, b, ks)
			perInstance := map[string]int{}
			for _, k := range ks {
				if first[k] != again[k] {
					t.Fatalf("key %s went to %s, then %s", k, first[k], again[k])
				}
				perInstance[first[k]]++
			}
			// Spread: 2000 keys over 10 instances, 200 expected each.
			for _, in := range instances(10) {
				if c := perInstance[in.ID]; c < 100 || c > 300 {
					t.Errorf("%s owns %d of 2000 keys: %v", in.ID, c, perInstance)
				}
			}
			// Another agent (a fresh balancer) maps keys the same way.
			other := newBalancer(t, policy, instances(10))
			for _, k := range ks[:100] {
				if got := mustPick(t, other, request(k)).ID; got != first[k] {
					t.Fatalf("key %s: %s in one balancer, %s in another", k, first[k], got)
				}
			}
		})
	}
}

// TestHashRemapping checks that a pool change moves only the keys it must:
// adding an 11th instance moves about 1/11 of them, all to the newcomer;
// removing one moves only that instance's keys.
func TestHashRemapping(t *testing.T) {
	b := newBalancer(t, "hash:header:X-User", instances(10))
	ks := keys(10_000)
	before := assign(t, b, ks)

	b.Update(instances(11))
	after := assign(t, b, ks)
	moved := 0
	for _, k := range ks {
		if before[k] != after[k] {
			moved++
			if after[k] != "web-00010" {
				t.Fatalf("key %s moved from %s to %s, not to the new instance", k, before[k], after[k])
			}
		}
	}
	if frac := float64(moved) / float64(len(ks)); frac > 1.0/11+0.04 || frac < 1.0/11-0.04 {
		t.Errorf("adding 1 instance to 10 moved %.1f%% of the keys, want about %.1f%%", 100*frac, 100.0/11)
	}

	b.Update(instances(10)[1:]) // remove web-00000
	removed := assign(t, b, ks)
	for _, k := range ks {
		if before[k] != "web-00000" && before[k] != removed[k] {
			t.Fatalf("key %s moved from %s to %s though its instance stayed", k, before[k], removed[k])
		}
	}
}

func TestHashWeighted(t *testing.T) {
	b := newBalancer(t, "hash:header:X-User", instances(3, 1, 3, 1))
	perInstance := map[string]int{}
	for _, id := range assign(t, b, keys(5000)) {
		perInstance[id]++
	}
	if c := perInstance["web-00001"]; c < 2500 || c > 3500 {
		t.Fatalf("the weight-3 instance of weights 1,3,1 owns %d of 5000 keys: %v", c, perInstance)
	}
}

func TestHashSkipsToNextOnRing(t *testing.T) {
	b := newBalancer(t, "hash:cookie:sid", instances(10))
	ks := keys(200)
	owner := assign(t, b, ks)
	for _, k := range ks {
		home := byID(b, owner[k])
		// Tried: the next instance is the same for every retry of this key.
		alt := mustPick(t, b, request(k), home)
		if alt == home {
			t.Fatalf("key %s: picked its tried instance %s", k, home.ID)
		}
		if again := mustPick(t, b, request(k), home); again != alt {
			t.Fatalf("key %s: retries went to %s, then %s", k, alt.ID, again.ID)
		}
		// Ejected or draining: the same alternative.
		home.Stats.EjectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
		if got := mustPick(t, b, request(k)); got != alt {
			t.Fatalf("key %s: %s ejected, picked %s, want %s", k, home.ID, got.ID, alt.ID)
		}
		home.Stats.EjectedUntil.Store(0)
		if err := b.SetDraining(home.ID, true); err != nil {
			t.Fatal(err)
		}
		if got := mustPick(t, b, request(k)); got != alt {
			t.Fatalf("key %s: %s draining, picked %s, want %s", k, home.ID, got.ID, alt.ID)
		}
		if err := b.SetDraining(home.ID, false); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHashMissingKeyFallsBackToRoundRobin(t *testing.T) {
	for _, policy := range hashPolicies {
		t.Run(policy, func(t *testing.T) {
			ctx := testContext(t)
			b := newBalancer(t, policy, instances(5))
			r := request("")
			r.Header.Set("Cookie", "other=1; sid=")
			got := counts(ctx, t, b, r, 10)
			for _, in := range instances(5) {
				if got[in.ID] != 2 {
					t.Fatalf("10 picks without a key gave %v, want round robin", got)
				}
			}
		})
	}
}

func TestHashKeySources(t *testing.T) {
	tests := []struct {
		name    string
		policy  string
		prepare func(r *http.Request)
		want    string
		wantOK  bool
	}{
		{"header", "hash:header:x-user", func(r *http.Request) { r.Header.Set("X-User", "ann") }, "ann", true},
		{"header first value", "hash:header:X-User", func(r *http.Request) { r.Header.Add("X-User", "a"); r.Header.Add("X-User", "b") }, "a", true},
		{"header missing", "hash:header:X-User", func(r *http.Request) {}, "", false},
		{"header empty", "hash:header:X-User", func(r *http.Request) { r.Header.Set("X-User", "") }, "", false},
		{"host", "hash:header:host", func(r *http.Request) { r.Host = "example.com" }, "example.com", true},
		{"cookie", "hash:cookie:sid", func(r *http.Request) { r.Header.Set("Cookie", "a=1; sid=xyz; b=2") }, "xyz", true},
		{"cookie first", "hash:cookie:sid", func(r *http.Request) { r.Header.Set("Cookie", "sid=abc") }, "abc", true},
		{"cookie quoted", "hash:cookie:sid", func(r *http.Request) { r.Header.Set("Cookie", `sid="q v"`) }, "q v", true},
		{"cookie second line", "hash:cookie:sid", func(r *http.Request) { r.Header.Add("Cookie", "a=1"); r.Header.Add("Cookie", " sid=two") }, "two", true},
		{"cookie prefix name", "hash:cookie:sid", func(r *http.Request) { r.Header.Set("Cookie", "xsid=1;sidx=2") }, "", false},
		{"cookie empty", "hash:cookie:sid", func(r *http.Request) { r.Header.Set("Cookie", "sid=") }, "", false},
		{"ip v4", "hash:ip", func(r *http.Request) { r.RemoteAddr = "192.0.2.1:4711" }, "192.0.2.1", true},
		{"ip v6", "hash:ip", func(r *http.Request) { r.RemoteAddr = "[2001:db8::1]:4711" }, "2001:db8::1", true},
		{"ip no port", "hash:ip", func(r *http.Request) { r.RemoteAddr = "192.0.2.1" }, "192.0.2.1", true},
		{"ip bare v6", "hash:ip", func(r *http.Request) { r.RemoteAddr = "2001:db8::1" }, "2001:db8::1", true},
		{"ip empty", "hash:ip", func(r *http.Request) { r.RemoteAddr = "" }, "", false},
		{"ip bad bracket", "hash:ip", func(r *http.Request) { r.RemoteAddr = "[::1" }, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pol, err := parsePolicy(tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			r, _ := http.NewRequest(http.MethodGet, "http://web/", nil)
			r.Host, r.RemoteAddr = "", ""
			tc.prepare(r)
			got, ok := pol.hashKey(r)
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("hashKey = %q, %v; want %q, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
	if _, ok := (&policy{def: &hashIP}).hashKey(nil); ok {
		t.Error("a nil request has a key")
	}
}
