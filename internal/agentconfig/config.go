// Package agentconfig is the agent's configuration: the flags and the HCL
// config file (several listeners, services and routes), merged (a flag
// given on the command line wins over the file), checked, and resolved into
// one Config that the agent wires up. Defaults live in defaults. It reads
// files but opens no connection and starts nothing.
package agentconfig

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hclsimple"

	"github.com/meshlb/meshlb/discovery"
	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/internal/cli"
	"github.com/meshlb/meshlb/internal/recent"
	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy"
)

const usageHead = `agent: the meshlb edge. Clients call one host:port; the agent follows the
healthy instances of a Consul service live (blocking queries, no reloads) and
balances requests over them, retrying on another instance only what is safe.

Usage:
  agent --listen ADDR --service NAME [--balance POLICY] [flags]
  agent --config FILE [flags]                 several listeners, services, routes
  agent status [--admin ADDR] [--json] [--watch]   the pools, from a running agent
  agent cache purge [--prefix] [--admin ADDR] URL  drop stored responses
  agent requests [--admin ADDR] [--failed] [--slow DURATION] [--json]
                                              recent requests, from a running agent

Examples:
  agent --listen :8070 --service hello
  agent --listen :8070 --service hello --balance least_conn
  agent --config /etc/meshlb/agent.hcl
  agent --listen :8070 --service hello --cache 256m

Balancing policies (nginx names): round_robin (default, smooth weighted by
Consul's Service.Weights), least_conn, random_two, p2c_ewma,
hash:header:NAME, hash:cookie:NAME, hash:ip.
Passive health: --max-fails consecutive failures eject an instance for
--fail-timeout (doubling while it keeps failing), never all at once.
Instances tagged "backup" (per service backup_tag) get requests only when no
primary can take them, as nginx's backup servers; --failover-dc DC sends the
traffic to another Consul datacenter (watched all the time) while no local
instance passes (min_healthy in a failover block), and back.

Instances tagged "https" (registrars with --mesh-tls-cert) are reached over
TLS, verified against --upstream-tls-ca (default: the system roots); with
--upstream-tls-cert/--upstream-tls-key the agent presents a client
certificate (mTLS with --mesh-tls-client-ca), reloaded on SIGHUP; the CA
file is read at start.

Consul is reached through the standard CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_CACERT ... variables; --consul-* flags override them. The token needs
service:read on the services and node:read. Tracing uses the standard OTEL_*
variables (OTEL_EXPORTER_OTLP_ENDPOINT ...); without an endpoint it is off.

Flags:
`

// fileConfig is the HCL configuration file.
//
//	consul { address = "127.0.0.1:8500"  stale = false }
//	admin = "127.0.0.1:9070"
//	service "hello" {
//	  balance = "round_robin"  max_fails = 3  fail_timeout = "10s"  backup_tag = "backup"
//	  failover {                       # or prepared_query = "NAME"
//	    datacenters = ["dc2", "dc3"]
//	    min_healthy = 1
//	  }
//	}
//	listener "web" {
//	  address = ":8070"
//	  route { host = "api.example.com"  path_prefix = "/v1"  service = "hello" }
//	}
//	upstream_tls { ca_file = "ca.pem"  cert_file = "agent.pem"  key_file = "agent-key.pem" }
type fileConfig struct {
	Admin          *string          `hcl:"admin,optional"`
	SnapshotFile   *string          `hcl:"snapshot_file,optional"`
	AccessLog      *bool            `hcl:"access_log,optional"`
	FastLane       *bool            `hcl:"fast_lane,optional"` // deprecated: event_loops
	TrustedProxies []string         `hcl:"trusted_proxies,optional"`
	Consul         *fileConsul      `hcl:"consul,block"`
	Proxy          *fileProxy       `hcl:"proxy,block"`
	Services       []fileService    `hcl:"service,block"`
	Listeners      []fileListener   `hcl:"listener,block"`
	UpstreamTLS    *fileUpstreamTLS `hcl:"upstream_tls,block"`
	EventLoops     *int             `hcl:"event_loops,optional"`
	Recent         *int             `hcl:"recent,optional"`
	TraceUI        *string          `hcl:"trace_ui,optional"`

	// What only the flags give, which the file has no place for; overlay
	// sets it, HCL never does. serviceFlags: --max-fails, --fail-timeout,
	// --try-timeout and --failover-dc, the default of every service
	// without its own setting, and --balance, the policy of the service
	// --service names (over its block). trustedFlags: how many of
	// TrustedProxies, at the end, --trusted-proxy added to the file's.
	serviceFlags *fileService
	trustedFlags int
}

// fileUpstreamTLS is TLS to instances tagged "https"; see proxy.UpstreamTLSFiles.
type fileUpstreamTLS struct {
	CAFile     *string `hcl:"ca_file,optional"`
	CertFile   *string `hcl:"cert_file,optional"`
	KeyFile    *string `hcl:"key_file,optional"`
	ServerName *string `hcl:"server_name,optional"`
}

type fileConsul struct {
	Address   *string `hcl:"address,optional"`
	TokenFile *string `hcl:"token_file,optional"`
	Stale     *bool   `hcl:"stale,optional"`
	Cached    *bool   `hcl:"cached,optional"` // deprecated: consul_cached
	// ConsulCached uses the Consul agent's cache for health queries.
	ConsulCached *bool `hcl:"consul_cached,optional"`
}

type fileProxy struct {
	ConnectTimeout        *string `hcl:"connect_timeout,optional"`
	ResponseHeaderTimeout *string `hcl:"response_header_timeout,optional"`
	IdleTimeout           *string `hcl:"idle_timeout,optional"`
	MaxAttempts           *int    `hcl:"max_attempts,optional"`
	MaxHeaderBytes        *int    `hcl:"max_header_bytes,optional"`
	MaxBodySize           *string `hcl:"max_body_size,optional"`
	MaxConcurrentStreams  *int    `hcl:"max_concurrent_streams,optional"`
	MaxConns              *int    `hcl:"max_conns,optional"`
	ReadHeaderTimeout     *string `hcl:"read_header_timeout,optional"`
}

type fileService struct {
	Name        string        `hcl:"name,label"`
	Balance     *string       `hcl:"balance,optional"`
	Tag         *string       `hcl:"tag,optional"`
	MaxFails    *int          `hcl:"max_fails,optional"`
	FailTimeout *string       `hcl:"fail_timeout,optional"`
	BackupTag   *string       `hcl:"backup_tag,optional"`
	Failover    *fileFailover `hcl:"failover,block"`
	TryTimeout  *string       `hcl:"try_timeout,optional"`

	flags bool // serviceFlags: errors name the flags
}

// fileFailover is a service's failover across Consul datacenters.
type fileFailover struct {
	Datacenters   []string `hcl:"datacenters,optional"`
	MinHealthy    *int     `hcl:"min_healthy,optional"`
	PreparedQuery *string  `hcl:"prepared_query,optional"`
}

type fileListener struct {
	Name    string      `hcl:"name,label"`
	Address string      `hcl:"address"`
	TLS     *fileTLS    `hcl:"tls,block"`
	Routes  []fileRoute `hcl:"route,block"`
	Cache   *fileCache  `hcl:"cache,block"`

	flags bool // the listener --listen and --service make: errors name the flags
}

type fileTLS struct {
	CertFile string `hcl:"cert_file"`
	KeyFile  string `hcl:"key_file"`
}

type fileRoute struct {
	Host       *string    `hcl:"host,optional"`
	PathPrefix *string    `hcl:"path_prefix,optional"`
	Protocol   *string    `hcl:"protocol,optional"`
	Service    string     `hcl:"service"`
	Cache      *fileCache `hcl:"cache,block"`
}

// Config is the agent's resolved, validated configuration: what Parse
// makes of the flags and the config file.
type Config struct {
	Admin          string // "" = off
	AdminAllow     []netip.Prefix
	SnapshotFile   string
	AccessLog      bool
	EventLoops     int // proxy.LoopServer loops per cleartext listener; 0 = net/http for all
	TrustedProxies []netip.Prefix
	Consul         discovery.ClientOptions
	Stale, Cached  bool
	EmptyGrace     time.Duration

	ConnectTimeout        time.Duration
	ResponseHeaderTimeout time.Duration
	IdleTimeout           time.Duration
	ReadHeaderTimeout     time.Duration
	MaxAttempts           int
	MaxHeaderBytes        int
	MaxBodyBytes          int64
	MaxStreams            int // HTTP/2 streams per client connection
	MaxConns              int // live client connections per cleartext listener; 0 = no cap

	Services    []Service
	Listeners   []Listener
	UpstreamTLS proxy.UpstreamTLSFiles

	LogLevel string
	LogJSON  bool

	Deprecated []string // warnings to log at start: deprecated names used

	Recent  int    // recent requests kept; 0 = none
	TraceUI string // trace backend UI for the status page's links; "" = none
}

// defaults holds every setting that neither a flag nor the config file
// gave, in one place: the flags' defaults (and so --help) come from it, as
// do those of the settings only the file has. A service's defaults are
// lb's (passive health) and proxy's (per-try timeout "auto").
func defaults() Config {
	return Config{
		Admin:                 "127.0.0.1:9070",
		EventLoops:            runtime.GOMAXPROCS(0),
		EmptyGrace:            10 * time.Second,
		ConnectTimeout:        time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		IdleTimeout:           90 * time.Second,
		ReadHeaderTimeout:     10 * time.Second,
		MaxAttempts:           3,
		MaxHeaderBytes:        64 << 10,
		MaxConns:              10000,
		LogLevel:              "info",
		Recent:                recent.DefaultSize,
	}
}

// maxRecent bounds --recent: a record is a few hundred bytes.
const maxRecent = 100000

// Service is one balanced service: its Consul tag filter, balancing and
// passive health, failover and per-try timeout.
type Service struct {
	Name string
	Tag  string
	LB   lb.Config
	// Failover ranks backups and failover datacenters (Service, Tag and
	// Logger are filled in by the agent); hasFailover: set by a failover
	// block, which --failover-dc does not override.
	Failover    discovery.FailoverConfig
	hasFailover bool

	TryTimeout    time.Duration // proxy.Route.TryTimeout
	tryTimeoutSet bool          // try_timeout in the file: the flag does not override it
}

// Listener is one client listener and its routes.
type Listener struct {
	Name              string
	Address           string
	CertFile, KeyFile string // TLS termination when set
	Routes            []Route
	Cache             *Cache // shared by the routes without their own; nil: none
}

// Route sends the requests it matches (host, path prefix) to a service.
type Route struct {
	Host, PathPrefix, Service string
	Protocol                  string // "" (auto: gRPC over h2c, the rest HTTP/1.1) or "h2c"
	Cache                     *Cache
}

// flags holds the raw command line before it is merged with the file.
type flags struct {
	listen, service, balance, configFile, admin, snapshotFile string
	consulAddr, consulTokenFile                               string
	tlsCert, tlsKey                                           string
	upCA, upCert, upKey, upServerName                         string
	maxStreams, maxConns                                      int
	maxFails, maxHeaderBytes                                  int
	maxBodySize                                               string
	failTimeout, connectTimeout, emptyGrace                   time.Duration
	stale, cached, accessLog, logJSON, fastLane               bool
	eventLoops                                                int
	trusted, adminAllow                                       cli.StringList
	failoverDCs                                               cli.StringList
	logLevel                                                  string
	cache                                                     string
	set                                                       map[string]bool
	tryTimeout                                                string
	recent                                                    int
	traceUI                                                   string
}

// Parse reads the command line (and the config file it names) into a
// Config. --help prints the usage to stderr and returns flag.ErrHelp;
// other errors name the flag, or the file and the field, and the value.
func Parse(args []string, stderr io.Writer) (*Config, error) {
	var f flags
	d := defaults()
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.listen, "listen", "", "`ADDR` to serve clients on, e.g. :8070 (with --service)")
	fs.StringVar(&f.service, "service", "", "Consul service `NAME` to balance over (with --listen)")
	fs.StringVar(&f.balance, "balance", "round_robin", "balancing `POLICY`: "+strings.Join(lb.ValidPolicies(), ", "))
	fs.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate `FILE` (PEM, chain included) for --listen: terminate TLS, HTTP/2 by ALPN; reloaded on SIGHUP")
	fs.StringVar(&f.tlsKey, "tls-key", "", "TLS private key `FILE` (PEM) for --listen")
	fs.StringVar(&f.upCA, "upstream-tls-ca", "", "CA certificates `FILE` (PEM) that verify instances tagged \"https\" (default: the system roots)")
	fs.StringVar(&f.upCert, "upstream-tls-cert", "", "client certificate `FILE` (PEM) presented to instances tagged \"https\" (mTLS); reloaded on SIGHUP")
	fs.StringVar(&f.upKey, "upstream-tls-key", "", "private key `FILE` (PEM) of --upstream-tls-cert")
	fs.StringVar(&f.upServerName, "upstream-tls-server-name", "", "`NAME` the instances' certificates must carry (default: the address dialled; an IP address is checked against IP SANs)")
	fs.StringVar(&f.configFile, "config", "", "HCL config `FILE` for several listeners, services and routes")
	fs.StringVar(&f.admin, "admin", d.Admin, "admin listener `ADDR`: gRPC admin API, status page at /, /healthz, /metrics; \"off\" disables it")
	fs.Var(&f.adminAllow, "admin-allow", "`CIDR` of non-loopback callers allowed on the admin listener (repeatable; default loopback only)")
	fs.StringVar(&f.snapshotFile, "snapshot-file", "", "`FILE` where the last known pools are saved, and restored at start if Consul is not reachable yet")
	fs.StringVar(&f.consulAddr, "consul-addr", "", "Consul HTTP `ADDR` (overrides CONSUL_HTTP_ADDR; default 127.0.0.1:8500)")
	fs.StringVar(&f.consulTokenFile, "consul-token-file", "", "`FILE` holding the Consul ACL token (overrides CONSUL_HTTP_TOKEN[_FILE])")
	fs.BoolVar(&f.stale, "stale", false, "allow stale reads from any Consul server (lower load, may lag the leader)")
	fs.BoolVar(&f.cached, "consul-cached", false, "use the Consul agent's cache / streaming backend for health queries")
	fs.BoolVar(&f.cached, "cached", false, "deprecated alias of --consul-cached")
	fs.IntVar(&f.maxFails, "max-fails", lb.DefaultMaxFails, "consecutive failures that eject an instance (nginx max_fails); -1 disables passive health")
	fs.DurationVar(&f.failTimeout, "fail-timeout", lb.DefaultFailTimeout, "how long an ejected instance is skipped (nginx fail_timeout); doubles while it keeps failing")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", d.ConnectTimeout, "upstream connect timeout; a connect failure is retried on another instance")
	fs.DurationVar(&f.emptyGrace, "empty-pool-grace", d.EmptyGrace, "when Consul suddenly reports no instances of a service and may have lost its state (the watch failed or its index went backwards: a restarted Consul agent is empty until registrars re-register), keep serving the last pool this long; instances that went critical or were deregistered leave at once; 0 disables")
	fs.IntVar(&f.maxHeaderBytes, "max-header-bytes", d.MaxHeaderBytes, "largest request head accepted (431 beyond), 1024-1048576")
	fs.StringVar(&f.maxBodySize, "max-body-size", "0", "largest request body accepted, e.g. 1m, 512k, 10485760 (413 beyond; nginx's client_max_body_size); 0 = no limit")
	fs.IntVar(&f.maxConns, "max-conns", d.MaxConns, "client connections one listener keeps at once; over it new ones get 503 and are closed (nginx's worker_connections); 0 = no cap")
	fs.IntVar(&f.maxStreams, "max-concurrent-streams", proxy.DefaultMaxConcurrentStreams, "HTTP/2 (gRPC) streams one client connection may run at once, 1-10000")
	fs.Var(&f.trusted, "trusted-proxy", "`CIDR` whose X-Forwarded-*/Forwarded headers are trusted (repeatable)")
	fs.BoolVar(&f.accessLog, "access-log", false, "log every request (info level, with trace_id)")
	fs.BoolVar(&f.fastLane, "fast-lane", true, "deprecated: use --event-loops (false is --event-loops 0)")
	fs.IntVar(&f.eventLoops, "event-loops", d.EventLoops, "event loops serving HTTP/1.1 on each cleartext listener (default one per core: GOMAXPROCS); 0 = Go's net/http for everything")
	fs.Var(&f.failoverDCs, "failover-dc", "Consul `DATACENTER` to fail over to when fewer than min_healthy (1) local instances pass (repeatable, in order; watched all the time); for every service without a failover block")
	fs.StringVar(&f.logLevel, "log-level", d.LogLevel, "log `LEVEL`: "+cli.LogLevels)
	fs.BoolVar(&f.logJSON, "log-json", false, "log as JSON lines")
	fs.StringVar(&f.cache, "cache", "", "cache `SIZE` for --listen, e.g. 256m or 1GiB: an RFC 9111 shared HTTP cache of GET/HEAD responses (nginx's proxy_cache); off by default")
	fs.StringVar(&f.tryTimeout, "try-timeout", "auto", "per-try timeout of idempotent requests: with no response head by then, the request also goes to another instance and the first answer wins (hedging, bounded by a retry budget of 20% of requests + 10/s); `DURATION` (e.g. 300ms), \"auto\" (3x the service's recent p99, 50ms-10s; 1s until latency is known) or \"off\"; a service's try_timeout in the config file wins")
	fs.IntVar(&f.recent, "recent", d.Recent, "recent requests kept for `agent requests` and the status page (failed and slow ones kept longer); 0 = none")
	fs.StringVar(&f.traceUI, "trace-ui", "", "trace backend UI `URL` the status page links trace ids to: Jaeger's base URL (/trace/ID is appended) or a URL with {trace_id}")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (subcommands: status, requests, cache)", fs.Arg(0))
	}
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	return f.resolve()
}

func (f *flags) resolve() (*Config, error) {
	d := defaults()
	c := &d
	// The settings the file does not have; the others are the defaults,
	// then the file's, then the flags given (below).
	c.EmptyGrace, c.LogLevel, c.LogJSON = f.emptyGrace, f.logLevel, f.logJSON
	// The file and the flags fill one fileConfig (a flag wins over
	// the file), which apply checks once, naming each setting by the flag
	// or the file's field that gave it.
	fc := &fileConfig{}
	if f.configFile != "" {
		var err error
		if fc, err = readFile(f.configFile); err != nil {
			return nil, err
		}
	}
	o := origin{path: f.configFile, flags: f.overlay(fc)}
	if err := c.apply(o, fc); err != nil {
		return nil, err
	}
	if f.set["cached"] {
		c.Deprecated = append(c.Deprecated, "--cached is deprecated: use --consul-cached")
	}
	for _, p := range f.adminAllow {
		pfx, err := parsePrefix(p)
		if err != nil {
			return nil, fmt.Errorf("invalid --admin-allow %q: %w", p, err)
		}
		c.AdminAllow = append(c.AdminAllow, pfx)
	}
	if f.emptyGrace < 0 {
		return nil, fmt.Errorf("invalid --empty-pool-grace %v: must be >= 0", f.emptyGrace)
	}
	if err := f.checkListen(); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// checkListen refuses the flags of the --listen listener that do not go
// together; overlay makes the listener only from a whole set, and apply
// checks its values.
func (f *flags) checkListen() error {
	switch {
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return errors.New("--tls-cert and --tls-key go together")
	case f.tlsCert != "" && f.listen == "":
		return errors.New("--tls-cert applies to --listen; in a config file use a tls block in the listener")
	case f.listen != "" && f.service == "":
		return errors.New("--listen needs --service NAME (or use --config FILE)")
	case f.service != "" && f.listen == "":
		return errors.New("--service needs --listen ADDR (or use --config FILE)")
	case f.listen == "" && f.configFile == "":
		return errors.New("nothing to serve: give --listen ADDR --service NAME, or --config FILE")
	case f.cache != "" && f.listen == "":
		return errors.New("--cache applies to --listen; in a config file use a cache block in the listener or route")
	}
	return nil
}

func (c *Config) Service(name string) *Service {
	for i := range c.Services {
		if c.Services[i].Name == name {
			return &c.Services[i]
		}
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an IP address or CIDR prefix")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseSize reads a byte size as nginx writes it (1048576, 512k, 1m, 2g)
// or with binary units (512KiB, 256MiB, 1GiB); case does not matter.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "ib")
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "g"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, errors.New("want a size such as 1048576, 512k, 1m, 2g or 256MiB (0 for no limit)")
	}
	return n * mult, nil
}

func parseDuration(what, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid %s %q: want a positive duration such as 500ms, 10s, 1m", what, s)
	}
	return d, nil
}

// readFile reads and decodes the HCL file; apply checks what it holds.
// Errors name the file, line and value.
func readFile(path string) (*fileConfig, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	return decode(path, src)
}

// decode parses HCL source; path names it in errors.
func decode(path string, src []byte) (*fileConfig, error) {
	var fc fileConfig
	if err := hclsimple.Decode(path+".hcl", src, nil, &fc); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return &fc, nil
}

// loadBytes applies HCL source alone, as if it were the config file.
func (c *Config) loadBytes(path string, src []byte) error {
	fc, err := decode(path, src)
	if err != nil {
		return err
	}
	return c.apply(origin{path: path}, fc)
}

// origin names the settings of a fileConfig in errors: by the flag that
// gave one, or else by the file's field.
type origin struct {
	path  string            // the config file; "" for none
	flags map[string]string // file field → the flag that set it
}

// name is how errors call field: "--max-header-bytes" or
// "proxy.max_header_bytes".
func (o origin) name(field string) string {
	if fl, ok := o.flags[field]; ok {
		return fl
	}
	return field
}

// wrap puts the file's name before an error about field, unless a flag
// gave it.
func (o origin) wrap(field string, err error) error {
	if _, ok := o.flags[field]; ok {
		return err
	}
	return fmt.Errorf("config file %s: %w", o.path, err)
}

// invalid is the error of a refused value of field: "invalid NAME VALUE:
// why", format giving the value and why.
func (o origin) invalid(field, format string, a ...any) error {
	return o.wrap(field, fmt.Errorf("invalid "+o.name(field)+" "+format, a...))
}

// overlay writes the flags given on the command line into fc, over what
// the file said, and returns the file fields they set with their flags.
// The flags that the file has no place for fill its hidden fields
// (serviceFlags, trustedFlags) or make a listener block (--listen); the
// rest, which no file setting shares, are resolve's.
func (f *flags) overlay(fc *fileConfig) map[string]string {
	from := map[string]string{}
	str := func(flag, field string, dst **string, v string) {
		if f.set[flag] {
			*dst, from[field] = &v, "--"+flag
		}
	}
	boolean := func(flag, field string, dst **bool, v bool) {
		if f.set[flag] {
			*dst, from[field] = &v, "--"+flag
		}
	}
	integer := func(flag, field string, dst **int, v int) {
		if f.set[flag] {
			*dst, from[field] = &v, "--"+flag
		}
	}
	str("admin", "admin", &fc.Admin, f.admin)
	str("snapshot-file", "snapshot_file", &fc.SnapshotFile, f.snapshotFile)
	boolean("access-log", "access_log", &fc.AccessLog, f.accessLog)
	if f.set["fast-lane"] && !f.set["event-loops"] {
		boolean("fast-lane", "fast_lane", &fc.FastLane, f.fastLane)
		fc.EventLoops = nil // the file's event_loops loses to the flag too
	}
	integer("event-loops", "event_loops", &fc.EventLoops, f.eventLoops)
	integer("recent", "recent", &fc.Recent, f.recent)
	str("trace-ui", "trace_ui", &fc.TraceUI, f.traceUI)
	if fc.Consul == nil {
		fc.Consul = &fileConsul{}
	}
	str("consul-addr", "consul.address", &fc.Consul.Address, f.consulAddr)
	str("consul-token-file", "consul.token_file", &fc.Consul.TokenFile, f.consulTokenFile)
	boolean("stale", "consul.stale", &fc.Consul.Stale, f.stale)
	boolean("consul-cached", "consul.consul_cached", &fc.Consul.ConsulCached, f.cached)
	boolean("cached", "consul.consul_cached", &fc.Consul.ConsulCached, f.cached)
	if fc.Proxy == nil {
		fc.Proxy = &fileProxy{}
	}
	if f.set["connect-timeout"] {
		str("connect-timeout", "proxy.connect_timeout", &fc.Proxy.ConnectTimeout, f.connectTimeout.String())
	}
	integer("max-header-bytes", "proxy.max_header_bytes", &fc.Proxy.MaxHeaderBytes, f.maxHeaderBytes)
	integer("max-conns", "proxy.max_conns", &fc.Proxy.MaxConns, f.maxConns)
	integer("max-concurrent-streams", "proxy.max_concurrent_streams", &fc.Proxy.MaxConcurrentStreams, f.maxStreams)
	str("max-body-size", "proxy.max_body_size", &fc.Proxy.MaxBodySize, f.maxBodySize)
	if fc.UpstreamTLS == nil {
		fc.UpstreamTLS = &fileUpstreamTLS{}
	}
	str("upstream-tls-ca", "upstream_tls.ca_file", &fc.UpstreamTLS.CAFile, f.upCA)
	str("upstream-tls-cert", "upstream_tls.cert_file", &fc.UpstreamTLS.CertFile, f.upCert)
	str("upstream-tls-key", "upstream_tls.key_file", &fc.UpstreamTLS.KeyFile, f.upKey)
	str("upstream-tls-server-name", "upstream_tls.server_name", &fc.UpstreamTLS.ServerName, f.upServerName)

	// The services' settings. The defaults of --max-fails, --fail-timeout
	// and --try-timeout are the services' (lb's, proxy's), so these are
	// written given or not.
	failTimeout := f.failTimeout.String()
	fc.serviceFlags = &fileService{MaxFails: &f.maxFails, FailTimeout: &failTimeout, TryTimeout: &f.tryTimeout, flags: true}
	from["service.max_fails"], from["service.fail_timeout"], from["service.try_timeout"] = "--max-fails", "--fail-timeout", "--try-timeout"
	str("balance", "service.balance", &fc.serviceFlags.Balance, f.balance)
	if len(f.failoverDCs) > 0 {
		fc.serviceFlags.Failover = &fileFailover{Datacenters: f.failoverDCs}
		from["service.failover"] = "--failover-dc"
	}
	if len(f.trusted) > 0 { // added to the file's list
		fc.TrustedProxies = append(fc.TrustedProxies, f.trusted...)
		fc.trustedFlags, from["trusted_proxies"] = len(f.trusted), "--trusted-proxy"
	}
	// The listener of --listen and --service, after the file's; without
	// the pair (or with half of --tls-cert/--tls-key) resolve's
	// checkListen says why.
	if f.listen != "" && f.service != "" {
		l := fileListener{Name: "cli", Address: f.listen, Routes: []fileRoute{{Service: f.service}}, flags: true}
		if f.tlsCert != "" && f.tlsKey != "" {
			l.TLS = &fileTLS{CertFile: f.tlsCert, KeyFile: f.tlsKey}
		}
		if f.cache != "" {
			l.Cache = &fileCache{MaxSize: f.cache}
		}
		fc.Listeners = append(fc.Listeners, l)
		from["listener.route.service"], from["listener.cache"] = "--service", "--cache"
	}
	return from
}

// apply merges fc into c, checking every value once; o names them.
func (c *Config) apply(o origin, fc *fileConfig) error {
	path := o.path
	wrap := func(err error) error { return fmt.Errorf("config file %s: %w", path, err) }
	if fc.Admin != nil {
		c.Admin = *fc.Admin
	}
	if fc.SnapshotFile != nil {
		c.SnapshotFile = *fc.SnapshotFile
	}
	if fc.AccessLog != nil {
		c.AccessLog = *fc.AccessLog
	}
	if fc.FastLane != nil {
		c.EventLoops = 0 // deprecated alias of event_loops
		if *fc.FastLane {
			c.EventLoops = defaults().EventLoops
		}
	}
	if fc.EventLoops != nil {
		if *fc.EventLoops < 0 || *fc.EventLoops > 1024 {
			return o.invalid("event_loops", "%d: must be 0 (net/http for everything) to 1024", *fc.EventLoops)
		}
		c.EventLoops = *fc.EventLoops
	}
	if fc.Recent != nil {
		c.Recent = *fc.Recent
	}
	if fc.TraceUI != nil {
		c.TraceUI = *fc.TraceUI
	}
	fromFile := len(fc.TrustedProxies) - fc.trustedFlags // the flags' come after the file's
	for i, p := range fc.TrustedProxies {
		pfx, err := parsePrefix(p)
		switch {
		case err != nil && i >= fromFile:
			return fmt.Errorf("invalid %s %q: %w", o.flags["trusted_proxies"], p, err)
		case err != nil:
			return wrap(fmt.Errorf("invalid trusted_proxies entry %q: %w", p, err))
		}
		c.TrustedProxies = append(c.TrustedProxies, pfx)
	}
	if u := fc.UpstreamTLS; u != nil {
		for _, s := range []struct {
			field string
			v     *string
			dst   *proxy.TLSSetting
		}{
			{"ca_file", u.CAFile, &c.UpstreamTLS.CA},
			{"cert_file", u.CertFile, &c.UpstreamTLS.Cert},
			{"key_file", u.KeyFile, &c.UpstreamTLS.Key},
			{"server_name", u.ServerName, &c.UpstreamTLS.ServerName},
		} {
			field := "upstream_tls." + s.field
			switch fl, flag := o.flags[field]; {
			case s.v == nil:
			case flag: // an empty flag clears what the file set
				s.dst.Set(*s.v, fl)
			case *s.v == "":
				return wrap(fmt.Errorf("upstream_tls %s is empty: leave it out instead", s.field))
			default:
				s.dst.Set(*s.v, fmt.Sprintf("upstream_tls %s in %s", s.field, path))
			}
		}
	}
	if fc.Consul != nil {
		if fc.Consul.Address != nil {
			c.Consul.Address = *fc.Consul.Address
		}
		if fc.Consul.TokenFile != nil {
			c.Consul.TokenFile = *fc.Consul.TokenFile
		}
		if fc.Consul.Stale != nil {
			c.Stale = *fc.Consul.Stale
		}
		if fc.Consul.Cached != nil {
			c.Cached = *fc.Consul.Cached
			c.Deprecated = append(c.Deprecated, "consul { cached } is deprecated: use consul_cached")
		}
		if fc.Consul.ConsulCached != nil {
			c.Cached = *fc.Consul.ConsulCached
		}
	}
	if p := fc.Proxy; p != nil {
		for _, d := range []struct {
			name string
			src  *string
			dst  *time.Duration
		}{
			{"proxy.connect_timeout", p.ConnectTimeout, &c.ConnectTimeout},
			{"proxy.response_header_timeout", p.ResponseHeaderTimeout, &c.ResponseHeaderTimeout},
			{"proxy.idle_timeout", p.IdleTimeout, &c.IdleTimeout},
			{"proxy.read_header_timeout", p.ReadHeaderTimeout, &c.ReadHeaderTimeout},
		} {
			if d.src == nil {
				continue
			}
			v, err := parseDuration(o.name(d.name), *d.src)
			if err != nil {
				return o.wrap(d.name, err)
			}
			*d.dst = v
		}
		if p.MaxAttempts != nil {
			if *p.MaxAttempts < 1 || *p.MaxAttempts > 10 {
				return o.invalid("proxy.max_attempts", "%d: must be 1-10", *p.MaxAttempts)
			}
			c.MaxAttempts = *p.MaxAttempts
		}
		if p.MaxBodySize != nil {
			n, err := parseSize(*p.MaxBodySize)
			if err != nil {
				return o.invalid("proxy.max_body_size", "%q: %w", *p.MaxBodySize, err)
			}
			c.MaxBodyBytes = n
		}
		if p.MaxConns != nil {
			if *p.MaxConns < 0 {
				return o.invalid("proxy.max_conns", "%d: must be >= 0 (0 = no cap)", *p.MaxConns)
			}
			c.MaxConns = *p.MaxConns
		}
		if p.MaxConcurrentStreams != nil {
			if *p.MaxConcurrentStreams < 1 || *p.MaxConcurrentStreams > 10000 {
				return o.invalid("proxy.max_concurrent_streams", "%d: must be 1-10000", *p.MaxConcurrentStreams)
			}
			c.MaxStreams = *p.MaxConcurrentStreams
		}
		if p.MaxHeaderBytes != nil {
			if *p.MaxHeaderBytes < 1024 || *p.MaxHeaderBytes > 1<<20 {
				return o.invalid("proxy.max_header_bytes", "%d: must be 1024-1048576", *p.MaxHeaderBytes)
			}
			c.MaxHeaderBytes = *p.MaxHeaderBytes
		}
	}
	for _, s := range fc.Services {
		if err := discovery.ValidateServiceName(s.Name); err != nil {
			return wrap(fmt.Errorf("service block: %w", err))
		}
		if c.Service(s.Name) != nil {
			return wrap(fmt.Errorf("service %q defined twice", s.Name))
		}
		sc := Service{Name: s.Name}
		if err := s.parse(o, &sc); err != nil {
			return err
		}
		if err := sc.Failover.Validate(); err != nil {
			return wrap(err)
		}
		c.Services = append(c.Services, sc)
	}
	for _, l := range fc.Listeners {
		lc := Listener{Name: l.Name, Address: l.Address}
		if l.TLS != nil {
			if l.TLS.CertFile == "" || l.TLS.KeyFile == "" {
				return wrap(fmt.Errorf("listener %q: tls needs cert_file and key_file", l.Name))
			}
			lc.CertFile, lc.KeyFile = l.TLS.CertFile, l.TLS.KeyFile
		}
		if len(l.Routes) == 0 {
			return wrap(fmt.Errorf("listener %q has no route block", l.Name))
		}
		for _, r := range l.Routes {
			rc := Route{Service: r.Service}
			if r.Host != nil {
				rc.Host = *r.Host
			}
			if r.Protocol != nil {
				switch *r.Protocol {
				case "", "auto":
				case "h2c":
					rc.Protocol = "h2c"
				default:
					return wrap(fmt.Errorf("listener %q: invalid route protocol %q: use \"auto\" (gRPC over HTTP/2, the rest HTTP/1.1) or \"h2c\" (HTTP/2 cleartext for everything)", l.Name, *r.Protocol))
				}
			}
			if r.PathPrefix != nil {
				rc.PathPrefix = *r.PathPrefix
				if rc.PathPrefix != "" && !strings.HasPrefix(rc.PathPrefix, "/") {
					return wrap(fmt.Errorf("listener %q: invalid path_prefix %q: must start with /", l.Name, rc.PathPrefix))
				}
			}
			// A route may name a service without a service block: it gets
			// defaults, and the flags' settings (below).
			if c.Service(r.Service) == nil {
				if err := discovery.ValidateServiceName(r.Service); err != nil && l.flags {
					return fmt.Errorf("invalid %s: %w", o.flags["listener.route.service"], err)
				} else if err != nil {
					return wrap(fmt.Errorf("listener %q route: %w", l.Name, err))
				}
				c.Services = append(c.Services, Service{Name: r.Service})
			}
			if r.Cache != nil {
				cc, err := r.Cache.parse(fmt.Sprintf("listener %q route %q", l.Name, r.Service), "")
				if err != nil {
					return wrap(err)
				}
				rc.Cache = cc
			}
			lc.Routes = append(lc.Routes, rc)
		}
		if l.Cache != nil {
			flag := ""
			if l.flags {
				flag = o.flags["listener.cache"]
			}
			cc, err := l.Cache.parse(fmt.Sprintf("listener %q", l.Name), flag)
			if err != nil && l.flags {
				return err
			} else if err != nil {
				return wrap(err)
			}
			lc.Cache = cc
		}
		c.Listeners = append(c.Listeners, lc)
	}
	// The flags' settings for the services, checked once: each service
	// without its own takes them; --balance is the policy of --service's.
	if sf := fc.serviceFlags; sf != nil {
		var def Service
		if err := sf.parse(o, &def); err != nil {
			return err
		}
		for i := range c.Services {
			if err := c.Services[i].inherit(o, def); err != nil {
				return err
			}
		}
		for _, l := range fc.Listeners {
			if l.flags && def.LB.Policy != "" {
				c.Service(l.Routes[0].Service).LB.Policy = def.LB.Policy
			}
		}
	}
	return nil
}

// parse reads the settings of service block s into sc, checking each; o
// names them: a block's by the file, the service and the field; those of
// serviceFlags by the flag.
func (s *fileService) parse(o origin, sc *Service) error {
	file := func(err error) error { return fmt.Errorf("config file %s: %w", o.path, err) }
	invalid := func(field, format string, a ...any) error {
		if s.flags {
			return fmt.Errorf("invalid "+o.flags["service."+field]+format, a...)
		}
		return file(fmt.Errorf("service %q: invalid "+field+format, append([]any{s.Name}, a...)...))
	}
	if s.Balance != nil {
		if err := lb.ValidatePolicy(*s.Balance); err != nil {
			return invalid("balance", ": %w", err)
		}
		sc.LB.Policy = *s.Balance
	}
	if s.Tag != nil {
		sc.Tag = *s.Tag
	}
	if s.MaxFails != nil {
		if err := checkMaxFails(*s.MaxFails); err != nil {
			return invalid("max_fails", " %d: %w", *s.MaxFails, err)
		}
		sc.LB.MaxFails = *s.MaxFails
	}
	if s.FailTimeout != nil {
		what := fmt.Sprintf("service %q fail_timeout", s.Name)
		if s.flags {
			what = o.flags["service.fail_timeout"]
		}
		d, err := parseDuration(what, *s.FailTimeout)
		if err != nil && s.flags {
			return err
		} else if err != nil {
			return file(err)
		}
		sc.LB.FailTimeout = d
	}
	if s.TryTimeout != nil {
		d, err := parseTryTimeout(*s.TryTimeout)
		if err != nil {
			return invalid("try_timeout", " %q: %w", *s.TryTimeout, err)
		}
		sc.TryTimeout, sc.tryTimeoutSet = d, true
	}
	sc.Failover.Service = s.Name
	if s.BackupTag != nil {
		if *s.BackupTag == "" {
			return file(fmt.Errorf("service %q: backup_tag is empty: leave it out for the default %q", s.Name, discovery.DefaultBackupTag))
		}
		sc.Failover.BackupTag = *s.BackupTag
	}
	if fo := s.Failover; fo != nil {
		sc.hasFailover = true
		sc.Failover.Datacenters = fo.Datacenters
		if fo.MinHealthy != nil {
			if *fo.MinHealthy < 1 {
				return invalid("failover min_healthy", " %d: must be at least 1", *fo.MinHealthy)
			}
			sc.Failover.MinHealthy = *fo.MinHealthy
		}
		if fo.PreparedQuery != nil {
			sc.Failover.PreparedQuery = *fo.PreparedQuery
		}
		if len(fo.Datacenters) == 0 && sc.Failover.PreparedQuery == "" {
			return file(fmt.Errorf("service %q: the failover block needs datacenters = [...] or prepared_query", s.Name))
		}
	}
	return nil
}

// inherit gives s the settings of serviceFlags (def) that it has none of
// its own for. The failover datacenters are checked for each service: the
// errors name it.
func (s *Service) inherit(o origin, def Service) error {
	if def.hasFailover && !s.hasFailover {
		s.Failover.Datacenters = slices.Clone(def.Failover.Datacenters)
		s.Failover.Service = s.Name
		if err := s.Failover.Validate(); err != nil {
			return fmt.Errorf("invalid %s: %w", o.flags["service.failover"], err)
		}
	}
	if def.tryTimeoutSet && !s.tryTimeoutSet {
		s.TryTimeout = def.TryTimeout
	}
	if s.LB.MaxFails == 0 {
		s.LB.MaxFails = def.LB.MaxFails
	}
	if s.LB.FailTimeout == 0 {
		s.LB.FailTimeout = def.LB.FailTimeout
	}
	return nil
}

func (c *Config) validate() error {
	if c.Admin == "off" {
		c.Admin = ""
	}
	if c.Admin != "" {
		if err := validateListenAddr(c.Admin); err != nil {
			return fmt.Errorf("invalid --admin %q: %w (or \"off\")", c.Admin, err)
		}
	}
	seen := map[string]string{}
	for _, l := range c.Listeners {
		if err := validateListenAddr(l.Address); err != nil {
			return fmt.Errorf("invalid listen address %q (listener %q): %w", l.Address, l.Name, err)
		}
		if other, dup := seen[l.Address]; dup {
			return fmt.Errorf("listen address %q used by listeners %q and %q", l.Address, other, l.Name)
		}
		seen[l.Address] = l.Name
	}
	if len(c.Listeners) == 0 {
		return errors.New("no listener configured: give --listen ADDR --service NAME or a listener block")
	}
	if c.Recent < 0 || c.Recent > maxRecent {
		return fmt.Errorf("invalid --recent %d: must be 0 (off) to %d", c.Recent, maxRecent)
	}
	if c.TraceUI != "" {
		if err := admin.CheckTraceUI(c.TraceUI); err != nil {
			return fmt.Errorf("--trace-ui: %w", err)
		}
	}
	return c.UpstreamTLS.Validate()
}

// validateListenAddr checks host:port syntax; binding errors come later and
// name the address too.
func validateListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want HOST:PORT or :PORT")
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port %q must be 0-65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		if _, err := net.LookupHost(host); err != nil {
			return fmt.Errorf("unknown host %q", host)
		}
	}
	return nil
}

// checkMaxFails is the rule of a service's max_fails and of --max-fails,
// the default of the services without one.
func checkMaxFails(n int) error {
	if n == 0 || n < -1 {
		return errors.New("must be >= 1, or -1 to disable passive health")
	}
	return nil
}

// parseTryTimeout reads a per-try timeout setting: "auto" (or "") for the
// adaptive timeout, "off", or a positive duration.
func parseTryTimeout(s string) (time.Duration, error) {
	switch s {
	case "", "auto":
		return proxy.TryTimeoutAdaptive, nil
	case "off":
		return proxy.TryTimeoutOff, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, errors.New(`want a positive duration such as 300ms, "auto" (adaptive) or "off"`)
	}
	return d, nil
}

// fileCache is a cache block in a listener or a route:
//
//	cache { max_size = "256MiB"  max_object_size = "8MiB" }
type fileCache struct {
	MaxSize       string  `hcl:"max_size"`
	MaxObjectSize *string `hcl:"max_object_size,optional"`
}

// Cache sizes one HTTP cache.
type Cache struct {
	MaxSize, MaxObjectSize int64 // MaxObjectSize 0: the default (max_size/8)
}

// minCacheSize is the smallest cache accepted: below it the bookkeeping
// would crowd out the responses.
const minCacheSize = 64 << 10

// parse reads a cache block; where names it in errors, or flag, when a
// flag gave max_size (--cache; the only field a flag gives).
func (fc *fileCache) parse(where, flag string) (*Cache, error) {
	n, err := parseCacheSize(fc.MaxSize)
	switch {
	case err != nil && flag != "" && errors.Is(err, errCacheTooSmall):
		return nil, fmt.Errorf("invalid %s %q: %w (leave the flag out for no cache)", flag, fc.MaxSize, err)
	case err != nil && flag != "":
		return nil, fmt.Errorf("invalid %s %q: %w", flag, fc.MaxSize, err)
	case err != nil:
		return nil, fmt.Errorf("%s: invalid cache max_size %q: %w", where, fc.MaxSize, err)
	}
	cc := &Cache{MaxSize: n}
	if fc.MaxObjectSize != nil {
		o, err := parseSize(*fc.MaxObjectSize)
		if err != nil || o == 0 {
			return nil, fmt.Errorf("%s: invalid cache max_object_size %q: want a positive size such as 1m or 8MiB", where, *fc.MaxObjectSize)
		}
		if o > n {
			return nil, fmt.Errorf("%s: invalid cache max_object_size %q: larger than max_size %q", where, *fc.MaxObjectSize, fc.MaxSize)
		}
		cc.MaxObjectSize = o
	}
	return cc, nil
}

// parseCacheSize reads a cache's max_size (or --cache).
func parseCacheSize(v string) (int64, error) {
	n, err := parseSize(v)
	if err != nil {
		return 0, err
	}
	if n < minCacheSize {
		return 0, errCacheTooSmall
	}
	return n, nil
}

var errCacheTooSmall = errors.New("at least 64KiB")
