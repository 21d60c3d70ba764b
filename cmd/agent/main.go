// Command agent is meshlb's edge: it follows Consul's healthy instances of
// one or more services with blocking queries and balances client requests
// over them. See --help.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshlb/meshlb/discovery"
	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/internal/admin/adminclient"
	"github.com/meshlb/meshlb/internal/agentconfig"
	"github.com/meshlb/meshlb/internal/certreload"
	"github.com/meshlb/meshlb/internal/cli"
	"github.com/meshlb/meshlb/internal/httpguard"
	"github.com/meshlb/meshlb/internal/recent"
	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy"
	"github.com/meshlb/meshlb/proxy/httpcache"
	"github.com/meshlb/meshlb/tracing"
)

const (
	exitOK       = 0
	exitFailure  = 1
	exitBadInput = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the agent's main: a subcommand, or the agent itself.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] { // the clients of a running agent's admin API
		case "status":
			return adminclient.Status(args[1:], stdout, stderr)
		case "requests":
			return adminclient.Requests(args[1:], stdout, stderr)
		case "cache":
			return adminclient.Cache(args[1:], stdout, stderr)
		}
	}
	cfg, err := agentconfig.Parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "agent: %v\n", err)
		return exitBadInput
	}
	logger, err := cli.NewLogger("agent", cfg.LogLevel, cfg.LogJSON, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "agent: %v\n", err)
		return exitBadInput
	}
	a, err := newAgent(cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "agent: %v\n", err)
		return exitBadInput
	}
	return a.run()
}

// serviceState is one watched service: its local watch feeds its Failover
// (through the feed's empty-pool grace), which ranks the local instances,
// the backups and the failover datacenters' into the balancer's tiers.
type serviceState struct {
	name     string
	balancer *lb.Balancer
	watcher  *discovery.Watcher
	feed     *discovery.LocalFeed
	failover *discovery.Failover
}

type agent struct {
	cfg      *agentconfig.Config
	log      hclog.Logger
	client   *api.Client
	services map[string]*serviceState
	ordered  []*serviceState
	requests *proxy.RequestMetrics // meshlb_http_requests_total and its histogram

	listeners []net.Listener
	servers   []*http.Server
	loops     []*proxy.LoopServer    // one per server: its HTTP/1.1 event loops (nil under TLS or --event-loops 0)
	certs     []*certreload.Reloader // per listener, nil without TLS
	upTLS     *tls.Config            // to instances tagged https; nil: system roots, no client certificate
	upCert    *certreload.Reloader   // the client certificate in upTLS, if any
	proxies   []*proxy.Proxy
	admin     *http.Server
	adminLn   net.Listener
	adminAPI  *admin.Server

	tracingShutdown func(context.Context) error
	tracingOn       bool

	saveMu   sync.Mutex
	saveKick chan struct{}

	caches      []httpcache.Named    // every HTTP cache, for metrics and the admin API
	routeCaches [][]*httpcache.Cache // by listener, by route; nil: none

	recent *recent.Ring // nil with --recent 0
}

func newAgent(cfg *agentconfig.Config, logger hclog.Logger) (*agent, error) {
	a := &agent{cfg: cfg, log: logger, services: map[string]*serviceState{}, saveKick: make(chan struct{}, 1)}
	upTLS, upCert, err := cfg.UpstreamTLS.Load()
	if err != nil {
		return nil, err
	}
	a.upTLS, a.upCert = upTLS, upCert
	copts := cfg.Consul
	copts.Watchers = min(len(cfg.Services), discovery.HubThreshold) // above it one hub shares few connections
	// The failover datacenters' long polls share the client too.
	for _, sc := range cfg.Services {
		copts.Watchers += len(sc.Failover.Datacenters)
	}
	client, err := discovery.NewClient(copts)
	if err != nil {
		return nil, err
	}
	a.client = client
	for _, sc := range cfg.Services {
		lbc := sc.LB
		lbc.Logger = logger.Named("lb").With("service", sc.Name)
		b, err := lb.NewBalancer(sc.Name, lbc)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", sc.Name, err)
		}
		s := &serviceState{name: sc.Name, balancer: b}
		a.services[sc.Name] = s
		a.ordered = append(a.ordered, s)
	}
	if err := a.newFailovers(); err != nil {
		return nil, err
	}
	if a.routeCaches, err = a.buildCaches(); err != nil {
		return nil, err
	}
	a.requests = proxy.NewRequestMetrics()
	if cfg.Recent > 0 {
		a.recent = recent.New(cfg.Recent)
	}
	for _, d := range cfg.Deprecated {
		logger.Warn(d)
	}
	return a, nil
}

func (a *agent) run() int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	shutdownTracing, on, err := tracing.Setup(ctx, tracing.Options{ServiceName: "meshlb-agent", Logger: a.log.Named("tracing")})
	if err != nil {
		a.log.Error("invalid tracing configuration", "error", err)
		return exitBadInput
	}
	a.tracingShutdown, a.tracingOn = shutdownTracing, on

	// Bind every port first: a taken port is a clear error before anything runs.
	if err := a.listen(); err != nil {
		a.log.Error("cannot listen", "error", err)
		a.closeListeners()
		return exitFailure
	}
	a.restoreSnapshot()
	a.buildAdminAPI()
	if err := a.buildServers(); err != nil {
		a.log.Error("invalid configuration", "error", err)
		a.closeListeners()
		return exitBadInput
	}

	var wg sync.WaitGroup
	followed := make([]discovery.Followed, 0, len(a.ordered))
	for _, s := range a.ordered {
		sc := a.cfg.Service(s.name)
		s := s
		followed = append(followed, discovery.Followed{Watch: discovery.WatchConfig{
			Service: s.name, Tag: sc.Tag, Stale: a.cfg.Stale, Cached: a.cfg.Cached,
			// A change lands within 100ms even when changes come back to back.
			QueryInterval: 100 * time.Millisecond,
			Logger:        a.log.Named("watch").With("service", s.name),
		}, OnUpdate: func(insts []lb.Instance) { a.onUpdate(ctx, s, insts) }})
	}
	follower, err := discovery.NewFollower(a.client, discovery.HubConfig{
		Stale: a.cfg.Stale, QueryInterval: 100 * time.Millisecond, Logger: a.log.Named("watch"),
	}, followed)
	if err != nil {
		a.log.Error("invalid watch", "error", err)
		a.closeListeners()
		return exitBadInput
	}
	for i, w := range follower.Watchers() {
		a.ordered[i].watcher = w
		a.ordered[i].feed.SetWatcher(w)
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = follower.Run(ctx) }()
	for _, s := range a.ordered {
		if f := s.failover; f.Active() { // the failover datacenters' watches
			wg.Add(1)
			go func() { defer wg.Done(); _ = f.Run(ctx) }()
		}
	}
	if a.cfg.SnapshotFile != "" {
		wg.Add(1)
		go func() { defer wg.Done(); a.saveLoop(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); a.adminAPI.Run(ctx) }()

	errc := make(chan error, len(a.servers)+1)
	for i, srv := range a.servers {
		ln := a.listeners[i]
		// The guard sits on the TCP listener: it checks HTTP/1 heads on
		// cleartext connections, passes TLS records through (Go's server must
		// see *tls.Conn for ALPN), and caps connections on both.
		ln = httpguard.Listen(ln, httpguard.Options{
			MaxHeaderBytes: a.cfg.MaxHeaderBytes,
			MaxConns:       a.cfg.MaxConns,
			Logger:         a.log,
		})
		serve := srv.Serve
		switch {
		case a.loops[i] != nil:
			// HTTP/1.1 on the event loops; what they hand off (bodies,
			// upgrades, h2c) goes on to srv, guarded again.
			serve = a.loops[i].Serve
		case srv.TLSConfig != nil:
			ln = tls.NewListener(ln, srv.TLSConfig)
		}
		go func() {
			if err := serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving %s: %w", ln.Addr(), err)
			}
		}()
	}
	if a.admin != nil {
		go func() {
			if err := a.admin.Serve(a.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin listener %s: %w", a.adminLn.Addr(), err)
			}
		}()
	}
	addrs := make([]string, 0, len(a.listeners))
	for _, ln := range a.listeners {
		addrs = append(addrs, ln.Addr().String())
	}
	names := make([]string, 0, len(a.services))
	for n := range a.services {
		names = append(names, n)
	}
	sort.Strings(names)
	adminAddr := "off"
	if a.adminLn != nil {
		adminAddr = a.adminLn.Addr().String()
	}
	a.log.Info("agent started", "listen", strings.Join(addrs, ","), "services", strings.Join(names, ","),
		"admin", adminAddr, "tracing", a.tracingOn)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	code := exitOK
wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				a.reloadCerts()
				continue
			}
			a.log.Info("signal received, shutting down gracefully", "signal", sig.String())
			break wait
		case err := <-errc:
			a.log.Error("listener failed", "error", err)
			code = exitFailure
			break wait
		}
	}
	a.shutdown(cancel, &wg)
	return code
}

// onUpdate applies a watch update to the service's pool and tells the
// proxies about the instances that left it because Consul reports them
// failed: they close their idle connections and send the idempotent
// requests waiting on them elsewhere at once, rather than waiting for TCP
// or the response header timeout; the others fail with 502.
func (a *agent) onUpdate(ctx context.Context, s *serviceState, insts []lb.Instance) {
	old := s.balancer.Pool()
	if !s.feed.Update(ctx, insts) || s.watcher == nil {
		return
	}
	gone := s.watcher.FailedLeft(old, insts)
	if len(gone) == 0 {
		return
	}
	n := 0
	for _, p := range a.proxies {
		n += p.InstancesLeft(gone)
	}
	ids := make([]string, len(gone))
	for i, in := range gone {
		ids[i] = in.ID
	}
	a.log.Info("failed instances left the pool: their waiting requests cancelled", "service", s.name, "instances", ids, "cancelled", n)
}

// newFailovers makes each service's Failover and the feed of its local
// watch.
func (a *agent) newFailovers() error {
	for _, s := range a.ordered {
		sc := a.cfg.Service(s.name)
		fc := sc.Failover
		fc.Service, fc.Tag = s.name, sc.Tag
		fc.Logger = a.log.Named("failover")
		f, err := discovery.NewFailover(a.client, fc, func(tiers []lb.Tier) { a.applyTiers(s, tiers) })
		if err != nil {
			return err
		}
		s.failover = f
		s.feed = discovery.NewLocalFeed(f, a.cfg.EmptyGrace, a.log.With("service", s.name))
	}
	return nil
}

// applyTiers publishes the ranked tiers. It runs under the Failover's lock,
// from the local update or a failover datacenter's watch.
func (a *agent) applyTiers(s *serviceState, tiers []lb.Tier) {
	s.balancer.UpdateTiers(tiers)
	n := 0
	for _, t := range tiers {
		n += len(t.Instances)
	}
	if len(tiers) > 0 && n > len(tiers[0].Instances) {
		a.log.Info("pool updated", "service", s.name, "instances", n, "tiers", len(s.balancer.Pool().Tiers()))
	} else {
		a.log.Info("pool updated", "service", s.name, "instances", n)
	}
	a.kickSave()
}

// reloadCerts reads every listener's TLS files again (SIGHUP). New
// handshakes get the new certificate; open connections are not dropped. A
// pair that fails to load is logged and the old one kept.
func (a *agent) reloadCerts() {
	for i, cr := range a.certs {
		if cr == nil {
			continue
		}
		cert, key := cr.Files()
		if err := cr.Reload(); err != nil {
			a.log.Error("TLS reload failed; keeping the previous certificate", "listener", a.cfg.Listeners[i].Name, "error", err)
			continue
		}
		a.log.Info("TLS certificate reloaded", "listener", a.cfg.Listeners[i].Name, "cert", cert, "key", key)
	}
	if a.upCert != nil {
		cert, key := a.upCert.Files()
		if err := a.upCert.Reload(); err != nil {
			a.log.Error("upstream TLS client certificate reload failed; keeping the previous one", "error", err)
			return
		}
		a.log.Info("upstream TLS client certificate reloaded", "cert", cert, "key", key)
	}
}

// listen binds the client listeners and the admin listener.
func (a *agent) listen() error {
	for _, l := range a.cfg.Listeners {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			return fmt.Errorf("listener %q on %s: %w", l.Name, l.Address, err)
		}
		a.listeners = append(a.listeners, ln)
	}
	if a.cfg.Admin != "" {
		ln, err := net.Listen("tcp", a.cfg.Admin)
		if err != nil {
			return fmt.Errorf("admin listener on %s: %w (use --admin ADDR or --admin off)", a.cfg.Admin, err)
		}
		a.adminLn = ln
	}
	return nil
}

func (a *agent) closeListeners() {
	for _, ln := range a.listeners {
		ln.Close()
	}
	if a.adminLn != nil {
		a.adminLn.Close()
	}
}

func (a *agent) buildServers() error {
	for li, l := range a.cfg.Listeners {
		routes := make([]proxy.Route, 0, len(l.Routes))
		for ri, r := range l.Routes {
			routes = append(routes, proxy.Route{Host: r.Host, PathPrefix: r.PathPrefix, Protocol: r.Protocol, Balancer: a.services[r.Service].balancer,
				Cache: a.routeCaches[li][ri], TryTimeout: a.cfg.Service(r.Service).TryTimeout})
		}
		p, err := proxy.New(proxy.Config{
			ConnectTimeout:        a.cfg.ConnectTimeout,
			ResponseHeaderTimeout: a.cfg.ResponseHeaderTimeout,
			IdleConnTimeout:       a.cfg.IdleTimeout,
			MaxAttempts:           a.cfg.MaxAttempts,
			TrustedProxies:        a.cfg.TrustedProxies,
			Logger:                a.log.Named("proxy").With("listener", l.Name),
			AccessLog:             a.cfg.AccessLog,
			Tracing:               a.tracingOn,
			OnFailure: func(service, instance, traceID string, status int) {
				a.adminAPI.RecordFailure(service, instance, traceID, status, time.Now())
			},
			UpstreamTLS: a.upTLS,
			Recorder:    a.recorder(),
		}, routes)
		if err != nil {
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		a.proxies = append(a.proxies, p)
		h := a.requests.Instrument(l.Name, proxy.LimitBody(a.cfg.MaxBodyBytes, p))
		sc := proxy.ServerConfig{
			ReadHeaderTimeout:    a.cfg.ReadHeaderTimeout,
			IdleTimeout:          120 * time.Second,
			MaxHeaderBytes:       a.cfg.MaxHeaderBytes,
			MaxConcurrentStreams: a.cfg.MaxStreams,
		}
		if err := sc.Validate(); err != nil {
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		srv := proxy.NewServer(l.Address, h, sc, a.log.Named("http"))
		// Lets the guard follow upgrades the server accepts or declines.
		srv.ConnState = httpguard.ConnState
		var cr *certreload.Reloader
		if l.CertFile != "" {
			var err error
			if cr, err = certreload.New(l.CertFile, l.KeyFile); err != nil {
				return fmt.Errorf("listener %q: %w", l.Name, err)
			}
			srv.TLSConfig = &tls.Config{
				MinVersion:     tls.VersionTLS12,
				GetCertificate: cr.GetCertificate,
				NextProtos:     []string{"h2", "http/1.1"},
			}
		}
		a.certs = append(a.certs, cr)
		a.servers = append(a.servers, srv)
		var loop *proxy.LoopServer // TLS listeners have none
		if srv.TLSConfig == nil && a.cfg.EventLoops > 0 {
			loop = proxy.NewLoopServer(srv, proxy.LoopOptions{
				Loops: a.cfg.EventLoops,
				// Connections handed to net/http are checked as before;
				// the cap is kept on the TCP listener.
				WrapHandoff: func(ln net.Listener) net.Listener {
					return httpguard.Listen(ln, httpguard.Options{MaxHeaderBytes: a.cfg.MaxHeaderBytes, Logger: a.log})
				},
				Detach: httpguard.Detach,
				Logger: a.log.Named("loop").With("listener", l.Name),
				// The requests the loop serves itself (no goroutine)
				// are counted as instrument counts the others.
				Proxy:   p,
				Observe: a.requests.Observer(l.Name),
			})
		}
		a.loops = append(a.loops, loop)
	}
	if a.adminLn != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", a.adminAPI.Healthz)
		reg := prometheus.NewRegistry()
		reg.MustRegister(a.requests, a.adminAPI.PoolCollector(), proxy.NewBudgetCollector(a.proxies),
			httpcache.NewCollector(a.caches), prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		// One port for browsers (HTTP/1) and gRPC clients (h2c). No
		// WriteTimeout: it would cut watch streams.
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		a.admin = &http.Server{Handler: a.adminAPI.Handler(mux), ReadHeaderTimeout: 5 * time.Second, Protocols: &protos}
	}
	return nil
}

// buildAdminAPI makes the admin API (gRPC, status page) over the pools.
func (a *agent) buildAdminAPI() {
	svcs := make([]admin.Service, 0, len(a.ordered))
	for _, s := range a.ordered {
		s := s
		svcs = append(svcs, admin.Service{Name: s.name, Balancer: s.balancer, Status: func() admin.WatchInfo {
			if s.watcher == nil {
				return admin.WatchInfo{}
			}
			st := s.watcher.Status()
			info := admin.WatchInfo{LastSuccess: st.LastSuccess, Errors: st.Errors, Index: st.Index}
			if st.LastError != nil {
				info.LastError = st.LastError.Error()
			}
			return info
		}, Datacenters: func() []admin.DatacenterInfo {
			var out []admin.DatacenterInfo
			for _, dc := range s.failover.Datacenters() {
				out = append(out, admin.DatacenterInfo{Datacenter: dc.Datacenter, Up: !dc.Failing})
			}
			return out
		}})
	}
	a.adminAPI = admin.New(admin.Options{Services: svcs, AllowRemote: a.cfg.AdminAllow, Logger: a.log.Named("admin"),
		Recent: a.recent, TraceUI: a.cfg.TraceUI, Caches: a.adminCaches()})
}

// recorder is the proxies' Recorder: the ring of recent requests, or none.
func (a *agent) recorder() proxy.Recorder {
	if a.recent == nil {
		return nil // not a nil *recent.Ring in a non-nil interface
	}
	return a.recent
}

// shutdown stops accepting, lets in-flight requests finish (bounded), stops
// the watches, saves the pools and flushes traces.
func (a *agent) shutdown(cancel context.CancelFunc, wg *sync.WaitGroup) {
	ctx, done := context.WithTimeout(context.Background(), 30*time.Second)
	defer done()
	var swg sync.WaitGroup
	for i, srv := range a.servers {
		swg.Add(1)
		if loop := a.loops[i]; loop != nil {
			go func() { defer swg.Done(); _ = loop.Shutdown(ctx) }()
			continue
		}
		go func() { defer swg.Done(); _ = srv.Shutdown(ctx) }()
	}
	swg.Wait()
	cancel() // ends watches, admin streams and the snapshot loop
	if a.admin != nil {
		_ = a.admin.Shutdown(ctx)
	}
	wg.Wait()
	a.saveSnapshot()
	for _, p := range a.proxies {
		p.CloseIdleConnections()
	}
	if a.tracingShutdown != nil {
		tctx, tdone := context.WithTimeout(context.Background(), 5*time.Second)
		_ = a.tracingShutdown(tctx)
		tdone()
	}
	a.log.Info("agent stopped")
}

// restoreSnapshot loads the last known pools so the agent serves at once
// after a restart, even before Consul answers. Consul's answers replace them.
func (a *agent) restoreSnapshot() {
	if a.cfg.SnapshotFile == "" {
		return
	}
	pools, err := discovery.LoadSnapshot(a.cfg.SnapshotFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		a.log.Warn("cannot restore the pool snapshot; waiting for Consul", "error", err)
		return
	}
	for name, insts := range pools {
		if s, ok := a.services[name]; ok && len(insts) > 0 {
			s.feed.Restore(insts)
			a.log.Info("pool restored from snapshot", "service", name, "instances", len(insts), "file", a.cfg.SnapshotFile)
		}
	}
}

func (a *agent) kickSave() {
	select {
	case a.saveKick <- struct{}{}:
	default:
	}
}

// saveLoop writes the snapshot after pool changes, at most once a second.
func (a *agent) saveLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.saveKick:
			a.saveSnapshot()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

func (a *agent) saveSnapshot() {
	if a.cfg.SnapshotFile == "" {
		return
	}
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	pools := map[string][]lb.Instance{}
	for _, s := range a.ordered {
		if pool := s.balancer.Pool(); pool != nil {
			pools[s.name] = discovery.SnapshotInstances(pool)
		}
	}
	if err := discovery.SaveSnapshot(a.cfg.SnapshotFile, pools); err != nil {
		a.log.Warn("cannot save the pool snapshot", "file", a.cfg.SnapshotFile, "error", err)
	}
}
