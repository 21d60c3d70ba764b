// Command discovery measures how closely meshlb's agent follows Consul, for
// bench/run.sh: the time from an instance passing in Consul to the first
// request the agent sends it, and from its removal to the last; the agent's
// memory and pool-update time with 10,000 instances of one service and with
// 1,000 services of 10; and the connections the agent holds to its Consul
// agent. It starts its own Consul dev agent (internal/testing/consultest) and agent
// processes, prints a markdown report on stdout and progress on stderr. It
// measures only from outside (logs, /proc, HTTP); it must not import the
// agent's packages, so it measures the binary users run.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// raisedConnLimit is Consul's limits.http_max_conns_per_client for the
// second run of the many-services scenario.
const raisedConnLimit = 4096

// eventGap separates successive catalog changes to one service: a
// registrar's first probe comes --check-interval (1 s) after it registers,
// and the agent's watch paces its queries (burst 2, one per 500 ms).
const eventGap = time.Second

type options struct {
	agent, consul, work, consulHCL string
	trials, updates                int
	instances, services, perSvc    int
	timeout                        time.Duration
	// churn runs only the churn scenarios (churn.go).
	churn     bool
	churnOpts churnOptions
}

func main() {
	var o options
	flag.StringVar(&o.agent, "agent", "bin/agent", "agent `BINARY` to measure")
	flag.StringVar(&o.consul, "consul", "", "consul `BINARY` (default: $CONSUL_BIN, bin/consul, PATH)")
	flag.StringVar(&o.work, "work", "", "scratch `DIR` (default: a new temporary folder, removed at the end)")
	flag.StringVar(&o.consulHCL, "consul-hcl", "", "extra `HCL` for the Consul dev agent, e.g. 'limits { http_max_conns_per_client = 2000 }'")
	flag.IntVar(&o.trials, "trials", 30, "add/remove trials (p50/p99 over them)")
	flag.IntVar(&o.updates, "updates", 10, "pool-update trials per scale scenario (each adds then removes one instance)")
	flag.IntVar(&o.instances, "instances", 10000, "instances of one service in the first scale scenario")
	flag.IntVar(&o.services, "services", 1000, "services in the second scale scenario")
	flag.IntVar(&o.perSvc, "per-service", 10, "instances per service in the second scale scenario")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.BoolVar(&o.churn, "churn", false, "run only the churn scenarios: agent CPU per pool update, rps under churn vs calm, join/leave under churn, RSS at -rss-shape")
	shapes := flag.String("churn-shapes", "1x10000,1000x10,100x1000", "`SxN,…`: services × instances per service for -churn")
	rssShapeFlag := flag.String("rss-shape", "1000x100", "`SxN`: services × instances for -churn's memory figure")
	flag.Float64Var(&o.churnOpts.rate, "churn-rate", 20, "catalog changes per second for -churn")
	flag.DurationVar(&o.churnOpts.window, "churn-window", 6*time.Second, "length of the CPU window of -churn")
	flag.DurationVar(&o.churnOpts.wrkDuration, "wrk-duration", 5*time.Second, "wrk run length for -churn (calm and churn each)")
	flag.IntVar(&o.churnOpts.wrkConns, "wrk-conns", 32, "wrk connections for -churn")
	flag.IntVar(&o.churnOpts.trials, "join-trials", 10, "join/leave trials per shape for -churn")
	flag.Func("agent-flag", "`FLAG` added to the agent's command line for -churn (repeatable), e.g. -agent-flag=--consul-cached", func(v string) error {
		o.churnOpts.agentFlags = append(o.churnOpts.agentFlags, v)
		return nil
	})
	flag.Parse()
	var err error
	if o.churnOpts.shapes, err = parseShapes(*shapes); err == nil {
		var rs []shape
		rs, err = parseShapes(*rssShapeFlag)
		if err == nil {
			o.churnOpts.rssShape = rs[0]
		}
	}
	if err != nil || o.churnOpts.rate <= 0 || o.churnOpts.window < time.Second || o.churnOpts.wrkDuration < time.Second || o.churnOpts.trials < 1 || o.churnOpts.wrkConns < 1 {
		fmt.Fprintf(os.Stderr, "discovery: invalid churn flags: %v (want shapes like 1x10000, -churn-rate > 0, -churn-window and -wrk-duration >= 1s, -join-trials and -wrk-conns >= 1)\n", err)
		os.Exit(2)
	}
	if o.trials < 1 || o.updates < 1 || o.instances < 1 || o.services < 1 || o.perSvc < 1 {
		fmt.Fprintln(os.Stderr, "discovery: -trials, -updates, -instances, -services and -per-service must be >= 1")
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancelT := context.WithTimeout(ctx, o.timeout)
	err = run(ctx, o, os.Stdout)
	cancelT()
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "discovery: %v\n", err)
		os.Exit(1)
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "discovery: "+format+"\n", args...)
}

func run(ctx context.Context, o options, out io.Writer) error {
	agentBin, err := filepath.Abs(o.agent)
	if err != nil {
		return err
	}
	if _, err := os.Stat(agentBin); err != nil {
		return fmt.Errorf("agent binary: %w (run `make build`)", err)
	}
	if o.consul != "" {
		os.Setenv("CONSUL_BIN", o.consul)
	}
	work := o.work
	if work == "" {
		if work, err = os.MkdirTemp("", "meshlb-discovery."); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	srv, err := consultest.Start(filepath.Join(work, "consul"), consultest.Options{ExtraHCL: o.consulHCL})
	if err != nil {
		return err
	}
	defer srv.Stop()
	c := srv.Client()
	progress("consul dev agent on %s", srv.HTTPAddr)
	if o.churn {
		env := []string{"CONSUL_HTTP_ADDR=" + srv.HTTPAddr}
		rows, rss := runChurn(ctx, o, o.churnOpts, srv, agentBin, env, work)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		printChurn(out, o.churnOpts, rows, rss)
		return nil
	}

	env := []string{"CONSUL_HTTP_ADDR=" + srv.HTTPAddr}
	trials, small, err := addRemoveTrials(ctx, o, c, agentBin, env, srv.HTTPPort)
	if err != nil {
		return fmt.Errorf("add/remove trials: %w", err)
	}
	big := scaleOneService(ctx, o, c, agentBin, env, srv.HTTPPort)
	many := scaleManyServices(ctx, o, c, agentBin, env, srv.HTTPPort, work)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	_ = srv.Stop()
	// Consul refuses more than limits.http_max_conns_per_client (default
	// 200) concurrent connections from one IP. An agent that holds one
	// blocking query per service needs more than that for 1,000 services;
	// measure it again with the limit raised, to see the rest of its figures.
	var raised scaleResult
	srv2, err := consultest.Start(filepath.Join(work, "consul2"), consultest.Options{ExtraHCL: fmt.Sprintf("%s\nlimits { http_max_conns_per_client = %d }", o.consulHCL, raisedConnLimit)})
	if err != nil {
		raised.err = err
		raised.name = "1,000 services with a raised Consul connection limit"
	} else {
		progress("consul dev agent with a raised connection limit on %s", srv2.HTTPAddr)
		raised = scaleManyServices(ctx, o, srv2.Client(), agentBin, []string{"CONSUL_HTTP_ADDR=" + srv2.HTTPAddr}, srv2.HTTPPort, work)
		raised.name = fmt.Sprintf("%d services × %d, Consul limits.http_max_conns_per_client = %d", o.services, o.perSvc, raisedConnLimit)
		_ = srv2.Stop()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	fmt.Fprintf(out, "## Discovery\n\n")
	fmt.Fprintf(out, "`go run ./bench/discovery` against a Consul dev agent on 127.0.0.1 and bin/agent (round robin, defaults). ")
	fmt.Fprintf(out, "Pool-update times are read from the agent's `pool updated` log line, as it is written; request times at the backends themselves.\n\n")
	fmt.Fprintf(out, "### An instance joins and leaves (%d trials, ≈%.0f requests/s through the agent meanwhile)\n\n", o.trials, trials.rate)
	fmt.Fprintf(out, "Each trial registers an instance with a critical TTL check, passes it 1 s later, deregisters it 1 s after that; changes 1 s apart, as a registrar makes them.\n\n")
	fmt.Fprintf(out, "| from → to | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{
		{"check passes in Consul → agent logs the new pool", trials.addPool},
		{"check passes in Consul → first request served by the instance", trials.addFirst},
		{"deregistered in Consul → agent logs the new pool", trials.removePool},
		{"deregistered in Consul → last request served by the instance", trials.removeLast},
	} {
		fmt.Fprintf(out, "| %s | %s | %s | %s |\n", row.name, ms(pct(row.d, 50)), ms(pct(row.d, 99)), ms(pct(row.d, 100)))
	}
	fmt.Fprintf(out, "\nRequests that failed during the trials: %d of %d.\n\n", trials.failed, trials.requests)

	fmt.Fprintf(out, "### Scale\n\n")
	fmt.Fprintf(out, "| pool | agent RSS before | RSS after | peak RSS | initial load → pool | pool update p50 | p99 | max | connections to Consul | agent WARN/ERROR lines | Consul's answer to one health query |\n")
	fmt.Fprintf(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	rows := []scaleResult{small, big, many, raised}
	for _, s := range rows {
		initial := "–"
		switch {
		case s.err != nil:
			initial = "**failed**: " + strings.ReplaceAll(s.err.Error(), "\n", " ")
		case s.initial > 0:
			initial = ms(s.initial) + " ms"
		}
		up := func(p float64) string {
			if len(s.updates) == 0 {
				return "–"
			}
			return ms(pct(s.updates, p)) + " ms"
		}
		query := "–"
		if s.query > 0 {
			query = fmt.Sprintf("%s ms, %s", ms(s.query), kb(s.queryBytes))
		}
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s |\n", s.name,
			mib(s.rssBefore), mib(s.rssAfter), mib(s.hwm), initial, up(50), up(99), up(100), s.conns, s.warnings, query)
	}
	fmt.Fprintf(out, "\nInitial load: from the last catalog write of the bulk registration to the agent's pool holding every instance. ")
	fmt.Fprintf(out, "Pool update: one instance added to or removed from a pool already that size (%d of each, 1 s apart), from the catalog write returning to the agent's log line. ", o.updates)
	fmt.Fprintf(out, "Connections: ESTABLISHED TCP connections from the agent's PID to Consul's HTTP port once the pools are loaded. RSS: /proc/PID/status VmRSS before registering and after the updates, and VmHWM. Consul's answer: the median time of a plain `/v1/health/service/NAME?passing` (the watch's query, non-blocking) for the first service, read to the end but not decoded, and its size: Consul's share of a pool update.\n")
	for _, s := range rows {
		if len(s.warnSample) > 0 {
			fmt.Fprintf(out, "\nSample agent warnings (%s):\n\n```\n%s\n```\n", s.name, strings.Join(s.warnSample, "\n"))
		}
	}
	return nil
}

// trialResult holds the add/remove figures.
type trialResult struct {
	addPool, addFirst, removePool, removeLast []time.Duration
	requests, failed                          int64
	rate                                      float64
}

// scaleResult is one row of the scale table.
type scaleResult struct {
	name                string
	rssBefore, rssAfter int
	hwm                 int
	initial             time.Duration
	updates             []time.Duration
	conns, warnings     int
	warnSample          []string
	err                 error
	// query is the median time Consul takes to answer one plain health
	// query of the first service (read to the end, not decoded); queryBytes
	// is the answer's size.
	query      time.Duration
	queryBytes int64
}

// backend is a tiny HTTP server answering its name; it records when it
// served its first and its last request.
type backend struct {
	name        string
	srv         *http.Server
	ln          net.Listener
	first, last atomic.Int64 // unix nanoseconds
	served      chan struct{}
	once        sync.Once
}

func newBackend(name string) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{name: name, ln: ln, served: make(chan struct{})}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().UnixNano()
		b.first.CompareAndSwap(0, now)
		b.last.Store(now)
		b.once.Do(func() { close(b.served) })
		io.WriteString(w, b.name)
	}), ReadHeaderTimeout: 5 * time.Second}
	go b.srv.Serve(ln)
	return b, nil
}

func (b *backend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }
func (b *backend) close()    { b.srv.Close() }

// load sends requests through the agent from two clients, each about one
// per millisecond, until ctx ends: enough to see within a millisecond or
// two when the agent starts or stops sending to an instance, without
// loading the shared cores.
func load(ctx context.Context, url string, requests, failed *atomic.Int64) *sync.WaitGroup {
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
				resp, err := client.Get(url)
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

func freePorts(n int) ([]string, error) {
	ports, err := testproc.FreePorts(n)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, n)
	for i, p := range ports {
		addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	return addrs, nil
}

// addRemoveTrials registers a base instance, then o.trials times: registers
// a new instance with a critical check, marks it passing, waits for its
// first request through the agent, deregisters it, and waits for its last.
func addRemoveTrials(ctx context.Context, o options, c *api.Client, agentBin string, env []string, consulPort int) (trialResult, scaleResult, error) {
	var res trialResult
	small := scaleResult{name: "1 service × 2 instances (the trials)"}
	const svc = "trial"
	base, err := newBackend("base")
	if err != nil {
		return res, small, err
	}
	defer base.close()
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "trial-base", Name: svc, Address: "127.0.0.1", Port: base.port(),
		Check: &api.AgentServiceCheck{CheckID: "trial-base", TTL: "1h", Status: api.HealthPassing}}); err != nil {
		return res, small, fmt.Errorf("register base instance: %w", err)
	}
	addrs, err := freePorts(2)
	if err != nil {
		return res, small, err
	}
	a, err := startAgent(ctx, agentBin, addrs[1], env, "--listen", addrs[0], "--service", svc)
	if err != nil {
		return res, small, err
	}
	defer a.stop()
	if _, err := a.waitPool(ctx, svc, 1, time.Time{}, 30*time.Second); err != nil {
		return res, small, err
	}
	small.rssBefore, _, _ = memKiB(a.pid())

	lctx, stopLoad := context.WithCancel(ctx)
	var requests, failed atomic.Int64
	loadStart := time.Now()
	wg := load(lctx, "http://"+addrs[0]+"/", &requests, &failed)
	defer func() { stopLoad(); wg.Wait() }()

	progress("add/remove trials: %d", o.trials)
	for i := range o.trials {
		if ctx.Err() != nil {
			return res, small, ctx.Err()
		}
		id := fmt.Sprintf("trial-%d", i)
		b, err := newBackend(id)
		if err != nil {
			return res, small, err
		}
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: svc, Address: "127.0.0.1", Port: b.port(),
			Check: &api.AgentServiceCheck{CheckID: id, TTL: "1h", Status: api.HealthCritical}}); err != nil {
			b.close()
			return res, small, fmt.Errorf("register %s: %w", id, err)
		}
		// The registrar passes the check after its first probe, --check-interval
		// (1 s) after registering. Waiting as long also lets the agent's watch
		// read the critical registration first, so the figure is "passing →
		// served", and refills its query pacing (a token bucket: burst 2, one
		// per 500 ms), which otherwise adds up to 500 ms to changes that come
		// in a burst.
		time.Sleep(eventGap)
		t0 := time.Now()
		if err := c.Agent().UpdateTTL(id, "", api.HealthPassing); err != nil {
			b.close()
			return res, small, fmt.Errorf("pass %s: %w", id, err)
		}
		logged, err := a.waitPool(ctx, svc, 2, t0, 10*time.Second)
		if err != nil {
			b.close()
			return res, small, fmt.Errorf("trial %d, adding: %w", i, err)
		}
		select {
		case <-b.served:
		case <-time.After(10 * time.Second):
			b.close()
			return res, small, fmt.Errorf("trial %d: the new instance got no request within 10s of passing", i)
		case <-ctx.Done():
			b.close()
			return res, small, ctx.Err()
		}
		res.addPool = append(res.addPool, logged.Sub(t0))
		res.addFirst = append(res.addFirst, time.Duration(b.first.Load()-t0.UnixNano()))

		time.Sleep(eventGap)
		t2 := time.Now()
		if err := c.Agent().ServiceDeregister(id); err != nil {
			b.close()
			return res, small, fmt.Errorf("deregister %s: %w", id, err)
		}
		logged, err = a.waitPool(ctx, svc, 1, t2, 10*time.Second)
		if err != nil {
			b.close()
			return res, small, fmt.Errorf("trial %d, removing: %w", i, err)
		}
		// Requests already on their way to it still land; then nothing should.
		time.Sleep(200 * time.Millisecond)
		last := time.Duration(b.last.Load() - t2.UnixNano())
		res.removePool = append(res.removePool, logged.Sub(t2))
		res.removeLast = append(res.removeLast, max(0, last))
		b.close()
	}
	stopLoad()
	wg.Wait()
	res.requests, res.failed = requests.Load(), failed.Load()
	res.rate = float64(res.requests) / time.Since(loadStart).Seconds()
	small.rssAfter, small.hwm, _ = memKiB(a.pid())
	small.conns, _ = consulConns(a.pid(), consulPort)
	small.updates = append(append([]time.Duration(nil), res.addPool...), res.removePool...)
	small.warnings, small.warnSample = a.warnCount()
	_ = c.Agent().ServiceDeregister("trial-base")
	return res, small, nil
}

// scaleOneService loads o.instances instances of one service.
func scaleOneService(ctx context.Context, o options, c *api.Client, agentBin string, env []string, consulPort int) scaleResult {
	res := scaleResult{name: fmt.Sprintf("1 service × %d instances", o.instances)}
	const svc = "big"
	const perNode = 100
	var nodes []string
	var insts []synthInstance
	for i := range o.instances {
		if i%perNode == 0 {
			nodes = append(nodes, fmt.Sprintf("bench-big-%04d", i/perNode))
		}
		insts = append(insts, synthInstance{node: nodes[len(nodes)-1], service: svc, id: fmt.Sprintf("big-%05d", i), port: 10000 + i%50000})
	}
	defer func() { _ = deleteNodes(c, nodes) }()
	res.err = measureScale(ctx, o, c, agentBin, env, consulPort, &res, []string{svc}, nodes, insts,
		"--service", svc)
	return res
}

// scaleManyServices loads o.services services of o.perSvc instances, served
// by one listener with a host route per service.
func scaleManyServices(ctx context.Context, o options, c *api.Client, agentBin string, env []string, consulPort int, work string) scaleResult {
	res := scaleResult{name: fmt.Sprintf("%d services × %d instances", o.services, o.perSvc)}
	const perNode = 100
	var nodes, services []string
	var insts []synthInstance
	for s := range o.services {
		name := fmt.Sprintf("s%04d", s)
		services = append(services, name)
		for j := range o.perSvc {
			k := s*o.perSvc + j
			if k%perNode == 0 {
				nodes = append(nodes, fmt.Sprintf("bench-many-%04d", k/perNode))
			}
			insts = append(insts, synthInstance{node: nodes[len(nodes)-1], service: name, id: fmt.Sprintf("%s-%d", name, j), port: 10000 + j})
		}
	}
	defer func() { _ = deleteNodes(c, nodes) }()
	listen, err := freePorts(1)
	if err != nil {
		res.err = err
		return res
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listener \"web\" {\n  address = %q\n", listen[0])
	for _, s := range services {
		fmt.Fprintf(&b, "  route {\n    host = \"%s.bench.example\"\n    service = %q\n  }\n", s, s)
	}
	b.WriteString("}\n")
	cfg := filepath.Join(work, "many.hcl")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		res.err = err
		return res
	}
	res.err = measureScale(ctx, o, c, agentBin, env, consulPort, &res, services, nodes, insts,
		"--config", cfg)
	return res
}

// measureScale starts an agent watching services, registers insts, and
// measures memory, the initial load, o.updates single-instance updates and
// the connections to Consul.
func measureScale(ctx context.Context, o options, c *api.Client, agentBin string, env []string, consulPort int,
	res *scaleResult, services, nodes []string, insts []synthInstance, args ...string) error {
	addrs, err := freePorts(2)
	if err != nil {
		return err
	}
	if args[0] == "--service" {
		args = append([]string{"--listen", addrs[0]}, args...)
	}
	progress("%s: starting the agent", res.name)
	a, err := startAgent(ctx, agentBin, addrs[1], env, args...)
	if err != nil {
		return err
	}
	defer a.stop()
	time.Sleep(time.Second) // let it settle before the baseline
	res.rssBefore, _, _ = memKiB(a.pid())

	progress("%s: registering %d instances", res.name, len(insts))
	want := map[string]int{}
	for _, in := range insts {
		want[in.service]++
	}
	start := time.Now()
	if err := registerSynthetic(c, nodes, insts); err != nil {
		return err
	}
	end := time.Now()
	progress("%s: registered in %v", res.name, end.Sub(start).Round(time.Millisecond))
	latest, err := waitLoaded(ctx, a, want, start)
	if err != nil {
		res.warnings, res.warnSample = a.warnCount()
		res.conns, _ = consulConns(a.pid(), consulPort)
		res.rssAfter, res.hwm, _ = memKiB(a.pid())
		return fmt.Errorf("%w (%d connections to Consul)", err, res.conns)
	}
	res.initial = max(0, latest.Sub(end))
	time.Sleep(2 * time.Second)
	res.conns, _ = consulConns(a.pid(), consulPort)
	res.query, res.queryBytes = timeHealthQuery(consulPort, services[0])

	progress("%s: %d pool updates", res.name, o.updates)
	for k := range o.updates {
		// Space the updates as in the trials, for the same reason.
		time.Sleep(eventGap)
		s := services[(k*37)%len(services)]
		extra := synthInstance{node: nodes[0], service: s, id: fmt.Sprintf("%s-extra-%d", s, k), port: 9999}
		t := time.Now()
		if err := registerSynthetic(c, nil, []synthInstance{extra}); err != nil {
			return err
		}
		at, err := a.waitPool(ctx, s, want[s]+1, t, 30*time.Second)
		if err != nil {
			return fmt.Errorf("update %d (add): %w", k, err)
		}
		res.updates = append(res.updates, at.Sub(t))
		time.Sleep(eventGap)
		t = time.Now()
		if err := deleteInstance(c, extra); err != nil {
			return err
		}
		at, err = a.waitPool(ctx, s, want[s], t, 30*time.Second)
		if err != nil {
			return fmt.Errorf("update %d (remove): %w", k, err)
		}
		res.updates = append(res.updates, at.Sub(t))
	}
	res.rssAfter, res.hwm, _ = memKiB(a.pid())
	if n, err := consulConns(a.pid(), consulPort); err == nil && n > res.conns {
		res.conns = n
	}
	res.warnings, res.warnSample = a.warnCount()
	return nil
}

// timeHealthQuery times five plain /v1/health/service/NAME?passing queries,
// the query the agent's watch makes, reading the body without decoding it:
// Consul's share of a pool update.
func timeHealthQuery(consulPort int, service string) (time.Duration, int64) {
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/health/service/%s?passing=1", consulPort, service)
	var times []time.Duration
	var size int64
	for range 5 {
		t := time.Now()
		resp, err := http.Get(url)
		if err != nil {
			return -1, 0
		}
		size, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		times = append(times, time.Since(t))
	}
	return pct(times, 50), size
}

// waitLoaded waits until the agent has logged every service of want with
// its full instance count after start, and returns when the last one was.
// It gives up when no pool has completed for 20 s, or after a minute.
func waitLoaded(ctx context.Context, a *agentProc, want map[string]int, start time.Time) (time.Time, error) {
	begin, progressAt, lastDone := time.Now(), time.Now(), 0
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var latest time.Time
		done := 0
		for s, ev := range a.poolEvents() {
			if n, ok := want[s]; ok && ev.instances == n && !ev.at.Before(start) {
				done++
				if ev.at.After(latest) {
					latest = ev.at
				}
			}
		}
		if done == len(want) {
			return latest, nil
		}
		if done > lastDone {
			lastDone, progressAt = done, time.Now()
		}
		if time.Since(progressAt) > 20*time.Second || time.Since(begin) > time.Minute {
			return time.Time{}, fmt.Errorf("%d of %d pools complete %v after registering, none completed in the last %v",
				done, len(want), time.Since(begin).Round(time.Second), time.Since(progressAt).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-a.proc.Done:
			return time.Time{}, fmt.Errorf("agent exited:\n%s", a.logTail())
		case <-tick.C:
		}
	}
}

// pct returns the p-th percentile (nearest rank) of d; p = 100 is the max.
func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return -1
	}
	s := slices.Clone(d)
	slices.Sort(s)
	k := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func ms(d time.Duration) string {
	if d < 0 {
		return "–"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64)
}

func kb(n int64) string {
	if n >= 1<<20 {
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	}
	return strconv.FormatFloat(float64(n)/1024, 'f', 1, 64) + " KiB"
}

func mib(kib int) string {
	if kib <= 0 {
		return "–"
	}
	return strconv.FormatFloat(float64(kib)/1024, 'f', 1, 64) + " MiB"
}
