package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

var (
	binsOnce sync.Once
	binsDir  string
	binsMap  map[string]string
	binsErr  error
)

// bin builds the agent and registrar once per test binary (lazily, so
// unit and fuzz runs don't pay for it) and returns the path of name.
func bin(t testing.TB, name string) string {
	t.Helper()
	binsOnce.Do(func() {
		binsDir, binsErr = os.MkdirTemp("", "agent-test")
		if binsErr == nil {
			binsMap, binsErr = testproc.Build(binsDir, "agent", "registrar")
		}
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	return binsMap[name]
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binsDir != "" {
		os.RemoveAll(binsDir)
	}
	os.Exit(code)
}

// cluster is a real Consul, registrar-wrapped Tornado instances, and an
// agent in front of them.
type cluster struct {
	t       *testing.T
	consul  *consultest.Server // nil when the cluster runs on a consultest.Cluster
	env     []string           // CONSUL_HTTP_ADDR for registrars and the agent
	capi    *api.Client        // for the test's own queries
	service string
	regs    map[int]*testproc.Proc // by app port
	agent   *testproc.Proc
	addr    string // agent's client address
	scheme  string // "http" unless the agent terminates TLS
	admin   string
	client  *http.Client
	journal string // directory of the instances' POST journals (see journalCounts)
}

func newCluster(t *testing.T, service string, instances int, agentArgs ...string) *cluster {
	t.Helper()
	srv := consultest.New(t)
	return newClusterOn(t, srv, srv.Env(), srv.Client(), service, instances, agentArgs...)
}

// newClusterOn is newCluster with Consul reached through env (for
// processes) and capi (for the test).
func newClusterOn(t *testing.T, srv *consultest.Server, env []string, capi *api.Client, service string, instances int, agentArgs ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, consul: srv, env: env, capi: capi, service: service, regs: map[int]*testproc.Proc{},
		client:  &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		journal: t.TempDir()}
	t.Cleanup(c.client.CloseIdleConnections)
	for range instances {
		c.addInstance()
	}
	c.startAgent(agentArgs...)
	c.waitPool(instances)
	return c
}

func (c *cluster) addInstance(extra ...string) int {
	c.t.Helper()
	port := testproc.FreePort(c.t)
	args := append([]string{"--service", c.service, "--port", strconv.Itoa(port), "--drain", "1s", "--log-level", "warn"}, extra...)
	app := append(tornadotest.App(c.t, port), "--logging=warning")
	if c.journal != "" {
		app = append(app, fmt.Sprintf("--journal=%s/%d.journal", c.journal, port))
	}
	args = append(append(args, "--"), app...)
	c.regs[port] = testproc.Start(c.t, c.env, bin(c.t, "registrar"), args...)
	return port
}

func (c *cluster) startAgent(extra ...string) {
	c.t.Helper()
	lport, aport := testproc.FreePort(c.t), testproc.FreePort(c.t)
	c.addr = fmt.Sprintf("127.0.0.1:%d", lport)
	c.admin = fmt.Sprintf("127.0.0.1:%d", aport)
	args := append([]string{"--listen", c.addr, "--service", c.service, "--admin", c.admin}, extra...)
	c.agent = testproc.Start(c.t, c.env, bin(c.t, "agent"), args...)
	if err := testproc.WaitListening(c.addr, 10*time.Second); err != nil {
		c.t.Fatal(err)
	}
}

var pidRE = regexp.MustCompile(`Process Id = (\d+)`)

// get sends one GET through the agent and returns the status and the PID
// of the process that answered (0 if none).
func (c *cluster) get(path string) (int, int, error) {
	scheme := c.scheme
	if scheme == "" {
		scheme = "http"
	}
	resp, err := c.client.Get(scheme + "://" + c.addr + path)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, 0, err
	}
	pid := 0
	if m := pidRE.FindSubmatch(b); m != nil {
		pid, _ = strconv.Atoi(string(m[1]))
	}
	return resp.StatusCode, pid, nil
}

// metric reads one sample of the agent's /metrics, named with its labels
// as Prometheus' text format writes them.
func (c *cluster) metric(sample string) (float64, error) {
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("sample %s not in the agent's /metrics", sample)
}

// passingPIDs returns the PIDs Consul lists as passing for the service.
func (c *cluster) passingPIDs() map[int]bool {
	entries, _, err := c.capi.Health().Service(c.service, "", true, nil)
	if err != nil {
		return nil
	}
	out := map[int]bool{}
	for _, e := range entries {
		pid, _ := strconv.Atoi(e.Service.Meta["pid"])
		out[pid] = true
	}
	return out
}

// waitPool waits until Consul passes n instances and the agent serves all of them.
func (c *cluster) waitPool(n int) map[int]bool {
	c.t.Helper()
	var want map[int]bool
	testproc.WaitFor(c.t, 20*time.Second, fmt.Sprintf("%d passing instances", n), func() bool {
		want = c.passingPIDs()
		return len(want) == n
	})
	testproc.WaitFor(c.t, 10*time.Second, "the agent serving every passing instance", func() bool {
		seen := map[int]bool{}
		for range 3 * n {
			if code, pid, err := c.get("/"); err == nil && code == 200 {
				seen[pid] = true
			}
		}
		for pid := range want {
			if !seen[pid] {
				return false
			}
		}
		return true
	})
	return want
}

func TestRoundRobinTenRequestsFivePIDsTwiceEach(t *testing.T) {
	c := newCluster(t, "hello", 5)
	counts := map[int]int{}
	for range 10 {
		code, pid, err := c.get("/")
		if err != nil || code != 200 {
			t.Fatalf("GET: %d %v", code, err)
		}
		counts[pid]++
	}
	if len(counts) != 5 {
		t.Fatalf("10 requests reached %d processes, want 5: %v", len(counts), counts)
	}
	for pid, n := range counts {
		if n != 2 {
			t.Errorf("pid %d served %d of 10 requests, want exactly 2 (round robin): %v", pid, n, counts)
		}
	}
}

// TestNewInstanceServedWithinASecond registers an instance in Consul,
// marks it passing, and measures until the agent first serves it; then
// deregisters it and measures until the agent stops serving it.
func TestNewInstanceServedWithinASecond(t *testing.T) {
	c := newCluster(t, "join", 2)
	port := testproc.FreePort(t)
	app := tornadotest.Start(t, port)
	pid := app.Cmd.Process.Pid
	agent := c.consul.Client().Agent()
	const trials = 20
	var joins, leaves []time.Duration
	for i := range trials {
		id := fmt.Sprintf("join-trial-%d", i)
		if err := agent.ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "join", Port: port,
			Meta:  map[string]string{"pid": strconv.Itoa(pid)},
			Check: &api.AgentServiceCheck{CheckID: id, TTL: "30s", Status: api.HealthCritical}}); err != nil {
			t.Fatal(err)
		}
		if err := agent.UpdateTTL(id, "", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		passed := time.Now()
		joins = append(joins, c.until(t, passed, func(p int) bool { return p == pid }))
		if err := agent.ServiceDeregister(id); err != nil {
			t.Fatal(err)
		}
		gone := time.Now()
		leaves = append(leaves, c.untilAbsent(t, gone, pid))
	}
	p50, maxJ := stats(joins)
	l50, maxL := stats(leaves)
	t.Logf("MEASURE passing in Consul to first served (n=%d): p50 %v max %v", trials, p50, maxJ)
	t.Logf("MEASURE deregistered to last served (n=%d): p50 %v max %v", trials, l50, maxL)
	if maxJ > 3*time.Second {
		t.Errorf("a new instance took %v to be served; the pool must follow Consul within about a second", maxJ)
	}
}

// until sends requests until one is answered by a process for which ok
// holds, and returns the time since start.
func (c *cluster) until(t *testing.T, start time.Time, ok func(pid int) bool) time.Duration {
	t.Helper()
	for time.Since(start) < 10*time.Second {
		if code, pid, err := c.get("/"); err == nil && code == 200 && ok(pid) {
			return time.Since(start)
		}
	}
	t.Fatal("condition not met within 10s")
	return 0
}

// untilAbsent returns the time since start after which pid has not served
// any of 20 consecutive requests.
func (c *cluster) untilAbsent(t *testing.T, start time.Time, pid int) time.Duration {
	t.Helper()
	last := time.Duration(0)
	streak := 0
	for streak < 20 {
		if time.Since(start) > 10*time.Second {
			t.Fatal("instance still served 10s after deregistration")
		}
		_, p, _ := c.get("/")
		if p == pid {
			last = time.Since(start)
			streak = 0
			continue
		}
		streak++
	}
	return last
}

func stats(ds []time.Duration) (p50, maxD time.Duration) {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)-1]
}

// load runs GET and POST clients against the agent until stop is closed.
type load struct {
	gets, getFails atomic.Int64
	posts          atomic.Int64
	mu             sync.Mutex
	postResults    map[string]postResult // body → outcome
	firstErrs      []string
	done           chan struct{}
}

type postResult struct {
	status int
	pid    int
}

func (c *cluster) runLoad(ctx context.Context, getters, posters int) *load {
	l := &load{postResults: map[string]postResult{}, done: make(chan struct{})}
	var wg sync.WaitGroup
	for g := range getters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				code, _, err := c.get("/")
				l.gets.Add(1)
				if err != nil || code != 200 {
					l.getFails.Add(1)
					l.note(fmt.Sprintf("getter %d: GET status %d err %v", g, code, err))
				}
			}
		}()
	}
	for p := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				body := fmt.Sprintf("p%d-%d", p, i)
				resp, err := c.client.Post("http://"+c.addr+"/echo?ms=20", "text/plain", strings.NewReader(body))
				l.posts.Add(1)
				res := postResult{}
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					res.status = resp.StatusCode
					fmt.Sscanf(string(b), "pid=%d", &res.pid)
				}
				if res.status != 200 {
					l.note(fmt.Sprintf("poster %d: POST %s status %d err %v", p, body, res.status, err))
				}
				l.mu.Lock()
				l.postResults[body] = res
				l.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

func (l *load) wait() { <-l.done }

// failedPosts counts the POSTs that did not get a 200.
func (l *load) failedPosts() int {
	n := 0
	for _, res := range l.postResults {
		if res.status != 200 {
			n++
		}
	}
	return n
}

func (l *load) note(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.firstErrs) < 5 {
		l.firstErrs = append(l.firstErrs, s)
	}
}

// journalCounts reads every instance's POST journal, the killed ones'
// included (each body is written and fsynced before the app answers, so
// SIGKILL loses none), and returns how often each body was executed in all.
func (c *cluster) journalCounts(t *testing.T) map[string]int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(c.journal, "*.journal"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no POST journal in %s: the instances did not record their POSTs", c.journal)
	}
	total := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line != "" {
				total[line]++
			}
		}
	}
	return total
}

// checkPostsOnce checks every POST the load sent against the journals:
// one that got a 200 ran exactly once, one that failed ran at most once
// (on the instance it was in flight on), and nothing ran that was not
// sent. It returns how many failed.
func (c *cluster) checkPostsOnce(t *testing.T, l *load) (failed int) {
	t.Helper()
	seen := c.journalCounts(t)
	for body, res := range l.postResults {
		switch n := seen[body]; {
		case n > 1:
			t.Errorf("POST %q executed %d times (status %d)", body, n, res.status)
		case res.status == 200 && n != 1:
			t.Errorf("POST %q answered 200 by pid %d but executed %d times", body, res.pid, n)
		case res.status != 200:
			failed++
		}
	}
	for body := range seen {
		if _, ok := l.postResults[body]; !ok && strings.HasPrefix(body, "p") {
			t.Errorf("POST %q executed but the load has no outcome for it", body)
		}
	}
	return failed
}

func TestInstanceKilledUnderLoadCostsNoGETAndNoDoublePOST(t *testing.T) {
	c := newCluster(t, "kill", 5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l := c.runLoad(ctx, 8, 4)
	time.Sleep(1500 * time.Millisecond) // let the load run before the kill
	var victim int
	for port := range c.regs {
		victim = port
		break
	}
	code, pid, err := 0, 0, error(nil)
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", victim))
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code = resp.StatusCode
		if m := pidRE.FindSubmatch(b); m != nil {
			pid, _ = strconv.Atoi(string(m[1]))
		}
	}
	if code != 200 || pid == 0 {
		t.Fatalf("victim on %d did not answer: %d %v", victim, code, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l.wait()
	t.Logf("MEASURE SIGKILL under load: %d GETs, %d failed; %d POSTs", l.gets.Load(), l.getFails.Load(), l.posts.Load())
	if n := l.getFails.Load(); n != 0 {
		t.Errorf("%d of %d GETs failed while an instance was killed: %v", n, l.gets.Load(), l.firstErrs)
	}
	failed := c.checkPostsOnce(t, l)
	t.Logf("MEASURE POSTs: %d sent, %d failed (in flight on the killed instance)", len(l.postResults), failed)
}

func TestConsulStoppedAgentKeepsServing(t *testing.T) {
	c := newCluster(t, "outage", 5)
	want := c.passingPIDs()
	if err := c.consul.Stop(); err != nil {
		t.Fatal(err)
	}
	// The watch notices the outage: its failed queries are counted.
	testproc.WaitFor(t, 10*time.Second, "the agent's watch to report Consul errors", func() bool {
		v, err := c.metric(fmt.Sprintf("meshlb_consul_watch_errors_total{service=%q}", c.service))
		return err == nil && v > 0
	})
	seen := map[int]int{}
	for range 50 {
		code, pid, err := c.get("/")
		if err != nil || code != 200 {
			t.Fatalf("request failed with Consul down: %d %v", code, err)
		}
		seen[pid]++
	}
	for pid := range want {
		if seen[pid] == 0 {
			t.Errorf("pid %d not served while Consul was down: %v", pid, seen)
		}
	}
}

func TestBeforeFirstPoolAnswers503(t *testing.T) {
	// A Consul address where nothing listens: the agent starts and says why it cannot serve.
	port := testproc.FreePort(t)
	lport, aport := testproc.FreePort(t), testproc.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", lport)
	testproc.Start(t, []string{fmt.Sprintf("CONSUL_HTTP_ADDR=127.0.0.1:%d", port)}, bin(t, "agent"),
		"--listen", addr, "--service", "nothing", "--admin", fmt.Sprintf("127.0.0.1:%d", aport))
	if err := testproc.WaitListening(addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "nothing") {
		t.Fatalf("before the first pool: %d %q, want 503 naming the service", resp.StatusCode, b)
	}
	resp, err = http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", aport))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("/healthz before the first pool: %d, want 503", resp.StatusCode)
	}
}

func TestSnapshotRestoresPoolWhenConsulIsDown(t *testing.T) {
	snap := t.TempDir() + "/pools.json"
	c := newCluster(t, "snap", 3, "--snapshot-file", snap)
	want := c.passingPIDs()
	_ = c.agent.Signal(syscall.SIGTERM)
	if code := c.agent.Wait(t, 10*time.Second); code != 0 {
		t.Fatalf("agent exit status %d after SIGTERM, want 0", code)
	}
	if err := c.consul.Stop(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.startAgent("--snapshot-file", snap)
	seen := map[int]bool{}
	took := c.until(t, start, func(pid int) bool { seen[pid] = true; return len(seen) == len(want) })
	t.Logf("MEASURE agent restarted with Consul down: all %d instances served after %v", len(want), took)
	for pid := range seen {
		if !want[pid] {
			t.Errorf("served pid %d not in the snapshot's pool %v", pid, want)
		}
	}
}

func TestBadInputIsRefused(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badHCL := write("bad.hcl", "listener \"web\" {\n  address = \n}\n")
	badPolicy := write("policy.hcl", "service \"a\" {\n  balance = \"fastest\"\n}\nlistener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"a\" }\n}\n")
	noRoute := write("noroute.hcl", "listener \"web\" {\n  address = \"127.0.0.1:0\"\n}\n")
	badTry := write("try.hcl", "service \"a\" {\n  try_timeout = \"-1s\"\n}\nlistener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"a\" }\n}\n")
	badProto := write("proto.hcl", "listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route {\n    service = \"a\"\n    protocol = \"spdy\"\n  }\n}\n")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown balance", []string{"--listen", "127.0.0.1:0", "--service", "s", "--balance", "fastest"}, `"fastest"`},
		{"balance lists valid", []string{"--listen", "127.0.0.1:0", "--service", "s", "--balance", "fastest"}, "least_conn"},
		{"taken port", []string{"--listen", taken.Addr().String(), "--service", "s", "--admin", "off"}, taken.Addr().String()},
		{"bad address", []string{"--listen", "nonsense", "--service", "s"}, `"nonsense"`},
		{"bad port", []string{"--listen", "127.0.0.1:99999", "--service", "s"}, "99999"},
		{"listen without service", []string{"--listen", ":0"}, "--listen needs --service"},
		{"nothing to serve", []string{}, "nothing to serve"},
		{"unreadable config", []string{"--config", dir + "/missing.hcl"}, "missing.hcl"},
		{"invalid hcl", []string{"--config", badHCL}, "bad.hcl"},
		{"invalid policy in file", []string{"--config", badPolicy}, `"fastest"`},
		{"listener without route", []string{"--config", noRoute}, `listener "web" has no route`},
		{"bad route protocol", []string{"--config", badProto}, `invalid route protocol "spdy"`},
		{"bad max streams", []string{"--listen", "127.0.0.1:0", "--service", "s", "--max-concurrent-streams", "0"}, "invalid --max-concurrent-streams 0"},
		{"tls cert without key", []string{"--listen", "127.0.0.1:0", "--service", "s", "--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{"bad admin", []string{"--listen", "127.0.0.1:0", "--service", "s", "--admin", "x"}, `invalid --admin "x"`},
		{"bad max-fails", []string{"--listen", "127.0.0.1:0", "--service", "s", "--max-fails", "0"}, "invalid --max-fails 0"},
		{"bad service", []string{"--listen", "127.0.0.1:0", "--service", "a b"}, `"a b"`},
		{"bad try-timeout", []string{"--listen", "127.0.0.1:0", "--service", "s", "--try-timeout", "fast"}, `invalid --try-timeout "fast"`},
		{"zero try-timeout", []string{"--listen", "127.0.0.1:0", "--service", "s", "--try-timeout", "0s"}, `"auto" (adaptive) or "off"`},
		{"bad try_timeout in file", []string{"--config", badTry}, `service "a": invalid try_timeout "-1s"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			code := run(tc.args, io.Discard, &out)
			if code == exitOK {
				t.Fatalf("exit 0 for bad input; output:\n%s", out.String())
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("error output %q does not name %q", out.String(), tc.want)
			}
		})
	}
}

// TestRollingRestartZeroFailures replaces every instance one by one under
// a steady GET and POST load (start the new one, SIGTERM the old
// registrar): no request may fail and no POST may run twice.
func TestRollingRestartZeroFailures(t *testing.T) {
	c := newCluster(t, "roll", 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := c.runLoad(ctx, 6, 3)
	old := make([]int, 0, len(c.regs))
	for port := range c.regs {
		old = append(old, port)
	}
	for _, port := range old {
		c.addInstance()
		c.waitPool(len(c.regs)) // the new one is passing and served
		reg := c.regs[port]
		_ = reg.Signal(syscall.SIGTERM)
		if code := reg.Wait(t, 15*time.Second); code != 0 {
			t.Fatalf("old registrar on %d exited %d", port, code)
		}
		delete(c.regs, port)
	}
	cancel()
	l.wait()
	failedPosts := l.failedPosts()
	t.Logf("MEASURE rolling restart of 3 instances: %d GETs (%d failed), %d POSTs (%d failed)",
		l.gets.Load(), l.getFails.Load(), len(l.postResults), failedPosts)
	if l.getFails.Load() != 0 || failedPosts != 0 {
		t.Errorf("rolling restart failed %d GETs and %d POSTs: %v", l.getFails.Load(), failedPosts, l.firstErrs)
	}
	// Every POST ran exactly once, on one of the instances alive now or
	// gone: the journals of the old ones are read too.
	c.checkPostsOnce(t, l)
}

// TestConsulDownAMinuteThenBackEmpty: agent and registrars ride through
// Consul being down for a minute and coming back empty (a dev agent keeps
// no state): requests keep succeeding and the instances are back in
// Consul within 10 s.
func TestConsulDownAMinuteThenBackEmpty(t *testing.T) {
	c := newCluster(t, "ride", 3)
	want := c.passingPIDs()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := c.runLoad(ctx, 2, 1)
	if err := c.consul.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute) // the outage itself
	if err := c.consul.Restart(); err != nil {
		t.Fatal(err)
	}
	took := testproc.WaitFor(t, 10*time.Second, "every instance back in Consul", func() bool {
		return len(c.passingPIDs()) == len(want)
	})
	c.waitPool(len(want))
	cancel()
	l.wait()
	failedPosts := l.failedPosts()
	t.Logf("MEASURE consul down 60s then restarted empty: instances back after %v; %d GETs (%d failed), %d POSTs (%d failed)",
		took, l.gets.Load(), l.getFails.Load(), len(l.postResults), failedPosts)
	if l.getFails.Load() != 0 || failedPosts != 0 {
		t.Errorf("%d GETs and %d POSTs failed across the Consul outage: %v", l.getFails.Load(), failedPosts, l.firstErrs)
	}
}

// TestConsulLeaderLossInterruptsNothing runs registrars and the agent
// against the client agent of a 3-server cluster and kills the raft
// leader under load: no request fails, and a new instance still joins
// once a new leader is elected.
func TestConsulLeaderLossInterruptsNothing(t *testing.T) {
	cl := consultest.NewCluster(t, 3)
	c := newClusterOn(t, nil, cl.Client.Env(), cl.Client.API(), "quorum", 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := c.runLoad(ctx, 4, 2)
	leader, err := cl.Leader()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // load before the loss
	killed := time.Now()
	leader.Kill()
	took := testproc.WaitFor(t, 30*time.Second, "a new leader", func() bool {
		l, err := cl.Leader()
		return err == nil && l != leader
	})
	c.addInstance()
	c.waitPool(4)
	joined := time.Since(killed)
	cancel()
	l.wait()
	failedPosts := l.failedPosts()
	t.Logf("MEASURE leader %s killed: new leader after %v, new instance served %v after the kill; %d GETs (%d failed), %d POSTs (%d failed)",
		leader.Name, took, joined, l.gets.Load(), l.getFails.Load(), len(l.postResults), failedPosts)
	if l.getFails.Load() != 0 || failedPosts != 0 {
		t.Errorf("losing the leader failed %d GETs and %d POSTs: %v", l.getFails.Load(), failedPosts, l.firstErrs)
	}
}
