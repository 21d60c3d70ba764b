package discovery

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/lb"
)

// connCounter counts the TCP connections a client holds open to Consul.
type connCounter struct {
	open, peak, dials atomic.Int64
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.c.open.Add(-1) })
	return c.Conn.Close()
}

func (c *connCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.dials.Add(1)
	n := c.open.Add(1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
	return &countedConn{Conn: conn, c: c}, nil
}

// countingHealth counts the hub's reads per service, and apart the probes
// of its full passes (which ask only for the service's index).
type countingHealth struct {
	healthSource
	mu     sync.Mutex
	reads  map[string]int
	probes int
}

func (h *countingHealth) Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	h.mu.Lock()
	if q.Filter == probeFilter {
		h.probes++
	} else {
		h.reads[service]++
	}
	h.mu.Unlock()
	return h.healthSource.Service(service, tag, passingOnly, q)
}

func (h *countingHealth) counts() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.reads))
	for k, v := range h.reads {
		out[k] = v
	}
	return out
}

func hubTxn(t *testing.T, c *api.Client, ops api.TxnOps) {
	t.Helper()
	for len(ops) > 0 {
		n := min(64, len(ops)) // Consul takes at most 128 per transaction
		ok, resp, _, err := c.Txn().Txn(ops[:n], nil)
		if err != nil {
			t.Fatalf("consul txn: %v", err)
		}
		if !ok {
			t.Fatalf("consul txn rolled back: %+v", resp.Errors)
		}
		ops = ops[n:]
	}
}

func TestHubIntegration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := consultest.New(t)
	reg := srv.Client()

	const services = 300
	const bound = 32 // connections to Consul, whatever the number of services
	// Services s000..s149 on node hub-a, each instance with a service
	// check; s150..s299 on node hub-b without checks, hub-b with a node
	// check of its own (as serfHealth would be).
	name := func(i int) string { return fmt.Sprintf("s%03d", i) }
	ops := api.TxnOps{
		{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: "hub-a", Address: "127.0.0.2"}}},
		{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: "hub-b", Address: "127.0.0.3"}}},
		{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{Node: "hub-b", CheckID: "node-alive", Name: "node alive", Status: api.HealthPassing}}},
	}
	var names []string
	for i := range services {
		s := name(i)
		names = append(names, s)
		node := "hub-a"
		if i >= services/2 {
			node = "hub-b"
		}
		ops = append(ops, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node,
			Service: api.AgentService{ID: s + "-1", Service: s, Port: 8000 + i}}})
		if node == "hub-a" {
			ops = append(ops, &api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: node, CheckID: s + "-1:alive", Name: "alive", Status: api.HealthPassing, ServiceID: s + "-1", ServiceName: s}}})
		}
	}
	hubTxn(t, reg, ops)

	// The client as the agent makes it: transport sized for the watchers
	// (which must not matter: the hub bounds its requests itself).
	var conns connCounter
	cfg := api.DefaultConfig()
	cfg.Address = srv.HTTPAddr
	ConfigureTransport(cfg, services)
	cfg.Transport.DialContext = conns.dial
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	health := &countingHealth{healthSource: client.Health(), reads: map[string]int{}}
	logger := hclog.New(&hclog.LoggerOptions{Name: "watch", Output: tWriter{t}, Level: hclog.Info})
	hub, err := newHub(health, client.Health(), client.Catalog(), HubConfig{QueryInterval: 100 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		pools = map[string][]lb.Instance{}
		kick  = make(chan struct{}, 1)
	)
	watchers := map[string]*Watcher{}
	for _, s := range names {
		w, err := hub.Add(WatchConfig{Service: s, Logger: logger}, func(p []lb.Instance) {
			mu.Lock()
			pools[s] = p
			mu.Unlock()
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		watchers[s] = w
	}
	hctx, hcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- hub.Run(hctx) }()
	t.Cleanup(func() {
		hcancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})

	// waitPools waits until ok holds for every service's pool.
	waitPools := func(t *testing.T, what string, ok func(svc string, p []lb.Instance, seen bool) bool) {
		t.Helper()
		for {
			mu.Lock()
			bad := ""
			for _, s := range names {
				p, seen := pools[s]
				if !ok(s, p, seen) {
					bad = s
					break
				}
			}
			mu.Unlock()
			if bad == "" {
				return
			}
			select {
			case <-kick:
			case <-time.After(100 * time.Millisecond): // ok may depend on nothing new
			case <-ctx.Done():
				t.Fatalf("%s: service %s not there before the deadline", what, bad)
			}
		}
	}
	one := func(s string, p []lb.Instance, seen bool) bool { return seen && len(p) == 1 }
	waitPools(t, "initial load", one)
	t.Logf("MEASURE hub initial load of %d services: %v, %d connections to consul at most, %d dialled",
		services, time.Since(start).Round(time.Millisecond), conns.peak.Load(), conns.dials.Load())
	if st := watchers["s042"].Status(); st.LastSuccess.IsZero() || st.Instances != 1 || st.Index == 0 || st.LastError != nil {
		t.Errorf("status of s042 %+v: want a success with 1 instance and an index", st)
	}

	// rereads returns the services read since before.
	rereads := func(before map[string]int) []string {
		var out []string
		after := health.counts()
		for _, s := range names {
			if after[s] != before[s] {
				out = append(out, s)
			}
		}
		return out
	}
	// settle waits until the hub has no read queued, in flight or
	// waiting (a full pass waiting for its gap included) and none happened
	// for a moment: a late full pass would otherwise be counted in the
	// next step.
	settle := func() map[string]int {
		last := health.counts()
		for {
			select {
			case <-time.After(300 * time.Millisecond):
			case <-ctx.Done():
				t.Fatal("reads never settled")
			}
			cur := health.counts()
			if !hub.busy.Load() && fmt.Sprint(cur) == fmt.Sprint(last) {
				return cur
			}
			last = cur
		}
	}

	t.Run("a check change re-reads only its service", func(t *testing.T) {
		before := settle()
		at := time.Now()
		hubTxn(t, reg, api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
			Node: "hub-a", CheckID: "s007-1:alive", Name: "alive", Status: api.HealthCritical, ServiceID: "s007-1", ServiceName: "s007"}}}})
		waitPools(t, "s007 empty", func(s string, p []lb.Instance, _ bool) bool { return s != "s007" || len(p) == 0 })
		t.Logf("MEASURE hub: one check critical → pool updated in %v", time.Since(at).Round(time.Millisecond))
		if got := rereads(before); !slices.Equal(got, []string{"s007"}) {
			t.Errorf("services read again: %v, want only s007", got)
		}
	})

	t.Run("a node check change re-reads the services on that node", func(t *testing.T) {
		before := settle()
		at := time.Now()
		hubTxn(t, reg, api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
			Node: "hub-b", CheckID: "node-alive", Name: "node alive", Status: api.HealthCritical}}}})
		waitPools(t, "hub-b's services empty", func(s string, p []lb.Instance, _ bool) bool {
			return s < name(services/2) || len(p) == 0
		})
		t.Logf("MEASURE hub: node check critical → %d pools updated in %v", services/2, time.Since(at).Round(time.Millisecond))
		got := rereads(before)
		if len(got) != services/2 || got[0] != name(services/2) {
			t.Errorf("services read again: %d from %v, want the %d on hub-b", len(got), got[:min(3, len(got))], services/2)
		}
	})

	t.Run("an instance without checks is seen through the catalog", func(t *testing.T) {
		settle()
		at := time.Now()
		hubTxn(t, reg, api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: "hub-a",
			Service: api.AgentService{ID: "s250-2", Service: "s250", Port: 9250}}}})
		waitPools(t, "s250 with its new instance", func(s string, p []lb.Instance, _ bool) bool {
			return s != "s250" || (len(p) == 1 && p[0].ID == "s250-2")
		})
		t.Logf("MEASURE hub: check-less instance registered → pool updated in %v (full pass of %d services)",
			time.Since(at).Round(time.Millisecond), services)
	})

	t.Run("a catalog change reads only the service it changed", func(t *testing.T) {
		before := settle()
		health.mu.Lock()
		probes := health.probes
		health.mu.Unlock()
		at := time.Now()
		// A new port, nothing else: no check changes, no tag changes, so
		// only the full pass can find it, and its probes say where.
		hubTxn(t, reg, api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: "hub-a",
			Service: api.AgentService{ID: "s042-1", Service: "s042", Port: 9042}}}})
		waitPools(t, "s042 on its new port", func(s string, p []lb.Instance, _ bool) bool {
			return s != "s042" || (len(p) == 1 && p[0].Port == 9042)
		})
		took := time.Since(at)
		settle()
		health.mu.Lock()
		probes = health.probes - probes
		health.mu.Unlock()
		t.Logf("MEASURE hub: a port changed → pool updated in %v; %d probes", took.Round(time.Millisecond), probes)
		if got := rereads(before); !slices.Equal(got, []string{"s042"}) {
			t.Errorf("services read again: %v, want only s042", got)
		}
		if probes < services {
			t.Errorf("%d probes, want one per service (%d) at least", probes, services)
		}
	})

	t.Logf("MEASURE hub connections to consul: peak %d open, %d dialled in all (bound %d, %d services)",
		conns.peak.Load(), conns.dials.Load(), bound, services)
	if p := conns.peak.Load(); p > bound {
		t.Errorf("%d connections to consul at once, want at most %d", p, bound)
	}
}
