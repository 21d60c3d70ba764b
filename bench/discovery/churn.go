package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/testing/consultest"
)

// The churn figures (issue 19): at a given shape (services × instances),
// the agent's CPU per pool update while instances are re-registered with
// new metadata at a steady rate, its requests/s under that churn against
// calm, how long an instance that joins takes to get its first request and
// one that leaves its last (with the churn going on), and Consul's CPU
// meanwhile. Instances are catalog-only (no checks) and point at a few real
// backends in this process, so wrk's requests are served.

type churnOptions struct {
	shapes      []shape
	rate        float64
	window      time.Duration
	wrkDuration time.Duration
	wrkConns    int
	trials      int
	rssShape    shape
	// agentFlags are added to the agent's command line (A/B runs, e.g.
	// --consul-cached).
	agentFlags []string
}

type shape struct{ services, perSvc int }

func (s shape) String() string { return fmt.Sprintf("%d × %d", s.services, s.perSvc) }

func parseShapes(v string) ([]shape, error) {
	var out []shape
	for _, f := range strings.Split(v, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(f), "x")
		s, err1 := strconv.Atoi(a)
		n, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || s < 1 || n < 1 {
			return nil, fmt.Errorf("invalid shape %q: want SERVICESxINSTANCES, e.g. 1x10000", f)
		}
		out = append(out, shape{s, n})
	}
	return out, nil
}

type churnResult struct {
	shape      shape
	err        error
	load       time.Duration // registration end → every pool loaded
	changes    int           // catalog changes in the CPU window
	updates    int           // "pool updated" lines in the CPU window
	agentCPU   time.Duration // agent CPU in the window, idle CPU taken off
	idleCPU    time.Duration // agent CPU over the same time, no changes
	windowLen  time.Duration
	consulCPU  time.Duration
	rpsCalm    float64
	rpsChurn   float64
	wrkErrors  int
	join       []time.Duration
	leave      []time.Duration
	trialReqs  int64
	trialFails int64
	rss, hwm   int
	warnings   int
	warnSample []string
	queries    []queryCost
	// calmCPU and churnCPU: where the machine's CPU went during the calm
	// and the churn wrk runs.
	calmCPU, churnCPU cpuShare
	// churnAlone: Consul and this process during the churn with the agent
	// stopped and no requests: what the churn itself costs.
	churnAlone cpuShare
}

// cpuShare is the CPU each process took during one wrk run.
type cpuShare struct {
	wall                     time.Duration
	agent, consul, self, wrk time.Duration
	updates                  int // "pool updated" lines meanwhile
}

// cores is d as a share of the run's wall time, in cores.
func (c cpuShare) cores(d time.Duration) float64 {
	if c.wall <= 0 {
		return 0
	}
	return float64(d) / float64(c.wall)
}

// queryCost is Consul's cost for one variant of the health query.
type queryCost struct {
	name    string
	wall    time.Duration // median
	cpu     time.Duration // Consul's CPU per read
	bytes   int64
	backend string
}

func runChurn(ctx context.Context, o options, co churnOptions, srv *consultest.Server, agentBin string, env []string, work string) ([]churnResult, churnResult) {
	var out []churnResult
	for _, sh := range co.shapes {
		if ctx.Err() != nil {
			break
		}
		r := churnShape(ctx, co, srv, agentBin, env, work, sh)
		if r.err != nil {
			progress("%v: %v", sh, r.err)
		}
		out = append(out, r)
	}
	rss := rssShape(ctx, srv, agentBin, env, work, co.rssShape, co.agentFlags)
	return out, rss
}

// cpuTime is a process's user+system time from /proc/PID/stat.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

func (a *agentProc) updateCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.updates
}

// churner re-registers random instances with a new "v" meta value at rate
// per second until ctx ends, and counts the changes made.
func churner(ctx context.Context, c *api.Client, insts []synthInstance, rate float64, changes *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 19))
		v := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			v++
			in := insts[rng.IntN(len(insts))]
			in.meta = map[string]string{"v": strconv.Itoa(v)}
			if err := registerSynthetic(c, nil, []synthInstance{in}); err == nil {
				changes.Add(1)
			}
		}
	}()
	return &wg
}

var reRPS = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
var reWrkErr = regexp.MustCompile(`(?:Non-2xx or 3xx responses|Socket errors: connect) (\d+)`)

// runWrk runs wrk against url and returns requests/s and errors.
func runWrk(ctx context.Context, url, host string, conns int, d time.Duration) (float64, int, error) {
	rps, errs, _, err := runWrkCPU(ctx, url, host, conns, d)
	return rps, errs, err
}

// runWrkCPU is runWrk that also returns wrk's own CPU time.
func runWrkCPU(ctx context.Context, url, host string, conns int, d time.Duration) (float64, int, time.Duration, error) {
	args := []string{"-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())), url}
	if host != "" {
		args = append([]string{"-H", "Host: " + host}, args...)
	}
	cmd := exec.CommandContext(ctx, "wrk", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("wrk: %v: %s", err, out)
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	m := reRPS.FindSubmatch(out)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("wrk printed no Requests/sec: %s", out)
	}
	rps, _ := strconv.ParseFloat(string(m[1]), 64)
	errs := 0
	for _, e := range reWrkErr.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(e[1]))
		errs += n
	}
	return rps, errs, cpu, nil
}

// wrkShare runs wrk and reports, beside its figures, the CPU the agent,
// Consul, this process (backends, churn) and wrk took meanwhile.
func wrkShare(ctx context.Context, a *agentProc, consulPID int, url, host string, conns int, d time.Duration) (float64, int, cpuShare, error) {
	pid := a.pid()
	u0, a0, k0, s0, t0 := a.updateCount(), cpuTime(pid), cpuTime(consulPID), cpuTime(os.Getpid()), time.Now()
	rps, errs, wrkCPU, err := runWrkCPU(ctx, url, host, conns, d)
	sh := cpuShare{wall: time.Since(t0), agent: cpuTime(pid) - a0, consul: cpuTime(consulPID) - k0,
		self: cpuTime(os.Getpid()) - s0, wrk: wrkCPU, updates: a.updateCount() - u0}
	return rps, errs, sh, err
}

func churnShape(ctx context.Context, co churnOptions, srv *consultest.Server, agentBin string, env []string, work string, sh shape) (res churnResult) {
	res.shape = sh
	c := srv.Client()
	var backs []*backend
	for i := range 4 {
		b, err := newBackend(fmt.Sprintf("b%d", i))
		if err != nil {
			res.err = err
			return res
		}
		defer b.close()
		backs = append(backs, b)
	}
	const perNode = 100
	var names, nodes []string
	var insts []synthInstance
	for s := range sh.services {
		name := "big"
		if sh.services > 1 {
			name = fmt.Sprintf("c%04d", s)
		}
		names = append(names, name)
		for j := range sh.perSvc {
			k := s*sh.perSvc + j
			if k%perNode == 0 {
				nodes = append(nodes, fmt.Sprintf("churn-%05d", k/perNode))
			}
			insts = append(insts, synthInstance{node: nodes[len(nodes)-1], service: name, id: fmt.Sprintf("%s-%05d", name, j),
				port: backs[k%len(backs)].port(), addr: "127.0.0.1", meta: map[string]string{"v": "0"}})
		}
	}
	defer func() { _ = deleteNodes(c, nodes) }()

	addrs, err := freePorts(2)
	if err != nil {
		res.err = err
		return res
	}
	host := ""
	var args []string
	if sh.services == 1 {
		args = []string{"--listen", addrs[0], "--service", names[0]}
	} else {
		var b strings.Builder
		fmt.Fprintf(&b, "listener \"web\" {\n  address = %q\n", addrs[0])
		for _, s := range names {
			fmt.Fprintf(&b, "  route {\n    host = \"%s.bench.example\"\n    service = %q\n  }\n", s, s)
		}
		b.WriteString("}\n")
		cfg := filepath.Join(work, fmt.Sprintf("churn-%d.hcl", sh.services))
		if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
			res.err = err
			return res
		}
		args = []string{"--config", cfg}
		host = names[0] + ".bench.example"
	}
	progress("churn %v: starting the agent", sh)
	a, err := startAgent(ctx, agentBin, addrs[1], env, append(args, co.agentFlags...)...)
	if err != nil {
		res.err = err
		return res
	}
	defer a.stop()
	defer func() { res.warnings, res.warnSample = a.warnCount() }()
	want := map[string]int{}
	for _, in := range insts {
		want[in.service]++
	}
	start := time.Now()
	if err := registerSynthetic(c, nodes, insts); err != nil {
		res.err = err
		return res
	}
	end := time.Now()
	latest, err := waitLoaded(ctx, a, want, start)
	if err != nil {
		res.err = err
		return res
	}
	res.load = max(0, latest.Sub(end))
	progress("churn %v: loaded %d instances in %v", sh, len(insts), latest.Sub(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	if sh.services == 1 {
		res.queries = queryCosts(srv, names[0])
	}

	// Agent CPU per update: the same window without changes, then with.
	res.windowLen = co.window + time.Second
	pid, cpid := a.pid(), srv.PID()
	c0 := cpuTime(pid)
	time.Sleep(res.windowLen)
	res.idleCPU = cpuTime(pid) - c0
	progress("churn %v: %v of changes at %.0f/s, no requests", sh, co.window, co.rate)
	var changes atomic.Int64
	u0, c0, k0 := a.updateCount(), cpuTime(pid), cpuTime(cpid)
	cctx, stop := context.WithTimeout(ctx, co.window)
	churner(cctx, c, insts, co.rate, &changes).Wait()
	stop()
	time.Sleep(time.Second) // the last changes land
	res.changes, res.updates = int(changes.Load()), a.updateCount()-u0
	res.agentCPU = cpuTime(pid) - c0 - res.idleCPU
	res.consulCPU = cpuTime(cpid) - k0

	// Requests/s, calm and under churn.
	url := "http://" + addrs[0] + "/"
	progress("churn %v: wrk calm, then under churn", sh)
	if res.rpsCalm, res.wrkErrors, res.calmCPU, err = wrkShare(ctx, a, cpid, url, host, co.wrkConns, co.wrkDuration); err != nil {
		res.err = err
		return res
	}
	cctx, stop = context.WithCancel(ctx)
	wg := churner(cctx, c, insts, co.rate, &changes)
	rps, errs, share, err := wrkShare(ctx, a, cpid, url, host, co.wrkConns, co.wrkDuration)
	res.rpsChurn, res.churnCPU = rps, share
	res.rpsChurn, res.wrkErrors = rps, res.wrkErrors+errs
	if err != nil {
		stop()
		wg.Wait()
		res.err = err
		return res
	}

	// Join and leave, with the churn going on and light load: the new
	// instance weighs as much as the rest of its service, so it gets
	// half of the requests once it is in the pool.
	progress("churn %v: %d join/leave trials under churn", sh, co.trials)
	lctx, stopLoad := context.WithCancel(ctx)
	var requests, failed atomic.Int64
	lwg := loadHost(lctx, url, host, &requests, &failed)
	for i := range co.trials {
		b, err := newBackend(fmt.Sprintf("join-%d", i))
		if err != nil {
			res.err = err
			break
		}
		// With a passing check, as the registrar registers an instance:
		// above 16 services that is what names the service to read at
		// once; a check-less one waits for the hub's next full pass.
		in := synthInstance{node: nodes[0], service: names[0], id: fmt.Sprintf("join-%d", i), addr: "127.0.0.1", port: b.port(), weight: sh.perSvc, check: true}
		t0 := time.Now()
		if err := registerSynthetic(c, nil, []synthInstance{in}); err != nil {
			b.close()
			res.err = err
			break
		}
		select {
		case <-b.served:
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
		}
		if b.first.Load() == 0 {
			b.close()
			res.err = fmt.Errorf("trial %d: the joining instance got no request within 10s", i)
			break
		}
		res.join = append(res.join, time.Duration(b.first.Load()-t0.UnixNano()))
		time.Sleep(500 * time.Millisecond)
		t2 := time.Now()
		if err := deleteInstance(c, in); err != nil {
			b.close()
			res.err = err
			break
		}
		// Pacing plus one read is under 1 s; wait well past it.
		time.Sleep(2 * time.Second)
		res.leave = append(res.leave, max(0, time.Duration(b.last.Load()-t2.UnixNano())))
		b.close()
	}
	stopLoad()
	lwg.Wait()
	stop()
	wg.Wait()
	res.trialReqs, res.trialFails = requests.Load(), failed.Load()
	res.rss, res.hwm, _ = memKiB(a.pid())

	// The churn alone: the agent stopped, no requests.
	a.stop()
	time.Sleep(time.Second)
	k0, s0, t0 := cpuTime(cpid), cpuTime(os.Getpid()), time.Now()
	cctx, stop = context.WithTimeout(ctx, co.window)
	churner(cctx, c, insts, co.rate, &changes).Wait()
	stop()
	res.churnAlone = cpuShare{wall: time.Since(t0), consul: cpuTime(cpid) - k0, self: cpuTime(os.Getpid()) - s0}
	return res
}

// loadHost is load with a Host header.
func loadHost(ctx context.Context, url, host string, requests, failed *atomic.Int64) *sync.WaitGroup {
	if host == "" {
		return load(ctx, url, requests, failed)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
			defer client.CloseIdleConnections()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Host = host
				resp, err := client.Do(req)
				if ctx.Err() != nil {
					return
				}
				requests.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		}()
	}
	return &wg
}

// queryCosts reads the service's health five times in each variant and
// reports the median time, Consul's CPU per read and the size.
func queryCosts(srv *consultest.Server, service string) []queryCost {
	base := fmt.Sprintf("http://%s/v1/health/service/%s", srv.HTTPAddr, service)
	var out []queryCost
	for _, v := range []struct{ name, query, enc string }{
		{"plain, identity (the agent's read)", "", "identity"},
		{"plain, gzip (consul/api's default)", "", "gzip"},
		{"?stale, identity", "?stale", "identity"},
		{"?cached, identity", "?cached", "identity"},
		// A blocking query on an index already passed returns at once, as
		// the agent's reads do under churn; Consul 1.10+ answers every
		// blocking health query from its streaming backend.
		{"?index=1, identity (the agent's reads under churn)", "?index=1", "identity"},
	} {
		qc := queryCost{name: v.name}
		var times []time.Duration
		k0 := cpuTime(srv.PID())
		for range 5 {
			req, _ := http.NewRequest(http.MethodGet, base+v.query, nil)
			req.Header.Set("Accept-Encoding", v.enc)
			t := time.Now()
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				break
			}
			qc.bytes, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			qc.backend = resp.Header.Get("X-Consul-Query-Backend")
			if xc := resp.Header.Get("X-Cache"); xc != "" {
				qc.backend += " " + xc
			}
			times = append(times, time.Since(t))
		}
		qc.cpu = (cpuTime(srv.PID()) - k0) / 5
		qc.wall = pct(times, 50)
		out = append(out, qc)
	}
	return out
}

// rssShape loads sh.services × sh.perSvc catalog-only instances and
// reports the agent's memory once every pool is loaded.
func rssShape(ctx context.Context, srv *consultest.Server, agentBin string, env []string, work string, sh shape, agentFlags []string) (res churnResult) {
	res.shape = sh
	c := srv.Client()
	const perNode = 100
	var names, nodes []string
	var insts []synthInstance
	for s := range sh.services {
		name := fmt.Sprintf("r%04d", s)
		names = append(names, name)
		for j := range sh.perSvc {
			k := s*sh.perSvc + j
			if k%perNode == 0 {
				nodes = append(nodes, fmt.Sprintf("rss-%05d", k/perNode))
			}
			insts = append(insts, synthInstance{node: nodes[len(nodes)-1], service: name, id: fmt.Sprintf("%s-%d", name, j), port: 10000 + j,
				meta: map[string]string{"version": "1", "host": nodes[len(nodes)-1]}})
		}
	}
	defer func() { _ = deleteNodes(c, nodes) }()
	addrs, err := freePorts(2)
	if err != nil {
		res.err = err
		return res
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listener \"web\" {\n  address = %q\n", addrs[0])
	for _, s := range names {
		fmt.Fprintf(&b, "  route {\n    host = \"%s.bench.example\"\n    service = %q\n  }\n", s, s)
	}
	b.WriteString("}\n")
	cfg := filepath.Join(work, "rss.hcl")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		res.err = err
		return res
	}
	progress("rss %v: starting the agent", sh)
	a, err := startAgent(ctx, agentBin, addrs[1], env, append([]string{"--config", cfg}, agentFlags...)...)
	if err != nil {
		res.err = err
		return res
	}
	defer a.stop()
	want := map[string]int{}
	for _, in := range insts {
		want[in.service]++
	}
	progress("rss %v: registering %d instances", sh, len(insts))
	start := time.Now()
	if err := registerSynthetic(c, nodes, insts); err != nil {
		res.err = err
		return res
	}
	end := time.Now()
	latest, err := waitLoaded(ctx, a, want, start)
	if err != nil {
		res.err = err
		res.rss, res.hwm, _ = memKiB(a.pid())
		return res
	}
	res.load = max(0, latest.Sub(end))
	time.Sleep(5 * time.Second)
	res.rss, res.hwm, _ = memKiB(a.pid())
	res.warnings, _ = a.warnCount()
	return res
}

func printChurn(out io.Writer, co churnOptions, rows []churnResult, rss churnResult) {
	fmt.Fprintf(out, "## Discovery under churn\n\n")
	if len(co.agentFlags) > 0 {
		fmt.Fprintf(out, "Agent flags added: `%s`.\n\n", strings.Join(co.agentFlags, " "))
	}
	fmt.Fprintf(out, "Catalog-only instances pointing at 4 backends in the bench process; %.0f re-registrations a second with a new `v` meta value, each of a random instance. ", co.rate)
	fmt.Fprintf(out, "Agent CPU per update: the agent's user+system time from /proc over %v of changes plus 1 s (no requests), less its CPU over the same time without changes, divided by the `pool updated` lines in that time. ", co.window)
	fmt.Fprintf(out, "rps: `wrk -t1 -c%d -d%v` through the agent, calm then under the same churn. Join → first served / leave → last served: %d trials under churn with ≈2,000 requests/s, the joining instance weighted as much as the rest of its service and registered with a passing check, as the registrar registers instances.\n\n", co.wrkConns, co.wrkDuration, co.trials)
	fmt.Fprintf(out, "| services × instances | changes | pool updates | agent CPU per update | agent idle CPU | Consul CPU | rps calm | rps churn | churn / calm | wrk errors | join → first served p50 / p99 | leave → last served p50 / p99 | trial requests failed | agent RSS | peak RSS | WARN/ERROR lines |\n")
	fmt.Fprintf(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(out, "| %v | **failed**: %s |\n", r.shape, strings.ReplaceAll(r.err.Error(), "\n", " "))
			continue
		}
		per := "–"
		if r.updates > 0 {
			per = ms(r.agentCPU/time.Duration(r.updates)) + " ms"
		}
		ratio := 0.0
		if r.rpsCalm > 0 {
			ratio = r.rpsChurn / r.rpsCalm
		}
		fmt.Fprintf(out, "| %v | %d | %d | %s | %s ms / %v | %.2f cores | %.0f | %.0f | %.2f | %d | %s / %s ms | %s / %s ms | %d of %d | %s | %s | %d |\n",
			r.shape, r.changes, r.updates, per, ms(r.idleCPU), r.windowLen, float64(r.consulCPU)/float64(r.windowLen),
			r.rpsCalm, r.rpsChurn, ratio, r.wrkErrors, ms(pct(r.join, 50)), ms(pct(r.join, 99)), ms(pct(r.leave, 50)), ms(pct(r.leave, 99)),
			r.trialFails, r.trialReqs, mib(r.rss), mib(r.hwm), r.warnings)
	}
	fmt.Fprintf(out, "\nWhere the CPU went during the wrk runs (cores: CPU time / wall time of the run; \"bench\" is this process: the backends, the churn's registrations, the load):\n\n")
	fmt.Fprintf(out, "| services × instances | run | rps | agent | Consul | bench | wrk | total | pool updates |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		if r.err != nil {
			continue
		}
		for _, x := range []struct {
			name string
			rps  float64
			c    cpuShare
		}{{"calm", r.rpsCalm, r.calmCPU}, {"churn", r.rpsChurn, r.churnCPU}, {"churn, agent stopped, no requests", 0, r.churnAlone}} {
			c := x.c
			rps := "–"
			if x.rps > 0 {
				rps = fmt.Sprintf("%.0f", x.rps)
			}
			fmt.Fprintf(out, "| %v | %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %d |\n", r.shape, x.name, rps,
				c.cores(c.agent), c.cores(c.consul), c.cores(c.self), c.cores(c.wrk), c.cores(c.agent+c.consul+c.self+c.wrk), c.updates)
		}
	}
	for _, r := range rows {
		if len(r.queries) == 0 {
			continue
		}
		fmt.Fprintf(out, "\nConsul's cost of one `/v1/health/service` read at %v (5 reads each, Consul dev agent):\n\n", r.shape)
		fmt.Fprintf(out, "| variant | median time | Consul CPU per read | size | backend |\n|---|---:|---:|---:|---|\n")
		for _, q := range r.queries {
			fmt.Fprintf(out, "| %s | %s ms | %s ms | %s | %s |\n", q.name, ms(q.wall), ms(q.cpu), kb(q.bytes), q.backend)
		}
	}
	for _, r := range rows {
		if len(r.warnSample) > 0 {
			fmt.Fprintf(out, "\nSample agent warnings (%v):\n\n```\n%s\n```\n", r.shape, strings.Join(r.warnSample, "\n"))
		}
	}
	fmt.Fprintf(out, "\nMemory at %v (catalog-only instances, two meta keys each): ", rss.shape)
	if rss.err != nil {
		fmt.Fprintf(out, "**failed**: %v (RSS %s)\n", rss.err, mib(rss.rss))
		return
	}
	fmt.Fprintf(out, "agent RSS %s, peak %s, every pool loaded %s ms after the last registration, %d WARN/ERROR lines.\n", mib(rss.rss), mib(rss.hwm), ms(rss.load), rss.warnings)
}
