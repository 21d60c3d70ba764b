package multihost_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/multihost"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

// The topology every test builds: a Consul server, app hosts each running
// a Consul client and two registrar-wrapped Tornado instances on the same
// ports (as separate machines would), an edge host running a Consul client
// and the agent, and a client host with no Consul at all, where the test's
// requests come from.
const (
	service     = "hello"
	serverOctet = 1  // 198.18.0.1
	edgeOctet   = 20 // 198.18.0.20
	clientOctet = 30 // 198.18.0.30
	edgePort    = 8070
	adminAddr   = "127.0.0.1:9070" // the agent's admin listener, on the edge host
)

var (
	appPorts   = []int{8071, 8072}
	hostOctets = map[string]int{"a": 11, "b": 12, "c": 13}
)

var bins struct {
	once  sync.Once
	dir   string
	paths map[string]string
	err   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// binaries builds the agent and the registrar once per test binary.
func binaries(t *testing.T) map[string]string {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "meshlb-multihost-bin-")
		if bins.err == nil {
			bins.paths, bins.err = testproc.Build(bins.dir, "agent", "registrar")
		}
	})
	if bins.err != nil {
		t.Fatalf("building the binaries: %v", bins.err)
	}
	return bins.paths
}

// cluster is a running topology.
type cluster struct {
	net                  *multihost.Net
	bins                 map[string]string
	server, edge, client *multihost.Host
	apps                 []*multihost.Host
	web                  *http.Client // requests from the client host: GETs, with a 2s timeout as impatient clients have
	post                 *http.Client // POSTs from the client host, patient enough to see the agent's answer
	journal              string       // directory of the apps' POST journals
	admin                *http.Client // requests from the edge host to the agent's admin listener
	url                  string
}

// newCluster builds the topology with the named app hosts and waits until
// the edge serves every instance.
func newCluster(t *testing.T, ctx context.Context, appHosts ...string) *cluster {
	t.Helper()
	c := &cluster{bins: binaries(t), net: multihost.New(t), journal: t.TempDir()}
	c.server = c.net.AddHost(t, "server", serverOctet)
	c.edge = c.net.AddHost(t, "edge", edgeOctet)
	c.client = c.net.AddHost(t, "client", clientOctet)
	for _, name := range appHosts {
		c.apps = append(c.apps, c.net.AddHost(t, name, hostOctets[name]))
	}
	c.web = c.client.HTTPClient(2 * time.Second)
	c.post = c.client.HTTPClient(15 * time.Second)
	c.admin = c.edge.HTTPClient(2 * time.Second)
	c.url = fmt.Sprintf("http://%v:%d/", c.edge.Addr, edgePort)

	// Server and clients start together; clients retry the join.
	c.server.StartConsul(t, netip.Addr{})
	nodes := []string{c.server.Hostname}
	for _, h := range append([]*multihost.Host{c.edge}, c.apps...) {
		h.StartConsul(t, c.server.Addr)
		nodes = append(nodes, h.Hostname)
	}
	if err := c.server.WaitConsul(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.server.WaitMembers(ctx, nodes...); err != nil {
		t.Fatal(err)
	}
	for _, h := range append([]*multihost.Host{c.edge}, c.apps...) {
		if err := h.WaitConsul(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range c.apps {
		c.startInstances(t, h)
	}
	c.startAgent(t, ctx)
	want := c.waitInstances(t, ctx, len(appPorts)*len(c.apps), 30*time.Second)
	c.waitServed(t, ctx, want, 30*time.Second)
	return c
}

// startInstances starts one registrar per app port on h, each wrapping a
// Tornado app that listens on the host's address. The registrar talks to
// the host's Consul agent on its default 127.0.0.1:8500 and leaves the
// service address to Consul (the node's address).
func (c *cluster) startInstances(t *testing.T, h *multihost.Host) {
	t.Helper()
	for _, port := range appPorts {
		args := []string{c.bins["registrar"], "--service", service, "--port", strconv.Itoa(port),
			"--probe-host", h.Addr.String(), "--"}
		args = append(args, tornadotest.App(t, port)...)
		args = append(args, "--address="+h.Addr.String(), "--logging=warning",
			fmt.Sprintf("--journal=%s/%s-%d.journal", c.journal, h.Name, port))
		h.Start(t, nil, args...)
	}
}

// startAgent starts the edge agent on the edge host, following its local
// Consul agent (default address) and listening on the edge's address. The
// response header timeout is short so a GET in flight on a connection to a
// host that was just cut off is retried elsewhere within the test's bounds
// (the default, 60s, is nginx's proxy_read_timeout).
func (c *cluster) startAgent(t *testing.T, ctx context.Context) {
	t.Helper()
	cfg := fmt.Sprintf(`admin = %q
proxy {
  response_header_timeout = "2s"
}
service %q {}
listener "web" {
  address = "%v:%d"
  route {
    service = %q
  }
}
`, adminAddr, service, c.edge.Addr, edgePort, service)
	file := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.edge.Start(t, nil, c.bins["agent"], "--config", file)
	waitUntil(t, ctx, 30*time.Second, 50*time.Millisecond, "the agent's /healthz on the edge host", func() bool {
		resp, err := c.admin.Get("http://" + adminAddr + "/healthz")
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// instance is one passing registration as the Consul server sees it.
type instance struct {
	id, node, nodeAddr, svcAddr, metaHost string
	pid                                   int
}

// instances returns the passing instances of the service by app PID.
func (c *cluster) instances() (map[int]instance, error) {
	entries, _, err := c.server.Consul().Health().Service(service, "", true, nil)
	if err != nil {
		return nil, err
	}
	out := map[int]instance{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Service.Meta["pid"])
		if err != nil {
			return nil, fmt.Errorf("instance %s: meta pid %q: %w", e.Service.ID, e.Service.Meta["pid"], err)
		}
		out[pid] = instance{id: e.Service.ID, node: e.Node.Node, nodeAddr: e.Node.Address,
			svcAddr: e.Service.Address, metaHost: e.Service.Meta["host"], pid: pid}
	}
	return out, nil
}

// waitInstances waits until Consul reports n passing instances.
func (c *cluster) waitInstances(t *testing.T, ctx context.Context, n int, timeout time.Duration) map[int]instance {
	t.Helper()
	var got map[int]instance
	waitUntil(t, ctx, timeout, 100*time.Millisecond, fmt.Sprintf("%d passing instances in Consul", n), func() bool {
		m, err := c.instances()
		got = m
		return err == nil && len(m) == n
	})
	return got
}

// waitServed sends requests through the edge until every instance in want
// has answered one.
func (c *cluster) waitServed(t *testing.T, ctx context.Context, want map[int]instance, timeout time.Duration) {
	t.Helper()
	seen := map[int]bool{}
	waitUntil(t, ctx, timeout, 20*time.Millisecond, "every instance served through the edge", func() bool {
		if pid, err := get(ctx, c.web, c.url); err == nil {
			seen[pid] = true
		}
		for pid := range want {
			if !seen[pid] {
				return false
			}
		}
		return true
	})
}

// alive reports whether the Consul server sees node as alive.
func (c *cluster) alive(node string) bool {
	ms, err := c.server.Consul().Agent().Members(false)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Name == node {
			return m.Status == 1 // serf's StatusAlive
		}
	}
	return false
}

// poolSize reads the agent's pool size for the service from its metrics.
func (c *cluster) poolSize() (int, error) {
	v, err := c.metric(fmt.Sprintf("meshlb_pool_instances{service=%q}", service))
	return int(v), err
}

// metric reads one sample of the agent's /metrics, named with its labels
// in Prometheus' text format (labels sorted by name).
func (c *cluster) metric(sample string) (float64, error) {
	resp, err := c.admin.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("sample %s not in the agent's /metrics", sample)
}

func (c *cluster) waitPool(t *testing.T, ctx context.Context, n int, timeout time.Duration, what string) time.Duration {
	t.Helper()
	return waitUntil(t, ctx, timeout, 20*time.Millisecond, what, func() bool {
		size, err := c.poolSize()
		return err == nil && size == n
	})
}

// get sends one GET and returns the PID of the app that answered.
func get(ctx context.Context, client *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	s, ok := strings.CutPrefix(string(body), "Hello from Process Id = ")
	if !ok {
		return 0, fmt.Errorf("unexpected body %q", body)
	}
	return strconv.Atoi(strings.TrimSpace(s))
}

// waitUntil polls cond every interval until it holds, failing the test
// after timeout or when ctx ends; it returns how long it took.
func waitUntil(t *testing.T, ctx context.Context, timeout, every time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-time.After(every):
		}
	}
	return time.Since(start)
}

// slow is how long a GET takes at least when its first attempt went to a
// cut-off host: the agent's connect timeout (1s, its default) or the
// response header timeout (2s, set in startAgent). Normal GETs take
// milliseconds.
const slow = 900 * time.Millisecond

// load sends GETs through the edge from several workers at a steady pace
// and records, per app PID, when it answered.
type load struct {
	stopc chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu     sync.Mutex
	ok     int
	failed int
	errs   []string           // the first failures
	took   []sample           // every successful GET
	busy   map[*int]time.Time // start of each GET in flight
	last   map[int]time.Time  // PID → start of the latest request it answered
	first  map[int]time.Time  // PID → when it first answered
}

func startLoad(ctx context.Context, client *http.Client, url string, workers int, every time.Duration) *load {
	l := &load{stopc: make(chan struct{}), last: map[int]time.Time{}, first: map[int]time.Time{}, busy: map[*int]time.Time{}}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				l.one(ctx, client, url)
				select {
				case <-l.stopc:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return l
}

func (l *load) one(ctx context.Context, client *http.Client, url string) {
	key := new(int)
	start := time.Now()
	l.mu.Lock()
	l.busy[key] = start
	l.mu.Unlock()
	pid, err := get(ctx, client, url)
	end := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.busy, key)
	if err != nil {
		l.failed++
		if len(l.errs) < 10 {
			l.errs = append(l.errs, fmt.Sprintf("%s (%v): %v", start.Format("15:04:05.000"), end.Sub(start).Round(time.Millisecond), err))
		}
		return
	}
	l.ok++
	l.took = append(l.took, sample{start, end.Sub(start)})
	if start.After(l.last[pid]) {
		l.last[pid] = start
	}
	if _, ok := l.first[pid]; !ok {
		l.first[pid] = end
	}
}

// stop stops the workers, letting requests in flight finish. It is
// idempotent.
func (l *load) stop() {
	l.once.Do(func() { close(l.stopc) })
	l.wg.Wait()
}

func (l *load) counts() (ok, failed int, errs []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.failed, append([]string(nil), l.errs...)
}

// doneBefore reports whether every GET started before t has finished.
func (l *load) doneBefore(t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, start := range l.busy {
		if start.Before(t) {
			return false
		}
	}
	return true
}

// sample is one successful GET: when it started and how long it took.
type sample struct {
	start time.Time
	took  time.Duration
}

// slowBetween counts the successful GETs started in [from, to] that took
// at least slow, and returns the longest.
func (l *load) slowBetween(from, to time.Time) (n int, longest time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.took {
		if s.start.Before(from) || s.start.After(to) {
			continue
		}
		if s.took >= slow {
			n++
		}
		longest = max(longest, s.took)
	}
	return n, longest
}

// servedSince reports whether every PID answered a request sent after t0.
func (l *load) servedSince(t0 time.Time, pids ...int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, pid := range pids {
		if !l.last[pid].After(t0) {
			return false
		}
	}
	return true
}

// newPIDs returns the PIDs that answered and are not in known, with when
// each first answered.
func (l *load) newPIDs(known map[int]instance) map[int]time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int]time.Time{}
	for pid, at := range l.first {
		if _, ok := known[pid]; !ok {
			out[pid] = at
		}
	}
	return out
}

func pidsOn(insts map[int]instance, node string) []int {
	var pids []int
	for pid, in := range insts {
		if in.node == node {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// TestMultiHost runs meshlb across hosts: a Consul server, app hosts a and b
// (two instances each, on the same ports), the edge on its own host, and
// the requests coming from a client host. The subtests run in order on the
// same topology, under one steady load from the second on: instances on
// two hosts all served; a host cut off and back (on the bridge side, then
// another one on its own side); a new host added under load.
func TestMultiHost(t *testing.T) {
	binaries(t) // before the clock starts: the first build takes a while
	ctx, cancel := context.WithTimeout(t.Context(), 170*time.Second)
	defer cancel()
	c := newCluster(t, ctx, "a", "b")
	insts, err := c.instances()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("instances on two hosts all served", func(t *testing.T) {
		testAllServed(t, ctx, c, insts)
	})

	l := startLoad(ctx, c.web, c.url, 4, 25*time.Millisecond)
	defer l.stop()
	pl := startPosts(ctx, c.post, c.url+"echo?ms=20", 2, 50*time.Millisecond)
	defer pl.stop()
	type window struct {
		host         string
		down, shrunk time.Time
	}
	var cuts []window
	t0 := time.Now()
	waitUntil(t, ctx, 10*time.Second, 20*time.Millisecond, "every instance served under load",
		func() bool { return l.servedSince(t0, pidList(insts)...) })
	// The cost of hedging on a healthy service: the extra attempts it sends.
	healthy0, _, _ := c.extraAttempts()
	req0, _ := c.metric(fmt.Sprintf("meshlb_retry_budget_requests_total{service=%q}", service))
	okHealthy, _, _ := l.counts()
	waitUntil(t, ctx, 20*time.Second, 20*time.Millisecond, "500 GETs on the healthy service",
		func() bool { ok, _, _ := l.counts(); return ok >= okHealthy+500 })
	healthy1, _, _ := c.extraAttempts()
	req1, _ := c.metric(fmt.Sprintf("meshlb_retry_budget_requests_total{service=%q}", service))
	tt, _ := c.metric(fmt.Sprintf("meshlb_try_timeout_seconds{service=%q}", service))
	t.Logf("MEASURE healthy service: %v hedges for %v requests (%.2f%% added load); per-try timeout %.3fs",
		healthy1-healthy0, req1-req0, 100*(healthy1-healthy0)/max(req1-req0, 1), tt)

	t.Run("host cut off and back", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			host       string
			bridgeSide bool
		}{
			{"bridge side down", "a", true},
			{"host side down", "b", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				down, shrunk := testCutOff(t, ctx, c, l, insts, c.net.Host(tc.host), tc.bridgeSide)
				cuts = append(cuts, window{tc.host, down, shrunk})
			})
		}
	})

	t.Run("stalled instance under load", func(t *testing.T) {
		testStalled(t, ctx, c, l, insts)
	})

	// POSTs stop before the new host comes: its processes end with its
	// subtest, their journals stay.
	pl.stop()
	for _, w := range cuts {
		failed := pl.failedBetween(w.down, w.shrunk)
		var last time.Time
		statuses := map[int]int{}
		for _, o := range failed {
			statuses[o.status]++
			if o.end.After(last) {
				last = o.end
			}
		}
		t.Logf("MEASURE cut host %s: %d POSTs sent while it was cut off and in the pool failed (by status %v); the last failure answered %v after the cut",
			w.host, len(failed), statuses, durSince(w.down, last))
	}
	failedPosts := c.checkPosts(t, pl)
	t.Logf("POSTs: %d sent, %d failed, none ran twice (journals)", len(pl.out), failedPosts)

	t.Run("new host under load", func(t *testing.T) {
		testNewHost(t, ctx, c, l, insts)
	})

	l.stop()
	ok, failed, errs := l.counts()
	t.Logf("load: %d GETs, %d failed", ok+failed, failed)
	if failed != 0 {
		t.Errorf("%d GETs failed in all, want 0; first failures:\n%s", failed, strings.Join(errs, "\n"))
	}
}

// testAllServed checks that instances on two hosts registered with their
// host's address (left to Consul, not loopback, not the registrar's guess)
// and that the edge spreads requests over all of them.
func testAllServed(t *testing.T, ctx context.Context, c *cluster, insts map[int]instance) {
	for _, h := range c.apps {
		pids := pidsOn(insts, h.Hostname)
		if len(pids) != len(appPorts) {
			t.Fatalf("%d passing instances on %s, want %d: %+v", len(pids), h.Hostname, len(appPorts), insts)
		}
		for _, pid := range pids {
			in := insts[pid]
			if in.svcAddr != "" {
				t.Errorf("instance %s registered Service.Address %q; want it left empty so Consul uses the node's address", in.id, in.svcAddr)
			}
			if in.nodeAddr != h.Addr.String() {
				t.Errorf("instance %s is on node address %s, want the host's %v", in.id, in.nodeAddr, h.Addr)
			}
			if in.metaHost != h.Hostname {
				t.Errorf("instance %s has meta host %q, want %q", in.id, in.metaHost, h.Hostname)
			}
		}
	}

	const n = 40
	served := map[int]int{}
	for range n {
		pid, err := get(ctx, c.web, c.url)
		if err != nil {
			t.Fatalf("GET through the edge: %v", err)
		}
		served[pid]++
	}
	t.Logf("%d GETs through the edge, by app PID: %v", n, served)
	for pid, in := range insts {
		// Round robin gives each of the 4 instances 10; 5 leaves room for a
		// pool update in between but not for an instance left out.
		if served[pid] < n/len(insts)/2 {
			t.Errorf("instance %s (pid %d on %s) served %d of %d requests, want about %d", in.id, pid, in.node, served[pid], n, n/len(insts))
		}
	}
	for pid := range served {
		if _, ok := insts[pid]; !ok {
			t.Errorf("pid %d served but is not a passing instance", pid)
		}
	}
}

// testCutOff takes h's link down under load: its instances must leave the
// pool with no GET failing, and serve again once the link is back up. It
// returns when the link went down and when the pool shrank.
func testCutOff(t *testing.T, ctx context.Context, c *cluster, l *load, insts map[int]instance, h *multihost.Host, bridgeSide bool) (down, shrunk time.Time) {
	all := pidList(insts)
	cut := pidsOn(insts, h.Hostname)
	var others []int
	for _, pid := range all {
		if insts[pid].node != h.Hostname {
			others = append(others, pid)
		}
	}
	ok0, failed0, _ := l.counts()

	hedges0, unbudgeted0, refused0 := c.extraAttempts()
	down = time.Now()
	if err := h.SetLink(false, bridgeSide); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.SetLink(true, bridgeSide) }) // if the test stops half-way
	leave := c.waitPool(t, ctx, len(others), 30*time.Second, fmt.Sprintf("%s's instances to leave the edge's pool", h.Hostname))
	shrunk = time.Now()
	// Until the pool shrank, GETs sent to the cut host were hedged to
	// another instance after the per-try timeout (kept-alive connections)
	// or retried after the connect timeout (new ones). Without any, the
	// test could pass with no request ever sent to the cut host.
	waitUntil(t, ctx, 20*time.Second, 20*time.Millisecond, "the GETs sent before the pool shrank to finish",
		func() bool { return l.doneBefore(shrunk) })
	hedges1, unbudgeted1, refused1 := c.extraAttempts()
	retried, longest := l.slowBetween(down, shrunk)
	affected, lastAffected := l.affectedBetween(down, shrunk, hedgeFloor)
	if hedges1+unbudgeted1 == hedges0+unbudgeted0 {
		t.Errorf("no GET was hedged or retried while %s was cut off and still in the pool: the load never hit the cut host", h.Hostname)
	}
	t.Logf("MEASURE cut-host timeline (%s): link down at 0; pool shrank at %v; %d GETs took over %v (hedged or retried), the last ended at %v, longest %v; "+
		"hedges %v, retries after connect failure or pool exit %v, refused by the budget %v",
		h.Hostname, shrunk.Sub(down).Round(time.Millisecond), affected, hedgeFloor, durSince(down, lastAffected), longest.Round(time.Millisecond),
		hedges1-hedges0, unbudgeted1-unbudgeted0, refused1-refused0)
	// The rest keep serving once the pool has shrunk; keep the load on the
	// smaller pool for a while: failures would show here.
	waitUntil(t, ctx, 5*time.Second, 20*time.Millisecond, "the other instances served after the pool shrank",
		func() bool { return l.servedSince(shrunk, others...) })
	okShrunk, _, _ := l.counts()
	waitUntil(t, ctx, 10*time.Second, 20*time.Millisecond, "100 more GETs on the smaller pool",
		func() bool { ok, _, _ := l.counts(); return ok >= okShrunk+100 })

	up := time.Now()
	if err := h.SetLink(true, bridgeSide); err != nil {
		t.Fatal(err)
	}
	// In order: Consul's gossip sees the node alive again (serf tries to
	// reconnect to failed members every 30s: up to 40s seen here), the
	// edge's pool follows, then requests reach the instances.
	waitUntil(t, ctx, 60*time.Second, 50*time.Millisecond, fmt.Sprintf("Consul to see %s alive again", h.Hostname),
		func() bool { return c.alive(h.Hostname) })
	alive := time.Since(up)
	c.waitPool(t, ctx, len(all), 10*time.Second, fmt.Sprintf("%s's instances back in the edge's pool", h.Hostname))
	inPool := time.Since(up)
	waitUntil(t, ctx, 30*time.Second, 20*time.Millisecond, fmt.Sprintf("%s's instances served again", h.Hostname),
		func() bool { return l.servedSince(up, cut...) })
	back := time.Since(up)

	ok1, failed1, errs := l.counts()
	t.Logf("MEASURE host cut off (%s side): %s's instances left the pool %v after its link went down; "+
		"%d GETs while cut off and back, %d failed (%d of them waited on the cut host, then were retried elsewhere; longest %v); "+
		"after link up Consul saw it alive in %v, its instances were back in the pool in %v and served again in %v (cut for %v)",
		map[bool]string{true: "bridge", false: "host"}[bridgeSide], h.Hostname, leave.Round(time.Millisecond),
		(ok1+failed1)-(ok0+failed0), failed1-failed0, retried, longest.Round(time.Millisecond),
		alive.Round(time.Millisecond), inPool.Round(time.Millisecond), back.Round(time.Millisecond), up.Sub(down).Round(time.Millisecond))
	if failed1 != failed0 {
		t.Errorf("%d GETs failed while %s was cut off or coming back, want 0; first failures:\n%s",
			failed1-failed0, h.Hostname, strings.Join(errs, "\n"))
	}
	return down, shrunk
}

// hedgeFloor is the agent's smallest per-try timeout: a GET that took
// longer was probably hedged or retried.
const hedgeFloor = 50 * time.Millisecond

// durSince formats t - from, or "-" when t is zero.
func durSince(from, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Sub(from).Round(time.Millisecond).String()
}

// testStalled stops one app with SIGSTOP under load (it keeps its
// connections open and answers nothing, as a process stuck in a GC pause or
// on a lock would) for a few seconds: no GET may fail, the GETs' p99 stays
// near the per-try timeout, and the hedges stay within the retry budget.
func testStalled(t *testing.T, ctx context.Context, c *cluster, l *load, insts map[int]instance) {
	pids := pidList(insts)
	victim := pids[0]
	ok0, failed0, _ := l.counts()
	hedges0, unbudgeted0, refused0 := c.extraAttempts()
	req0, _ := c.metric(fmt.Sprintf("meshlb_retry_budget_requests_total{service=%q}", service))
	start := time.Now()
	if err := syscall.Kill(victim, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(victim, syscall.SIGCONT) })
	const stalled = 3 * time.Second
	select {
	case <-time.After(stalled):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if err := syscall.Kill(victim, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	waitUntil(t, ctx, 10*time.Second, 20*time.Millisecond, "the GETs sent while the app was stopped to finish",
		func() bool { return l.doneBefore(end) })
	ok1, failed1, errs := l.counts()
	hedges1, unbudgeted1, refused1 := c.extraAttempts()
	req1, _ := c.metric(fmt.Sprintf("meshlb_retry_budget_requests_total{service=%q}", service))
	p99, n := l.quantileBetween(start, end, 0.99)
	p50, _ := l.quantileBetween(start, end, 0.5)
	requests, hedges := req1-req0, hedges1-hedges0
	resent := unbudgeted1 - unbudgeted0 // re-sent when its registrar's check failed and it left the pool
	t.Logf("MEASURE stalled instance (SIGSTOP %v, pid %d): %d GETs, %d failed; p50 %v, p99 %v; %v hedges for %v requests (%.1f%%), %v refused by the budget, %v re-sent when it left the pool",
		stalled, victim, n, failed1-failed0, p50, p99, hedges, requests, 100*hedges/max(requests, 1), refused1-refused0, resent)
	if failed1 != failed0 {
		t.Errorf("%d GETs failed while an app was stopped, want 0; first failures:\n%s", failed1-failed0, strings.Join(errs, "\n"))
	}
	if ok1 == ok0 {
		t.Fatal("no GET served while the app was stopped")
	}
	if hedges+resent == 0 {
		t.Error("no GET hedged or re-sent while an app was stopped: the load never hit it")
	}
	// The budget: 20% of the requests over its 10s window plus 10 a second.
	if limit := 0.2*requests + 10*(end.Sub(start).Seconds()+10); hedges > limit {
		t.Errorf("%v hedges for %v requests: over the retry budget (%v)", hedges, requests, limit)
	}
	if p99 > time.Second {
		t.Errorf("p99 of GETs while an app was stopped: %v, want it bounded near the per-try timeout (at most 1s)", p99)
	}
}

// testNewHost adds host c under load: its Consul client joins, its
// registrars register, and the edge serves its instances within seconds,
// with no GET failing.
func testNewHost(t *testing.T, ctx context.Context, c *cluster, l *load, before map[int]instance) {
	ok0, failed0, _ := l.counts()
	hostUp := time.Now()
	h := c.net.AddHost(t, "c", hostOctets["c"])
	h.StartConsul(t, c.server.Addr)
	if err := h.WaitConsul(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.server.WaitMembers(ctx, h.Hostname); err != nil {
		t.Fatal(err)
	}
	joined := time.Since(hostUp)

	regStart := time.Now()
	c.startInstances(t, h)
	waitUntil(t, ctx, 30*time.Second, 20*time.Millisecond, "the new host's instances served", func() bool {
		return len(l.newPIDs(before)) == len(appPorts)
	})
	fresh := l.newPIDs(before)
	var firstAt, lastAt time.Time
	for _, at := range fresh {
		if firstAt.IsZero() || at.Before(firstAt) {
			firstAt = at
		}
		if at.After(lastAt) {
			lastAt = at
		}
	}
	after, err := c.instances()
	if err != nil {
		t.Fatal(err)
	}
	for pid := range fresh {
		if in, ok := after[pid]; !ok || in.node != h.Hostname || in.nodeAddr != h.Addr.String() {
			t.Errorf("new pid %d served, but Consul has it as %+v (ok=%v), want an instance on %s at %v", pid, in, ok, h.Hostname, h.Addr)
		}
	}
	// Stop the load here: the new host's processes belong to this subtest
	// and are killed when it ends.
	l.stop()
	ok1, failed1, errs := l.counts()
	t.Logf("MEASURE new host under load: Consul client joined %v after the host came up; "+
		"first instance served %v after its registrar started, all %d served %v after (%v after the host came up); %d GETs meanwhile, %d failed",
		joined.Round(time.Millisecond), firstAt.Sub(regStart).Round(time.Millisecond), len(fresh),
		lastAt.Sub(regStart).Round(time.Millisecond), lastAt.Sub(hostUp).Round(time.Millisecond), (ok1+failed1)-(ok0+failed0), failed1-failed0)
	if d := lastAt.Sub(regStart); d > 15*time.Second {
		t.Errorf("the new host's instances took %v to be served, want within 15s", d)
	}
	if failed1 != failed0 {
		t.Errorf("%d GETs failed while a host was added, want 0; first failures:\n%s", failed1-failed0, strings.Join(errs, "\n"))
	}
}

func pidList(insts map[int]instance) []int {
	pids := make([]int, 0, len(insts))
	for pid := range insts {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	return pids
}

// TestHarness checks the harness's own promises: it refuses to send
// anywhere but loopback and the test subnet, hosts reach each other over
// the bridge and nothing else, and a topology leaves nothing behind.
func TestHarness(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var prefix string
	t.Run("topology", func(t *testing.T) {
		n := multihost.New(t)
		prefix = n.Prefix()
		a := n.AddHost(t, "a", 11)
		b := n.AddHost(t, "b", 12)
		for _, tc := range []struct {
			name, addr string
			refused    bool
		}{
			{"documentation address", "192.0.2.1:80", true},
			{"benchmarking range outside the test subnet", "198.19.0.1:80", true},
			{"public address", "8.8.8.8:53", true},
			{"host name", "localhost:80", true},
			{"another host, nothing listening", b.Addr.String() + ":9", false},
			{"loopback, nothing listening", "127.0.0.1:9", false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := a.Dial(ctx, "tcp", tc.addr)
				if c != nil {
					c.Close()
				}
				refused := err != nil && strings.Contains(err.Error(), "multihost:")
				if refused != tc.refused {
					t.Fatalf("Dial(%s) from host a: error %v; want refused by the harness: %v", tc.addr, err, tc.refused)
				}
				// Allowed destinations with nothing listening answer at
				// once: connection refused, so the packet did go there.
				if !tc.refused && !strings.Contains(fmt.Sprint(err), "connection refused") {
					t.Fatalf("Dial(%s) from host a: %v, want connection refused", tc.addr, err)
				}
			})
		}
		t.Run("cut off host unreachable", func(t *testing.T) {
			if err := b.SetLink(false, true); err != nil {
				t.Fatal(err)
			}
			dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer dcancel()
			c, err := a.Dial(dctx, "tcp", b.Addr.String()+":9")
			if err == nil {
				c.Close()
				t.Fatal("dial to a cut off host succeeded")
			}
			if strings.Contains(err.Error(), "connection refused") {
				t.Fatalf("dial to a cut off host reached it: %v", err)
			}
			if err := b.SetLink(true, true); err != nil {
				t.Fatal(err)
			}
		})
	})
	// The subtest's cleanup has run: nothing of its topology is left.
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if prefix == "" || strings.Contains(string(out), prefix) {
		t.Errorf("namespaces of prefix %q left after the test: %s", prefix, out)
	}
}
