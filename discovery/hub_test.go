package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// fakeDC is a tiny Consul for the hub: one raft index, the checks, the
// catalog's service names and each service's health entries. Its long
// polls block like Consul's (until the index passes WaitIndex, the wait
// ends or the context is done), and it counts service reads.
type fakeDC struct {
	mu       sync.Mutex
	index    uint64
	catIndex uint64        // index of the catalog's services table only
	changed  chan struct{} // closed and replaced on every write
	checks   api.HealthChecks
	services map[string][]string
	entries  map[string][]*api.ServiceEntry
	pollErr  error // answered by both long polls while set
	readErr  map[string]error

	reads       map[string]int
	inflight    int
	maxInflight int
	hold        chan struct{} // when not nil, reads wait for it to close
}

func newFakeDC() *fakeDC {
	return &fakeDC{index: 1, catIndex: 1, changed: make(chan struct{}), services: map[string][]string{},
		entries: map[string][]*api.ServiceEntry{}, readErr: map[string]error{}, reads: map[string]int{}}
}

// write changes checks under the lock and moves the index; writeCatalog
// also moves the catalog's, as registering or changing an instance does.
func (f *fakeDC) write(change func()) { f.doWrite(false, change) }

func (f *fakeDC) writeCatalog(change func()) { f.doWrite(true, change) }

func (f *fakeDC) doWrite(catalog bool, change func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change()
	f.index++
	if catalog {
		f.catIndex = f.index
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// setService registers svc with instances on port, one per node, each
// with a check of the given status.
func (f *fakeDC) setService(svc, status string, nodes ...string) {
	var es []*api.ServiceEntry
	var checks api.HealthChecks
	for _, c := range f.checks {
		if c.ServiceName != svc {
			checks = append(checks, c)
		}
	}
	for i, n := range nodes {
		id := fmt.Sprintf("%s-%d", svc, i)
		c := &api.HealthCheck{Node: n, CheckID: "service:" + id, ServiceID: id, ServiceName: svc, Status: status, ModifyIndex: f.index + 1}
		checks = append(checks, c)
		es = append(es, &api.ServiceEntry{
			Node:    &api.Node{Node: n, Address: "10.0.0.1"},
			Service: &api.AgentService{ID: id, Service: svc, Address: "10.0.0." + fmt.Sprint(i+1), Port: 8080},
			Checks:  api.HealthChecks{c},
		})
	}
	f.checks = checks
	f.entries[svc] = es
	if _, ok := f.services[svc]; !ok {
		f.services[svc] = nil
	}
}

func (f *fakeDC) wait(q *api.QueryOptions, catalog bool) (uint64, error) {
	ctx := q.Context()
	for {
		f.mu.Lock()
		idx, ch, perr := f.index, f.changed, f.pollErr
		if catalog {
			idx = f.catIndex
		}
		f.mu.Unlock()
		if perr != nil {
			return 0, perr
		}
		if q.WaitIndex == 0 || idx > q.WaitIndex {
			return idx, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (f *fakeDC) State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	if state != api.HealthAny {
		return nil, nil, fmt.Errorf("fake: state %q, want any", state)
	}
	idx, err := f.wait(q, false)
	if err != nil {
		return nil, nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(api.HealthChecks, len(f.checks))
	for i, c := range f.checks {
		cp := *c
		out[i] = &cp
	}
	return out, &api.QueryMeta{LastIndex: idx}, nil
}

func (f *fakeDC) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	idx, err := f.wait(q, true)
	if err != nil {
		return nil, nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.services), &api.QueryMeta{LastIndex: idx}, nil
}

func (f *fakeDC) Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if q.WaitIndex != 0 {
		return nil, nil, errors.New("fake: the hub's reads must not block")
	}
	f.mu.Lock()
	f.reads[service]++
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	hold := f.hold
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	if hold != nil {
		select {
		case <-hold:
		case <-q.Context().Done():
			return nil, nil, q.Context().Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.readErr[service]; err != nil {
		return nil, nil, err
	}
	// Copies, as a real client decodes fresh ones: the test changes the
	// originals later.
	var out []*api.ServiceEntry
	for _, e := range f.entries[service] {
		n, sv := *e.Node, *e.Service
		cp := &api.ServiceEntry{Node: &n, Service: &sv}
		for _, c := range e.Checks {
			cc := *c
			cp.Checks = append(cp.Checks, &cc)
		}
		out = append(out, cp)
	}
	return out, &api.QueryMeta{LastIndex: f.index}, nil
}

func (f *fakeDC) readCounts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.reads)
}

// hubHarness runs a hub over a fakeDC; updates arrive per service.
type hubHarness struct {
	t       *testing.T
	ctx     context.Context
	dc      *fakeDC
	hub     *Hub
	ws      map[string]*Watcher
	updates chan hubUpdate
	logs    *lockedBuffer
}

type hubUpdate struct {
	service string
	pool    []lb.Instance
}

func startHub(t *testing.T, dc *fakeDC, cfg HubConfig, services ...string) *hubHarness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	h := &hubHarness{t: t, ctx: ctx, dc: dc, ws: map[string]*Watcher{}, updates: make(chan hubUpdate, 1000), logs: &lockedBuffer{}}
	log := hclog.New(&hclog.LoggerOptions{Name: "watch", Output: h.logs, Level: hclog.Debug})
	cfg.Logger = log
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = time.Millisecond, 5*time.Millisecond
	}
	if cfg.QueryInterval == 0 {
		cfg.QueryInterval = time.Microsecond
	}
	hub, err := newHub(dc, dc, dc, cfg)
	if err != nil {
		t.Fatalf("newHub: %v", err)
	}
	h.hub = hub
	for _, s := range services {
		w, err := hub.Add(WatchConfig{Service: s, Logger: log}, func(p []lb.Instance) { h.updates <- hubUpdate{s, p} })
		if err != nil {
			t.Fatalf("Add(%s): %v", s, err)
		}
		h.ws[s] = w
	}
	done := make(chan error, 1)
	go func() { done <- hub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
	return h
}

// await collects updates until every service in want has had one
// satisfying it, and returns the services updated meanwhile.
func (h *hubHarness) await(want map[string]func([]lb.Instance) bool) map[string]int {
	h.t.Helper()
	got := map[string]int{}
	left := maps.Clone(want)
	for len(left) > 0 {
		select {
		case u := <-h.updates:
			got[u.service]++
			if ok := left[u.service]; ok != nil && ok(u.pool) {
				delete(left, u.service)
			}
		case <-h.ctx.Done():
			h.t.Fatalf("no expected update for %v before the deadline", keys(left))
		}
	}
	return got
}

// settle waits until the hub has no read queued, in flight or backing off,
// so a step counts only the reads its own change causes (a read marked
// again while in flight runs once more after the update it delivered).
func (h *hubHarness) settle() {
	h.t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for h.hub.busy.Load() {
		select {
		case <-tick.C:
		case <-h.ctx.Done():
			h.t.Fatal("the hub's reads never settled")
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func poolLen(n int) func([]lb.Instance) bool {
	return func(p []lb.Instance) bool { return len(p) == n }
}

func TestHubReadsOnlyWhatChanged(t *testing.T) {
	dc := newFakeDC()
	var names []string
	for i := range 20 {
		s := fmt.Sprintf("s%02d", i)
		names = append(names, s)
		dc.writeCatalog(func() { dc.setService(s, api.HealthPassing, "n1", "n2") })
	}
	dc.write(func() {
		dc.checks = append(dc.checks, nodeCheck("n1", api.HealthPassing, dc.index), nodeCheck("n2", api.HealthPassing, dc.index),
			nodeCheck("n3", api.HealthPassing, dc.index))
	})
	dc.writeCatalog(func() { dc.setService("lonely", api.HealthPassing, "n3") })
	names = append(names, "lonely")
	h := startHub(t, dc, HubConfig{Concurrency: 3}, names...)

	want := map[string]func([]lb.Instance) bool{}
	for _, s := range names {
		want[s] = poolLen(2)
	}
	want["lonely"] = poolLen(1)
	h.await(want)
	// Reads wait for both polls' first answers, which both ask for
	// everything: each service was read once, never more than Concurrency
	// at once.
	for s, n := range dc.readCounts() {
		if n != 1 {
			t.Errorf("initial reads of %s = %d, want 1", s, n)
		}
	}
	if m := dc.maxInflight; m > 3 {
		t.Errorf("%d reads in flight at once, want at most the concurrency, 3", m)
	}

	steps := []struct {
		name      string
		change    func()
		want      map[string]func([]lb.Instance) bool
		wantReads []string
	}{
		{"one service's instance goes critical", func() {
			c := dc.entries["s07"][1].Checks[0]
			c.Status, c.ModifyIndex = api.HealthCritical, dc.index+1
		}, map[string]func([]lb.Instance) bool{"s07": poolLen(1)}, []string{"s07"}},
		{"a node fails: only the services on it", func() {
			for _, c := range dc.checks {
				if c.Node == "n3" && c.ServiceID == "" {
					c.Status, c.ModifyIndex = api.HealthCritical, dc.index+1
				}
			}
			dc.entries["lonely"][0].Checks = api.HealthChecks{nodeCheck("n3", api.HealthCritical, dc.index+1)}
		}, map[string]func([]lb.Instance) bool{"lonely": poolLen(0)}, []string{"lonely"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.settle()
			before := dc.readCounts()
			dc.write(st.change)
			h.await(st.want)
			// Reads of other services would have happened before the
			// update: the hub reads everything dirty in one round.
			after := dc.readCounts()
			var reread []string
			for _, s := range names {
				if after[s] != before[s] {
					reread = append(reread, s)
				}
			}
			if strings.Join(reread, ",") != strings.Join(st.wantReads, ",") {
				t.Errorf("services read again: %v, want %v", reread, st.wantReads)
			}
		})
	}

	t.Run("a catalog change no check explains reads every service", func(t *testing.T) {
		before := dc.readCounts()
		dc.writeCatalog(func() {
			dc.entries["s03"] = append(dc.entries["s03"], &api.ServiceEntry{Node: &api.Node{Node: "n9"},
				Service: &api.AgentService{ID: "s03-nocheck", Service: "s03", Address: "10.0.0.9", Port: 8080}})
		})
		h.await(map[string]func([]lb.Instance) bool{"s03": poolLen(3)})
		deadline := time.Now().Add(10 * time.Second)
		for {
			after := dc.readCounts()
			missing := 0
			for _, s := range names {
				if after[s] == before[s] {
					missing++
				}
			}
			if missing == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d services not read again after an unexplained catalog change", missing)
			}
			time.Sleep(10 * time.Millisecond) // polling a counter, not hiding a race
		}
	})
}

func TestHubConsulDown(t *testing.T) {
	dc := newFakeDC()
	dc.writeCatalog(func() { dc.setService("web", api.HealthPassing, "n1") })
	h := startHub(t, dc, HubConfig{}, "web")
	h.await(map[string]func([]lb.Instance) bool{"web": poolLen(1)})

	dc.write(func() { dc.pollErr = errors.New("connection refused") })
	waitStatus(t, h.ctx, h.ws["web"], "an error while the polls fail", func(s WatchStatus) bool {
		return s.LastError != nil && strings.Contains(s.LastError.Error(), "connection refused") && !s.DownSince.IsZero()
	})
	if n := h.logs.count("cannot follow the datacenter's changes"); n < 1 {
		t.Errorf("hub logged the outage %d times, want at least once", n)
	}

	// Consul comes back with the instance gone; the hub reads afresh.
	dc.writeCatalog(func() {
		dc.pollErr = nil
		dc.setService("web", api.HealthPassing)
	})
	h.await(map[string]func([]lb.Instance) bool{"web": poolLen(0)})
	waitStatus(t, h.ctx, h.ws["web"], "no error once Consul answers", func(s WatchStatus) bool {
		return s.LastError == nil && s.DownSince.IsZero() && s.Errors > 0
	})
	if n := h.logs.count("consul answers again: following the datacenter's changes"); n < 1 {
		t.Errorf("hub logged the recovery %d times, want at least once", n)
	}
}

func TestHubReadFailureRetries(t *testing.T) {
	dc := newFakeDC()
	dc.writeCatalog(func() {
		dc.setService("web", api.HealthPassing, "n1")
		dc.readErr["web"] = api.StatusError{Code: 403, Body: "Permission denied"}
	})
	h := startHub(t, dc, HubConfig{}, "web")
	waitStatus(t, h.ctx, h.ws["web"], "the ACL error of the read", func(s WatchStatus) bool {
		return s.LastError != nil && IsACLError(s.LastError) && s.Errors >= 2 // retried
	})
	dc.mu.Lock()
	delete(dc.readErr, "web")
	dc.mu.Unlock()
	h.await(map[string]func([]lb.Instance) bool{"web": poolLen(1)})
	if n := h.logs.count("consul refused the token (ACL): reading health of service"); n < 1 {
		t.Errorf("ACL refusal logged %d times, want at least once", n)
	}
}

func TestHubConfig(t *testing.T) {
	dc := newFakeDC()
	tests := []struct {
		name string
		cfg  HubConfig
		want string
	}{
		{"negative concurrency", HubConfig{Concurrency: -1}, "invalid hub concurrency -1"},
		{"wait above Consul's cap", HubConfig{WaitTime: time.Hour}, "invalid hub wait time 1h0m0s"},
		{"backoff upside down", HubConfig{MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "invalid hub backoff"},
		{"negative resync", HubConfig{ResyncInterval: -time.Second}, "invalid hub resync interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newHub(dc, dc, dc, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("newHub error %v, want one containing %q", err, tt.want)
			}
		})
	}
	t.Run("service in another datacenter", func(t *testing.T) {
		hub, err := newHub(dc, dc, dc, HubConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hub.Add(WatchConfig{Service: "web", Datacenter: "dc2"}, func([]lb.Instance) {}); err == nil ||
			!strings.Contains(err.Error(), `datacenter "dc2"`) {
			t.Errorf("Add error %v, want one naming dc2", err)
		}
	})
	t.Run("fed watcher refuses to run", func(t *testing.T) {
		hub, err := newHub(dc, dc, dc, HubConfig{})
		if err != nil {
			t.Fatal(err)
		}
		w, err := hub.Add(WatchConfig{Service: "web"}, func([]lb.Instance) {})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := w.Run(ctx); err == nil || !strings.Contains(err.Error(), "fed by a hub") {
			t.Errorf("Run error %v, want one saying the watcher is fed by a hub", err)
		}
	})
}

// waitStatus polls w.Status until ok or the context ends.
func waitStatus(t *testing.T, ctx context.Context, w *Watcher, what string, ok func(WatchStatus) bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if ok(w.Status()) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no status with %s before the deadline; last %+v", what, w.Status())
		case <-tick.C:
		}
	}
}

// TestHubFailedChecks: a watcher fed by the hub reports the same failed
// instances as one that polls on its own (failedInAnswer): a check failed,
// not a drain.
func TestHubFailedChecks(t *testing.T) {
	dc := newFakeDC()
	dc.writeCatalog(func() { dc.setService("web", api.HealthPassing, "n1", "n2", "n3") })
	h := startHub(t, dc, HubConfig{}, "web")
	h.await(map[string]func([]lb.Instance) bool{"web": poolLen(3)})
	if f := h.ws["web"].Failed(); len(f) != 0 {
		t.Fatalf("Failed = %v with every check passing", f)
	}
	dc.write(func() {
		es := dc.entries["web"]
		es[0].Checks[0].Status, es[0].Checks[0].Output = api.HealthCritical, DrainNote+": registrar received a stop signal"
		es[1].Checks[0].Status, es[1].Checks[0].Output = api.HealthCritical, "TTL expired"
		es[0].Checks[0].ModifyIndex, es[1].Checks[0].ModifyIndex = dc.index+1, dc.index+1
	})
	h.await(map[string]func([]lb.Instance) bool{"web": poolLen(1)})
	want := map[string]bool{"web-1": true, "web-1@n2": true}
	if got := h.ws["web"].Failed(); !maps.Equal(got, want) {
		t.Errorf("Failed = %v, want %v (web-0 drains, web-1's check failed)", got, want)
	}
}
