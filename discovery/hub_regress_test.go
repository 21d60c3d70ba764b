package discovery

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/lb"
)

// hubPools runs a Hub over a real Consul and keeps the last pool of every
// service it follows.
type hubPools struct {
	mu    sync.Mutex
	pools map[string][]lb.Instance
	kick  chan struct{}
}

func startRealHub(t *testing.T, ctx context.Context, client *api.Client, names []string) *hubPools {
	t.Helper()
	hp := &hubPools{pools: map[string][]lb.Instance{}, kick: make(chan struct{}, 1)}
	logger := hclog.New(&hclog.LoggerOptions{Name: "watch", Output: tWriter{t}, Level: hclog.Warn})
	// A resync far beyond the test: only the change signals may update
	// the pools.
	hub, err := NewHub(client, HubConfig{QueryInterval: 100 * time.Millisecond, ResyncInterval: time.Hour, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range names {
		if _, err := hub.Add(WatchConfig{Service: s, Logger: logger}, func(p []lb.Instance) {
			hp.mu.Lock()
			hp.pools[s] = p
			hp.mu.Unlock()
			select {
			case hp.kick <- struct{}{}:
			default:
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- hub.Run(hctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
	return hp
}

// ports returns the sorted ports of s's pool.
func (hp *hubPools) ports(s string) []int {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	var out []int
	for _, in := range hp.pools[s] {
		out = append(out, in.Port)
	}
	slices.Sort(out)
	return out
}

// await waits until every service of want has a pool of exactly those
// ports, for at most bound, and says which ones do not.
func (hp *hubPools) await(t *testing.T, ctx context.Context, what string, bound time.Duration, want map[string][]int) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for {
		var bad []string
		for s, ports := range want {
			if got := hp.ports(s); !slices.Equal(got, ports) {
				bad = append(bad, fmt.Sprintf("%s has %v, want %v", s, got, ports))
			}
		}
		if len(bad) == 0 {
			return time.Since(start)
		}
		slices.Sort(bad)
		select {
		case <-hp.kick:
		case <-deadline.C:
			t.Fatalf("%s: %d pools not updated within %v: %s", what, len(bad), bound, strings.Join(bad[:min(5, len(bad))], "; "))
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		}
	}
}

func regSvc(node, svc, id string, port int, tags ...string) *api.TxnOp {
	return &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node,
		Service: api.AgentService{ID: id, Service: svc, Port: port, Tags: tags}}}
}

// TestHubCatalogChangeBesideAnother is the lost update of the bench's
// "1000 services × 10 instances": one catalog change (one transaction,
// one index) both names a service (it appears, disappears or changes
// tags) and changes instances of another, without checks. The answer of
// /v1/catalog/services shows only the first; the second must still be
// read, by the full pass.
func TestHubCatalogChangeBesideAnother(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := consultest.New(t)
	reg := srv.Client()
	const node = "regress-a"
	hubTxn(t, reg, api.TxnOps{
		{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: node, Address: "127.0.0.2"}}},
		regSvc(node, "x1", "x1-1", 1001),
		regSvc(node, "x2", "x2-1", 2001),
		regSvc(node, "y2", "y2-1", 2101, "v1"),
		regSvc(node, "x3", "x3-1", 3001),
		regSvc(node, "y3", "y3-1", 3101),
	})
	hp := startRealHub(t, ctx, srv.Client(), []string{"x1", "y1", "x2", "y2", "x3", "y3"})
	hp.await(t, ctx, "initial load", 10*time.Second, map[string][]int{
		"x1": {1001}, "y1": nil, "x2": {2001}, "y2": {2101}, "x3": {3001}, "y3": {3101}})

	tests := []struct {
		name string
		ops  api.TxnOps
		want map[string][]int
	}{
		{"a service appears and another gains an instance", api.TxnOps{
			regSvc(node, "y1", "y1-1", 1101),
			regSvc(node, "x1", "x1-2", 1002),
		}, map[string][]int{"y1": {1101}, "x1": {1001, 1002}}},
		{"a service changes tags and another's port changes", api.TxnOps{
			regSvc(node, "y2", "y2-1", 2101, "v2"),
			regSvc(node, "x2", "x2-1", 2002),
		}, map[string][]int{"y2": {2101}, "x2": {2002}}},
		{"a service disappears and another gains an instance", api.TxnOps{
			{Service: &api.ServiceTxnOp{Verb: api.ServiceDelete, Node: node, Service: api.AgentService{ID: "y3-1", Service: "y3"}}},
			regSvc(node, "x3", "x3-2", 3002),
		}, map[string][]int{"y3": nil, "x3": {3001, 3002}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hubTxn(t, reg, tt.ops)
			// A full pass comes at most fullPassGap after the change.
			took := hp.await(t, ctx, tt.name, fullPassGap+4*time.Second, tt.want)
			t.Logf("MEASURE pools updated in %v", took.Round(time.Millisecond))
		})
	}
}

// TestHubBulkRegistration registers services of ten instances without
// checks in transactions of 64 operations while the hub runs, as the
// bench does: most transactions end in the middle of a service, whose
// remaining instances come with the next one beside services that
// appear. Every pool must hold all its instances soon after the last
// write. Three rounds, on fresh services each.
func TestHubBulkRegistration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := consultest.New(t)
	reg := srv.Client()
	const (
		rounds  = 3
		perRun  = 150
		perSvc  = 10
		perNode = 100
	)
	name := func(r, i int) string { return fmt.Sprintf("r%d-s%03d", r, i) }
	var all []string
	for r := range rounds {
		for i := range perRun {
			all = append(all, name(r, i))
		}
	}
	hp := startRealHub(t, ctx, srv.Client(), all)
	// The hub has read every (empty) service once.
	empty := map[string][]int{}
	for _, s := range all {
		empty[s] = nil
	}
	hp.await(t, ctx, "initial load", 10*time.Second, empty)

	for r := range rounds {
		t.Run(fmt.Sprintf("round %d", r), func(t *testing.T) {
			var ops api.TxnOps
			want := map[string][]int{}
			for k := range perRun * perSvc {
				if k%perNode == 0 {
					ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet,
						Node: api.Node{Node: fmt.Sprintf("bulk-%d-%02d", r, k/perNode), Address: fmt.Sprintf("10.%d.%d.1", r, k/perNode)}}})
				}
			}
			for k := range perRun * perSvc {
				s, j := name(r, k/perSvc), k%perSvc
				ops = append(ops, regSvc(fmt.Sprintf("bulk-%d-%02d", r, k/perNode), s, fmt.Sprintf("%s-%d", s, j), 10000+j))
				want[s] = append(want[s], 10000+j)
			}
			hubTxn(t, reg, ops)
			took := hp.await(t, ctx, "bulk registration", fullPassGap+4*time.Second, want)
			t.Logf("MEASURE %d services × %d instances: every pool complete %v after the last write",
				perRun, perSvc, took.Round(time.Millisecond))
		})
	}
}

// gatedDC holds the hub's reads of a fakeDC after they took their answer,
// while gate is set, and tells the test each poll of the health state.
type gatedDC struct {
	*fakeDC
	mu     sync.Mutex
	gate   chan struct{}
	taken  chan string // a held read took its answer
	states chan uint64 // WaitIndex of each State poll
}

func (g *gatedDC) Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	entries, meta, err := g.fakeDC.Service(service, tag, passingOnly, q)
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.taken <- service
		select {
		case <-gate:
		case <-q.Context().Done():
			return nil, nil, q.Context().Err()
		}
	}
	return entries, meta, err
}

func (g *gatedDC) State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	select {
	case g.states <- q.WaitIndex:
	case <-q.Context().Done():
		return nil, nil, q.Context().Err()
	}
	return g.fakeDC.State(state, q)
}

// TestHubNodeCheckDuringRead: a node's own check changes while a read of a
// service is in flight whose answer, taken before the change, shows a new
// instance on that node; the service's last recorded read had no instance
// there, so the node change makes nothing dirty. The read in flight must
// be made again, or the pool keeps the instance as it was before the
// change. (The registration's own signals were all taken while the
// service waited in the queue: the fake's write below moves no catalog
// index.)
func TestHubNodeCheckDuringRead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dc := newFakeDC()
	entry := func(node, id, status string) *api.ServiceEntry {
		return &api.ServiceEntry{Node: &api.Node{Node: node, Address: "10.0.0.1"},
			Service: &api.AgentService{ID: id, Service: "web", Address: "10.0.1." + id[len(id)-1:], Port: 8080},
			Checks:  api.HealthChecks{nodeCheck(node, status, dc.index+1)}}
	}
	dc.writeCatalog(func() {
		dc.checks = api.HealthChecks{nodeCheck("n1", api.HealthPassing, dc.index+1), nodeCheck("n2", api.HealthPassing, dc.index+1),
			svcCheck("n1", "web", "web-1", api.HealthPassing, dc.index+1)}
		dc.services["web"] = nil
		dc.entries["web"] = []*api.ServiceEntry{entry("n1", "web-1", api.HealthPassing)}
	})
	g := &gatedDC{fakeDC: dc, taken: make(chan string, 16), states: make(chan uint64, 64)}
	updates := make(chan []lb.Instance, 16)
	hub, err := newHub(g, g, dc, HubConfig{QueryInterval: time.Microsecond, ResyncInterval: time.Hour,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hub.Add(WatchConfig{Service: "web"}, func(p []lb.Instance) { updates <- p }); err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- hub.Run(hctx) }()
	defer func() {
		hcancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	}()
	next := func(what string) []lb.Instance {
		t.Helper()
		select {
		case p := <-updates:
			return p
		case <-ctx.Done():
			t.Fatalf("no update: %s", what)
			return nil
		}
	}
	if p := next("initial load"); len(p) != 1 {
		t.Fatalf("initial pool %v, want web-1", p)
	}

	// web-2 registers on n2 with a check of its own: the state poll names
	// web, whose read takes its answer and is held.
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	dc.write(func() {
		dc.checks = append(dc.checks, svcCheck("n2", "web", "web-2", api.HealthPassing, dc.index+1))
		dc.entries["web"] = append(dc.entries["web"], entry("n2", "web-2", api.HealthPassing))
	})
	select {
	case <-g.taken:
	case <-ctx.Done():
		t.Fatal("web was not read after its new check")
	}
	g.mu.Lock()
	g.gate = nil // the next reads pass
	g.mu.Unlock()

	// n2 fails while that read is held.
	dc.write(func() {
		for _, c := range dc.checks {
			if c.Node == "n2" && c.ServiceID == "" {
				c.Status, c.ModifyIndex = api.HealthCritical, dc.index+1
			}
		}
		dc.entries["web"][1] = entry("n2", "web-2", api.HealthCritical)
	})
	dc.mu.Lock()
	failedAt := dc.index
	dc.mu.Unlock()
	// The state poll blocks on the failure's index only once the hub's
	// loop has taken the answer that shows it.
	for idx := uint64(0); idx < failedAt; {
		select {
		case idx = <-g.states:
		case <-ctx.Done():
			t.Fatal("the hub never took the answer showing n2 failed")
		}
	}
	close(gate)

	if p := next("the held read"); len(p) != 2 {
		t.Fatalf("pool from the held read %v, want web-1 and web-2 (n2 passing when it was read)", p)
	}
	// Nothing else changes: only a read made again can bring the pool
	// without web-2.
	select {
	case p := <-updates:
		if len(p) != 1 || p[0].ID != "web-1" {
			t.Errorf("pool %v, want only web-1 (n2 failed)", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("web-2 stays in the pool although its node failed while web was read")
	}
}
