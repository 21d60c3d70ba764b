package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

// Tests of the backup tier and of failover across Consul datacenters, with
// real Consul datacenters (dev agents WAN-joined on their own ports),
// registrars and Tornado apps. Every POST is journaled by the app before it
// answers (--journal), so a POST executed by an app that was then killed
// is still counted.

// app is one registrar-wrapped Tornado instance.
type app struct {
	reg     *testproc.Proc
	port    int
	pid     int
	journal string
}

func startApp(t *testing.T, env []string, service, dir string, tags ...string) *app {
	t.Helper()
	return launchApp(t, env, service, dir, tags...).ready(t)
}

// launchApp starts the registrar and its app without waiting for them, so
// that several start side by side; ready waits.
func launchApp(t *testing.T, env []string, service, dir string, tags ...string) *app {
	t.Helper()
	port := testproc.FreePort(t)
	a := &app{port: port, journal: filepath.Join(dir, fmt.Sprintf("journal-%d", port))}
	args := []string{"--service", service, "--port", strconv.Itoa(port), "--drain", "1s", "--log-level", "warn"}
	for _, tag := range tags {
		args = append(args, "--tag", tag)
	}
	args = append(append(args, "--"), append(tornadotest.App(t, port), "--logging=warning", "--journal="+a.journal)...)
	a.reg = testproc.Start(t, env, bin(t, "registrar"), args...)
	return a
}

// ready waits until the app listens and learns its PID.
func (a *app) ready(t *testing.T) *app {
	t.Helper()
	port := a.port
	if err := testproc.WaitListening(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := pidRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("app on %d answered %q", port, b)
	}
	a.pid, _ = strconv.Atoi(string(m[1]))
	return a
}

// startApps starts apps side by side: one per env, tagged with tags.
func startApps(t *testing.T, service, dir string, envs [][]string, tags ...string) []*app {
	t.Helper()
	apps := make([]*app, len(envs))
	for i, env := range envs {
		apps[i] = launchApp(t, env, service, dir, tags...)
	}
	for _, a := range apps {
		a.ready(t)
	}
	return apps
}

func (a *app) kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(a.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// passing counts the passing instances of service in capi's datacenter.
func passing(capi *api.Client, service string) int {
	entries, _, err := capi.Health().Service(service, "", true, nil)
	if err != nil {
		return -1
	}
	return len(entries)
}

// edge starts an agent for service against env's Consul; its admin
// listener is on lastAdmin.
func edge(t *testing.T, env []string, service string, extra ...string) (*testproc.Proc, string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	lastAdmin = fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	args := []string{"--admin", lastAdmin}
	if !slices.Contains(extra, "--config") {
		args = append(args, "--listen", addr, "--service", service)
	}
	p := testproc.Start(t, env, bin(t, "agent"), append(args, extra...)...)
	if err := testproc.WaitListening(addr, 10*time.Second); err != nil && !slices.Contains(extra, "--config") {
		t.Fatal(err)
	}
	return p, addr
}

var lastAdmin string

// statusOf runs `agent status` against the agent's admin listener.
func statusOf(t *testing.T, admin string) string {
	t.Helper()
	out, err := exec.Command(bin(t, "agent"), "status", "--admin", admin).CombinedOutput()
	if err != nil {
		t.Fatalf("agent status: %v\n%s", err, out)
	}
	return string(out)
}

// metricsOf reads the agent's /metrics.
func metricsOf(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// answer is one request's outcome as the client saw it.
type answer struct {
	start, end time.Time
	pid        int
	status     int
	err        error
	post       string // the POST body, "" for a GET
}

// recorder runs GET and POST load through the agent with 2 s client
// timeouts and records every answer.
type recorder struct {
	mu      sync.Mutex
	answers []answer
	done    chan struct{}
}

func runRecorded(ctx context.Context, addr string, getters, posters int) *recorder {
	rec := &recorder{done: make(chan struct{})}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	var wg sync.WaitGroup
	one := func(method, body string) {
		a := answer{start: time.Now(), post: body}
		var resp *http.Response
		var err error
		if method == "GET" {
			resp, err = client.Get("http://" + addr + "/")
		} else {
			resp, err = client.Post("http://"+addr+"/echo", "text/plain", strings.NewReader(body))
		}
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			a.status, err = resp.StatusCode, rerr
			if m := pidRE.FindSubmatch(b); m != nil {
				a.pid, _ = strconv.Atoi(string(m[1]))
			} else {
				fmt.Sscanf(string(b), "pid=%d", &a.pid)
			}
		}
		a.err, a.end = err, time.Now()
		rec.mu.Lock()
		rec.answers = append(rec.answers, a)
		rec.mu.Unlock()
	}
	for range getters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				one("GET", "")
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	for p := range posters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				one("POST", fmt.Sprintf("p%d-%d", p, i))
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	go func() { wg.Wait(); client.CloseIdleConnections(); close(rec.done) }()
	return rec
}

func (r *recorder) snapshot() []answer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]answer(nil), r.answers...)
}

// firstFrom returns the end time of the first answer after t from one of
// pids.
func firstFrom(answers []answer, after time.Time, pids map[int]bool) (time.Time, bool) {
	best, ok := time.Time{}, false
	for _, a := range answers {
		if a.err == nil && a.status == 200 && pids[a.pid] && a.end.After(after) && (!ok || a.end.Before(best)) {
			best, ok = a.end, true
		}
	}
	return best, ok
}

// waitAnswers waits until the load has had n successful answers after t
// from one of pids: a phase of the test has really been under load.
func waitAnswers(t *testing.T, rec *recorder, n int, after time.Time, pids map[int]bool, what string) {
	t.Helper()
	testproc.WaitFor(t, 10*time.Second, fmt.Sprintf("%d answers %s", n, what), func() bool {
		c := 0
		for _, a := range rec.snapshot() {
			if a.err == nil && a.status == 200 && pids[a.pid] && a.end.After(after) {
				c++
			}
		}
		return c >= n
	})
}

// journaled counts the POST bodies every app executed.
func journaled(t *testing.T, apps []*app) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, a := range apps {
		f, err := os.Open(a.journal)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			seen[sc.Text()]++
		}
		f.Close()
	}
	return seen
}

func pidSet(apps ...*app) map[int]bool {
	m := map[int]bool{}
	for _, a := range apps {
		m[a.pid] = true
	}
	return m
}

// TestFailoverToSecondDatacenterAndBack: every dc1 app is killed under GET
// and POST load; dc2 serves within a second with no failed GET and no POST
// executed twice; new dc1 instances take the traffic back within a second.
func TestFailoverToSecondDatacenterAndBack(t *testing.T) {
	dcs := consultest.NewFederation(t, "dc1", "dc2")
	dir := t.TempDir()
	const svc = "web"
	apps := startApps(t, svc, dir, [][]string{dcs[0].Env(), dcs[0].Env(), dcs[1].Env(), dcs[1].Env()})
	dc1, dc2 := apps[:2], apps[2:]
	agent, addr := edge(t, dcs[0].Env(), svc, "--failover-dc", "dc2")
	admin := lastAdmin
	testproc.WaitFor(t, 20*time.Second, "both datacenters passing", func() bool {
		return passing(dcs[0].Client(), svc) == 2 && passing(dcs[1].Client(), svc) == 2
	})
	testproc.WaitFor(t, 10*time.Second, "the agent's pool to hold both datacenters", func() bool {
		return strings.Contains(agent.Out.String(), "instances=4 tiers=2")
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := runRecorded(ctx, addr, 4, 2)
	testproc.WaitFor(t, 10*time.Second, "load answered by dc1", func() bool {
		_, ok := firstFrom(rec.snapshot(), time.Time{}, pidSet(dc1...))
		return ok
	})
	waitAnswers(t, rec, 20, time.Time{}, pidSet(dc1...), "from dc1 before the kill")
	if _, ok := firstFrom(rec.snapshot(), time.Time{}, pidSet(dc2...)); ok {
		t.Fatal("dc2 served while dc1 instances were up")
	}
	for _, a := range dc1 {
		a.kill(t)
	}
	killed := time.Now()
	testproc.WaitFor(t, 10*time.Second, "dc2 serving", func() bool {
		_, ok := firstFrom(rec.snapshot(), killed, pidSet(dc2...))
		return ok
	})
	firstDC2, _ := firstFrom(rec.snapshot(), killed, pidSet(dc2...))
	switchOver := firstDC2.Sub(killed)
	testproc.WaitFor(t, 15*time.Second, "dc1 instances gone from Consul", func() bool { return passing(dcs[0].Client(), svc) == 0 })
	// The agent says dc2 serves: status, metrics.
	testproc.WaitFor(t, 5*time.Second, "agent status to say dc2 serves", func() bool {
		return strings.Contains(statusOf(t, admin), "web: serving dc2 primary since")
	})
	if m := metricsOf(t, admin); !strings.Contains(m, `meshlb_serving_tier{datacenter="dc2",service="web",tier="primary"} 1`) ||
		!strings.Contains(m, `meshlb_failover_datacenter_up{datacenter="dc2",service="web"} 1`) {
		t.Errorf("metrics do not say dc2 serves:\n%s", m)
	}
	waitAnswers(t, rec, 20, killed, pidSet(dc2...), "from dc2 alone")

	// Watch Consul for the first new dc1 instance to pass, from before
	// the registrars start, with a blocking query as the agent's.
	passedc := make(chan time.Time, 1)
	go func() {
		var index uint64
		for ctx.Err() == nil {
			entries, meta, err := dcs[0].Client().Health().Service(svc, "", true,
				(&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}).WithContext(ctx))
			if err != nil {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if len(entries) > 0 {
				passedc <- time.Now()
				return
			}
			index = meta.LastIndex
		}
	}()
	back := startApps(t, svc, dir, [][]string{dcs[0].Env(), dcs[0].Env()})
	var passed time.Time
	select {
	case passed = <-passedc:
	case <-time.After(15 * time.Second):
		t.Fatal("no new dc1 instance passing within 15s")
	}
	testproc.WaitFor(t, 10*time.Second, "dc1 serving again", func() bool {
		_, ok := firstFrom(rec.snapshot(), passed.Add(-time.Second), pidSet(back...))
		return ok
	})
	firstBack, _ := firstFrom(rec.snapshot(), passed.Add(-time.Second), pidSet(back...))
	switchBack := firstBack.Sub(passed)
	waitAnswers(t, rec, 20, firstBack, pidSet(back...), "from dc1 after its return")
	cancel()
	<-rec.done

	answers := rec.snapshot()
	var gets, getFails, posts, postFails, lateDC2 int
	for _, a := range answers {
		if a.post == "" {
			gets++
			if a.err != nil || a.status != 200 {
				getFails++
				if getFails <= 5 {
					t.Errorf("GET failed: status %d, error %v", a.status, a.err)
				}
			}
		} else {
			posts++
			if a.err != nil || a.status != 200 {
				postFails++
			}
		}
		// Once dc1 answered again, dc2 gets no new request.
		if a.start.After(firstBack.Add(100*time.Millisecond)) && pidSet(dc2...)[a.pid] {
			lateDC2++
		}
	}
	seen := journaled(t, append(append(append([]*app{}, dc1...), dc2...), back...))
	twice := 0
	for _, a := range answers {
		if a.post == "" {
			continue
		}
		n := seen[a.post]
		switch {
		case n > 1:
			twice++
			t.Errorf("POST %q executed %d times", a.post, n)
		case a.status == 200 && n != 1:
			t.Errorf("POST %q answered 200 but executed %d times", a.post, n)
		}
	}
	t.Logf("MEASURE failover dc1 → dc2: first answer from dc2 %v after the last dc1 app was killed; back to dc1 %v after a new dc1 instance passed in Consul",
		switchOver.Round(time.Millisecond), switchBack.Round(time.Millisecond))
	t.Logf("MEASURE load: %d GETs (%d failed), %d POSTs (%d failed, %d executed twice), %d requests started on dc2 after dc1 answered again",
		gets, getFails, posts, postFails, twice, lateDC2)
	if switchOver > time.Second {
		t.Errorf("dc2 served %v after the last dc1 instance failed, want within 1s", switchOver)
	}
	if switchBack > time.Second {
		t.Errorf("dc1 served again %v after it passed in Consul, want within 1s", switchBack)
	}
	if lateDC2 > 0 {
		t.Errorf("%d requests went to dc2 after dc1 was back", lateDC2)
	}
	if strings.Contains(agent.Out.String(), "keeping the last pool for the grace period") {
		t.Error("the empty-pool grace held dc1's failed instances back from leaving the pool")
	}
	for _, want := range []string{"serving tier changed", "failing over to another datacenter", "local datacenter serves again"} {
		if !strings.Contains(agent.Out.String(), want) {
			t.Errorf("the agent did not log %q", want)
		}
	}
	if st := statusOf(t, admin); !strings.Contains(st, "web: serving dc1 primary since") {
		t.Errorf("agent status after the switch back:\n%s", st)
	}
}

// TestBackupServesOnlyWhenNoPrimaryCan: a backup instance gets nothing
// while a primary is up, everything once the last primary is killed, and
// nothing again once a primary is back.
func TestBackupServesOnlyWhenNoPrimaryCan(t *testing.T) {
	srv := consultest.New(t)
	dir := t.TempDir()
	const svc = "bk"
	prim := startApps(t, svc, dir, [][]string{srv.Env(), srv.Env()})
	backup := launchApp(t, srv.Env(), svc, dir, "backup")
	agent, addr := edge(t, srv.Env(), svc)
	backup.ready(t)
	testproc.WaitFor(t, 20*time.Second, "three passing instances", func() bool { return passing(srv.Client(), svc) == 3 })
	testproc.WaitFor(t, 10*time.Second, "the agent's pool with the backup", func() bool {
		return strings.Contains(agent.Out.String(), "instances=3 tiers=2")
	})
	client := &http.Client{Timeout: 2 * time.Second}
	get := func() int {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := pidRE.FindSubmatch(b)
		if resp.StatusCode != 200 || m == nil {
			t.Fatalf("GET: %d %q", resp.StatusCode, b)
		}
		pid, _ := strconv.Atoi(string(m[1]))
		return pid
	}
	for range 40 {
		if get() == backup.pid {
			t.Fatal("the backup served while primaries are up")
		}
	}
	prim[0].kill(t)
	for range 20 {
		if get() == backup.pid {
			t.Fatal("the backup served while one primary is up")
		}
	}
	prim[1].kill(t)
	for i := range 40 {
		if pid := get(); pid != backup.pid {
			t.Fatalf("request %d after the last primary was killed went to pid %d, not the backup", i, pid)
		}
	}
	again := startApp(t, srv.Env(), svc, dir)
	var passed time.Time
	testproc.WaitFor(t, 15*time.Second, "the new primary passing", func() bool {
		entries, _, err := srv.Client().Health().Service(svc, "", true, nil)
		for _, e := range entries {
			if err == nil && e.Service.Port == again.port {
				passed = time.Now()
				return true
			}
		}
		return false
	})
	var back time.Duration
	for {
		if get() == again.pid {
			back = time.Since(passed)
			break
		}
		if time.Since(passed) > 5*time.Second {
			t.Fatal("the new primary got no request within 5s of passing")
		}
	}
	for range 40 {
		if get() != again.pid {
			t.Fatal("the backup served again after a primary returned")
		}
	}
	t.Logf("MEASURE backup: all requests on the backup right after the last primary was killed; back on the new primary %v after it passed", back.Round(time.Millisecond))
}

// TestUnreachableDatacenterIsSkipped: with dc2's Consul server stopped,
// losing dc1 sends the traffic to dc3 at once; nothing waits on dc2.
func TestUnreachableDatacenterIsSkipped(t *testing.T) {
	dcs := consultest.NewFederation(t, "dc1", "dc2", "dc3")
	dir := t.TempDir()
	const svc = "un"
	apps := startApps(t, svc, dir, [][]string{dcs[0].Env(), dcs[1].Env(), dcs[2].Env()})
	local, inDC2, inDC3 := apps[0], apps[1], apps[2]
	agent, addr := edge(t, dcs[0].Env(), svc, "--failover-dc", "dc2", "--failover-dc", "dc3")
	testproc.WaitFor(t, 20*time.Second, "every datacenter passing", func() bool {
		return passing(dcs[0].Client(), svc) == 1 && passing(dcs[1].Client(), svc) == 1 && passing(dcs[2].Client(), svc) == 1
	})
	testproc.WaitFor(t, 10*time.Second, "the agent's pool to hold three datacenters", func() bool {
		return strings.Contains(agent.Out.String(), "instances=3 tiers=3")
	})
	if err := dcs[1].Stop(); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, 10*time.Second, "the agent to leave dc2 out", func() bool {
		return strings.Contains(agent.Out.String(), "failover datacenter unreachable")
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := runRecorded(ctx, addr, 2, 0)
	waitAnswers(t, rec, 10, time.Time{}, pidSet(local), "from dc1 before the kill")
	local.kill(t)
	killed := time.Now()
	testproc.WaitFor(t, 5*time.Second, "dc3 serving", func() bool {
		_, ok := firstFrom(rec.snapshot(), killed, pidSet(inDC3))
		return ok
	})
	first, _ := firstFrom(rec.snapshot(), killed, pidSet(inDC3))
	waitAnswers(t, rec, 10, first, pidSet(inDC3), "from dc3")
	cancel()
	<-rec.done
	var slowest time.Duration
	for _, a := range rec.snapshot() {
		if a.err != nil || a.status != 200 {
			t.Errorf("GET failed: %d %v", a.status, a.err)
		}
		if a.pid == inDC2.pid {
			t.Errorf("a request went to dc2, whose Consul is unreachable")
		}
		slowest = max(slowest, a.end.Sub(a.start))
	}
	t.Logf("MEASURE unreachable dc2 skipped: dc3 served %v after dc1's last app was killed; slowest GET %v",
		first.Sub(killed).Round(time.Millisecond), slowest.Round(time.Millisecond))
	if first.Sub(killed) > time.Second || slowest > time.Second {
		t.Errorf("dc3 took %v to serve, slowest GET %v: the unreachable dc2 was waited on", first.Sub(killed), slowest)
	}
}

// TestPreparedQueryFailover: with failover { prepared_query }, Consul's own
// query failover picks the datacenter once the local instances are gone.
func TestPreparedQueryFailover(t *testing.T) {
	dcs := consultest.NewFederation(t, "dc1", "dc2")
	dir := t.TempDir()
	const svc = "pq"
	if _, _, err := dcs[0].Client().PreparedQuery().Create(&api.PreparedQueryDefinition{
		Name: "pq-failover", Service: api.ServiceQuery{Service: svc, OnlyPassing: true,
			Failover: api.QueryFailoverOptions{Datacenters: []string{"dc2"}}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	apps := startApps(t, svc, dir, [][]string{dcs[0].Env(), dcs[1].Env()})
	local, remote := apps[0], apps[1]
	listen := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	cfgFile := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`service %q {
  failover { prepared_query = "pq-failover" }
}
listener "web" {
  address = %q
  route { service = %q }
}
`, svc, listen, svc)), 0o644); err != nil {
		t.Fatal(err)
	}
	agent, _ := edge(t, dcs[0].Env(), svc, "--config", cfgFile)
	if err := testproc.WaitListening(listen, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, 20*time.Second, "both datacenters passing", func() bool {
		return passing(dcs[0].Client(), svc) == 1 && passing(dcs[1].Client(), svc) == 1
	})
	client := &http.Client{Timeout: 2 * time.Second}
	servedBy := func() int {
		resp, err := client.Get("http://" + listen + "/")
		if err != nil {
			return 0
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := pidRE.FindSubmatch(b); m != nil && resp.StatusCode == 200 {
			pid, _ := strconv.Atoi(string(m[1]))
			return pid
		}
		return 0
	}
	testproc.WaitFor(t, 10*time.Second, "dc1 serving", func() bool { return servedBy() == local.pid })
	local.kill(t)
	killed := time.Now()
	testproc.WaitFor(t, 10*time.Second, "dc2 serving through the prepared query", func() bool { return servedBy() == remote.pid })
	took := time.Since(killed)
	for range 10 {
		if pid := servedBy(); pid != remote.pid {
			t.Fatalf("after the failover a request was answered by pid %d, want dc2's %d", pid, remote.pid)
		}
	}
	t.Logf("MEASURE prepared query failover: dc2 served %v after dc1's app was killed (the query is executed every second)", took.Round(time.Millisecond))
	if !strings.Contains(agent.Out.String(), "failing over to another datacenter") {
		t.Error("the agent did not log the failover")
	}
}
