package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct {
		prev, got, want uint64
		why             string
	}{
		{0, 0, 1, "never wait on 0"},
		{0, 7, 7, "first answer"},
		{7, 7, 7, "equal: no news"},
		{7, 9, 9, "moved on"},
		{9, 3, 0, "went backwards: reset"},
		{9, 0, 0, "went backwards to 0: reset"},
		{0, 1, 1, "minimum"},
	} {
		if got := NextIndex(tc.prev, tc.got); got != tc.want {
			t.Errorf("NextIndex(%d, %d) = %d, want %d (%s)", tc.prev, tc.got, got, tc.want, tc.why)
		}
	}
}

func TestBackoff(t *testing.T) {
	minD, maxD := 250*time.Millisecond, 30*time.Second
	for n := 1; n < 40; n++ {
		ceiling := min(maxD, minD<<min(n-1, 30))
		if d := backoff(n, minD, maxD); d < ceiling/2 || d > ceiling {
			t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, ceiling/2, ceiling)
		}
	}
}

func entry(id, node, nodeAddr, addr string, port int, statuses ...string) *api.ServiceEntry {
	e := &api.ServiceEntry{
		Node:    &api.Node{Node: node, Address: nodeAddr},
		Service: &api.AgentService{ID: id, Service: "web", Address: addr, Port: port, Weights: api.AgentWeights{Passing: 3, Warning: 1}, Meta: map[string]string{"pid": "1"}},
	}
	for i, s := range statuses {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: "c" + string(rune('0'+i)), Status: s})
	}
	return e
}

func TestInstances(t *testing.T) {
	var warned []string
	warn := func(id, reason string) { warned = append(warned, id+": "+reason) }
	// Maintenance mode is a critical check with a reserved ID.
	maint := entry("m", "n1", "10.0.0.1", "", 80, api.HealthPassing)
	maint.Checks = append(maint.Checks, &api.HealthCheck{CheckID: "_service_maintenance:m", Status: api.HealthCritical})
	got := Instances([]*api.ServiceEntry{
		entry("b", "n1", "10.0.0.1", "", 8080, api.HealthPassing),                             // node address
		entry("a", "n1", "10.0.0.1", "192.0.2.7", 8081, api.HealthPassing, api.HealthWarning), // warning weight
		entry("c", "n1", "10.0.0.1", "", 8082, api.HealthPassing, api.HealthCritical),         // dropped
		entry("d", "n1", "", "", 8083, api.HealthPassing),                                     // no address
		entry("e", "n1", "10.0.0.1", "", 0, api.HealthPassing),                                // bad port
		entry("f", "n1", "10.0.0.1", "bad host!", 80, api.HealthPassing),                      // bad address
		entry("g", "n1", "10.0.0.1", "::1", 9000, api.HealthPassing),                          // IPv6
		entry("dup", "n1", "10.0.0.1", "", 1, api.HealthPassing),                              // same ID on two nodes
		entry("dup", "n2", "10.0.0.2", "", 1, api.HealthPassing),
		maint,
	}, warn)
	want := []struct {
		id, hostport string
		weight       int
	}{
		{"a", "192.0.2.7:8081", 1},
		{"b", "10.0.0.1:8080", 3},
		{"g", "[::1]:9000", 3},
		{"n1/dup", "10.0.0.1:1", 3},
		{"n2/dup", "10.0.0.2:1", 3},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d instances %+v, want %d", len(got), got, len(want))
	}
	for i, w := range want {
		if got[i].ID != w.id || got[i].HostPort != w.hostport || got[i].Weight != w.weight || got[i].Service != "web" || got[i].Meta["pid"] != "1" {
			t.Errorf("instance %d = %+v, want %+v", i, got[i], w)
		}
	}
	if len(warned) != 3 || !strings.Contains(strings.Join(warned, "\n"), `"bad host!"`) {
		t.Errorf("warnings %q, want three naming the bad values", warned)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pools.json")
	pools := map[string][]lb.Instance{"web": {{ID: "a", Address: "10.0.0.1", Port: 80, Weight: 2, Meta: map[string]string{"pid": "9"}}}}
	if err := SaveSnapshot(path, pools); err != nil {
		t.Fatal(err)
	}
	got, err := LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	in := got["web"]
	if len(in) != 1 || in[0].HostPort != "10.0.0.1:80" || in[0].Weight != 2 || in[0].Meta["pid"] != "9" || in[0].Service != "web" {
		t.Fatalf("round trip gave %+v", got)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSnapshot(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("corrupt snapshot: err = %v, want one naming %s", err, path)
	}
	if _, err := LoadSnapshot(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing snapshot: err = %v, want ErrNotExist", err)
	}
}

// fakeHealth answers queries from a script of responses, recording the
// index each query waited on.
type fakeHealth struct {
	mu      sync.Mutex
	answers []fakeAnswer
	waited  []uint64
}

type fakeAnswer struct {
	entries []*api.ServiceEntry
	index   uint64
	err     error
}

func (f *fakeHealth) Service(_, _ string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	f.mu.Lock()
	f.waited = append(f.waited, q.WaitIndex)
	if len(f.answers) == 0 {
		f.mu.Unlock()
		<-q.Context().Done() // nothing more: block like a long poll
		return nil, nil, q.Context().Err()
	}
	a := f.answers[0]
	f.answers = f.answers[1:]
	f.mu.Unlock()
	if a.err != nil {
		return nil, nil, a.err
	}
	return a.entries, &api.QueryMeta{LastIndex: a.index}, nil
}

func TestWatchLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	one := []*api.ServiceEntry{entry("a", "n", "10.0.0.1", "", 80, api.HealthPassing)}
	two := append(one, entry("b", "n", "10.0.0.1", "", 81, api.HealthPassing))
	src := &fakeHealth{answers: []fakeAnswer{
		{entries: one, index: 5},
		{entries: one, index: 6},  // same set: no update
		{err: errors.New("boom")}, // error: no update, backoff
		{entries: two, index: 8},  // change: update
		{entries: two, index: 3},  // backwards: reset to 0, same set
		{entries: nil, index: 4},  // empty: update
	}}
	var mu sync.Mutex
	var updates [][]lb.Instance
	w, err := newWatcher(src, WatchConfig{Service: "web", MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}, func(in []lb.Instance) {
		mu.Lock()
		updates = append(updates, in)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	for {
		mu.Lock()
		n := len(updates)
		mu.Unlock()
		if n == 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("only %d updates", n)
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if len(updates[0]) != 1 || len(updates[1]) != 2 || len(updates[2]) != 0 {
		t.Errorf("updates have sizes %d, %d, %d; want 1, 2, 0", len(updates[0]), len(updates[1]), len(updates[2]))
	}
	wantWaits := []uint64{0, 5, 6, 6, 8, 0}
	for i, want := range wantWaits {
		if src.waited[i] != want {
			t.Errorf("query %d waited on index %d, want %d (all: %v)", i, src.waited[i], want, src.waited)
		}
	}
	st := w.Status()
	if st.Errors != 1 || st.Index != 4 || st.LastSuccess.IsZero() {
		t.Errorf("status %+v, want 1 error, index 4", st)
	}
}

func FuzzInstances(f *testing.F) {
	seed, _ := json.Marshal([]*api.ServiceEntry{entry("a", "n", "10.0.0.1", "", 80, api.HealthPassing)})
	f.Add(seed)
	f.Add([]byte(`[{"Node":{"Address":""},"Service":{"ID":"x","Port":70000}}]`))
	f.Add([]byte(`[{"Service":null},null,{"Node":null,"Service":{"ID":"y","Address":"::1","Port":1}}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries []*api.ServiceEntry
		if json.Unmarshal(data, &entries) != nil {
			return
		}
		for _, in := range Instances(entries, nil) {
			if in.Port < 1 || in.Port > 65535 || in.Weight < 1 || !validAddress(in.Address) || in.HostPort == "" {
				t.Fatalf("invalid instance %+v from %s", in, data)
			}
		}
	})
}
