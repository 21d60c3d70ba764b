package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshlb/meshlb/discovery"
	"github.com/meshlb/meshlb/internal/cli"
	"github.com/meshlb/meshlb/internal/wire"
)

const usageHead = `registrar: the meshlb sidecar for one app instance.

It starts the app (wrap mode) or attaches to one already listening on PORT
(attach mode), registers it in Consul with its address, port, PID and host,
probes it and reports its health through a TTL check, and on SIGTERM/SIGINT
drains it (marks it critical so edges stop sending, waits, lets in-flight
requests finish), stops it (wrap mode only: it never signals a process it did
not start) and deregisters it. If the app exits on its own, the instance is
marked critical at once, deregistered, and the registrar exits with the
app's status so a supervisor can restart both.

Usage:
  registrar --service NAME --port PORT [flags] -- COMMAND [ARGS...]   (wrap)
  registrar --service NAME --port PORT [flags]                        (attach)

Examples:
  registrar --service hello --port 8071 -- python3 app.py --port=8071
  registrar --service hello --port 8071 --mesh-port 9071 -- python3 app.py --port=8071
  registrar --service hello --port 8071 --mesh-port 9071 --mesh-tls-cert mesh.pem \
      --mesh-tls-key mesh-key.pem --mesh-tls-client-ca agents-ca.pem -- python3 app.py --port=8071
  registrar --service hello --port 8071 --check tcp          # attach to a running app

Consul is reached through the standard CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, CONSUL_HTTP_SSL ... variables; the
--consul-* flags override them. The token needs service:write on NAME.
Tracing (mesh mode) uses the standard OTEL_* variables.

The registrar opens no listening port of its own unless --mesh-port is given.

With --mesh-tls-cert and --mesh-tls-key the mesh port serves TLS (HTTP/1.1)
and the instance is registered with the tag "https", so edges reach it over
TLS; with --mesh-tls-client-ca too, only clients presenting a certificate
signed by that CA (the agent's --upstream-tls-cert) get through (mTLS).
SIGHUP reads the three files again (a pair that fails to load is logged and
the old one kept); in wrap mode it is also passed on to the app.

Flags:
`

// config is the registrar's validated command line.
type config struct {
	service, id, address string
	port, meshPort       int
	tags                 cli.StringList
	meta                 cli.KeyValues
	check, checkPath     string
	grpcService          string
	probeHost            string
	checkInterval        time.Duration
	checkTimeout         time.Duration
	ttl, deregisterAfter time.Duration
	drain, stopTimeout   time.Duration
	appWait              time.Duration
	weightPassing        int
	weightWarning        int
	meshTLSCert          string // mesh port serves TLS when set (with meshTLSKey)
	meshTLSKey           string
	meshTLSClientCA      string // client certificates required when set
	consul               discovery.ClientOptions
	logLevel             string
	logJSON              bool
	command              []string
}

var checkTypes = []string{"http", "tcp", "grpc"}

// errHelp is returned when --help was asked for.
var errHelp = flag.ErrHelp

// parseArgs parses and validates the command line. Every error names the
// bad value and what is allowed; nothing is started before it returns.
func parseArgs(args []string, stderr io.Writer) (*config, error) {
	c := &config{meta: cli.KeyValues{}}
	fs := flag.NewFlagSet("registrar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.service, "service", "", "Consul service `NAME` (required): letters, digits, '-', '_'")
	fs.IntVar(&c.port, "port", 0, "`PORT` the app listens on (required), 1-65535")
	fs.StringVar(&c.id, "id", "", "service instance `ID` (default NAME-HOST-PORT)")
	fs.StringVar(&c.address, "address", "", "`ADDR` to register (default: left to Consul, which uses the agent's node address)")
	fs.IntVar(&c.meshPort, "mesh-port", 0, "mesh mode: listen on `PORT`, register it, and forward to the app on loopback, tracing every request")
	fs.StringVar(&c.meshTLSCert, "mesh-tls-cert", "", "mesh mode: TLS certificate `FILE` (PEM, chain included) the mesh port serves; registers the tag \"https\"; reloaded on SIGHUP")
	fs.StringVar(&c.meshTLSKey, "mesh-tls-key", "", "mesh mode: TLS private key `FILE` (PEM) for --mesh-tls-cert")
	fs.StringVar(&c.meshTLSClientCA, "mesh-tls-client-ca", "", "mesh mode: CA certificates `FILE` (PEM); clients of the mesh port must present a certificate signed by one (mTLS)")
	fs.Var(&c.tags, "tag", "service `TAG` (repeatable, or comma-separated)")
	fs.Var(c.meta, "meta", "service metadata `KEY=VALUE` (repeatable); pid and host are set by the registrar")
	fs.StringVar(&c.check, "check", "http", "how to probe the app: `http|tcp|grpc` (grpc: the standard grpc.health.v1 service)")
	fs.StringVar(&c.grpcService, "check-grpc-service", "", "service `NAME` to ask about when --check grpc (default \"\": the server as a whole)")
	fs.StringVar(&c.checkPath, "check-path", "/", "HTTP `PATH` to GET when --check http")
	fs.StringVar(&c.probeHost, "probe-host", "127.0.0.1", "`HOST` the app is probed on")
	fs.DurationVar(&c.checkInterval, "check-interval", time.Second, "time between probes")
	fs.DurationVar(&c.checkTimeout, "check-timeout", time.Second, "probe timeout")
	fs.DurationVar(&c.ttl, "ttl", 5*time.Second, "TTL of the Consul check; if the registrar vanishes the instance goes critical after it")
	fs.DurationVar(&c.deregisterAfter, "deregister-after", time.Minute, "Consul removes an instance critical this long (DeregisterCriticalServiceAfter, min 1m)")
	fs.DurationVar(&c.drain, "drain", 5*time.Second, "on SIGTERM/SIGINT: time between marking the instance critical and stopping the app, so edges stop sending")
	fs.DurationVar(&c.stopTimeout, "stop-timeout", 10*time.Second, "wrap mode: time the app gets to exit after SIGTERM before SIGKILL")
	fs.DurationVar(&c.appWait, "app-wait", 30*time.Second, "attach mode: how long to wait for something to listen on PORT")
	fs.IntVar(&c.weightPassing, "weight", 0, "Consul Service.Weights.Passing (default 1): relative share of traffic")
	fs.IntVar(&c.weightWarning, "warning-weight", 0, "Consul Service.Weights.Warning (default 1): share while the check is warning (HTTP 429)")
	fs.StringVar(&c.consul.Address, "consul-addr", "", "Consul HTTP `ADDR` (overrides CONSUL_HTTP_ADDR; default 127.0.0.1:8500)")
	fs.StringVar(&c.consul.TokenFile, "consul-token-file", "", "`FILE` holding the Consul ACL token (overrides CONSUL_HTTP_TOKEN[_FILE])")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `LEVEL`: "+cli.LogLevels)
	fs.BoolVar(&c.logJSON, "log-json", false, "log as JSON lines")

	flagArgs, command, dashdash := splitCommand(args)
	if err := fs.Parse(flagArgs); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: put the app's command after --, as in: registrar --service NAME --port PORT -- COMMAND ARGS", fs.Arg(0))
	}
	if dashdash && len(command) == 0 {
		return nil, errors.New("-- given without a command: put the app's command after it, or leave -- out to attach to an app already listening on --port")
	}
	c.command = command
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// splitCommand splits args at the first "--": flags before, the app's
// command after.
func splitCommand(args []string) (flags, command []string, dashdash bool) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:], true
		}
	}
	return args, nil, false
}

func (c *config) validate() error {
	if err := discovery.ValidateServiceName(c.service); err != nil {
		return err
	}
	if c.port < 1 || c.port > 65535 {
		return fmt.Errorf("invalid --port %d: must be 1-65535", c.port)
	}
	if c.meshPort != 0 {
		if c.meshPort < 1 || c.meshPort > 65535 {
			return fmt.Errorf("invalid --mesh-port %d: must be 1-65535", c.meshPort)
		}
		if c.meshPort == c.port {
			return fmt.Errorf("invalid --mesh-port %d: must differ from --port", c.meshPort)
		}
	}
	if err := c.validateMeshTLS(); err != nil {
		return err
	}
	switch c.check {
	case "http", "tcp", "grpc":
	default:
		return fmt.Errorf("unknown --check %q: valid check types are %s", c.check, strings.Join(checkTypes, ", "))
	}
	if c.check == "http" && !strings.HasPrefix(c.checkPath, "/") {
		return fmt.Errorf("invalid --check-path %q: must start with /", c.checkPath)
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"--check-interval", c.checkInterval}, {"--check-timeout", c.checkTimeout}, {"--stop-timeout", c.stopTimeout}, {"--app-wait", c.appWait}} {
		if f.d <= 0 {
			return fmt.Errorf("invalid %s %v: must be > 0", f.name, f.d)
		}
	}
	if c.drain < 0 {
		return fmt.Errorf("invalid --drain %v: must be >= 0", c.drain)
	}
	for k := range c.meta {
		if k == wire.MetaPID || k == wire.MetaHost {
			return fmt.Errorf("invalid --meta %s=...: %q is set by the registrar", k, k)
		}
	}
	for _, t := range c.tags {
		if strings.ContainsAny(t, " \t\n") {
			return fmt.Errorf("invalid --tag %q: tags cannot contain white space", t)
		}
	}
	// Validate the definition as it will be registered, pid and host included.
	if err := c.service_(1, hostname()).Validate(); err != nil {
		return fmt.Errorf("invalid service definition: %w", err)
	}
	return nil
}

// validateMeshTLS checks the --mesh-tls-* flags go together; the files are
// read by newMeshTLS.
func (c *config) validateMeshTLS() error {
	for _, f := range []struct{ name, v string }{
		{"--mesh-tls-cert", c.meshTLSCert}, {"--mesh-tls-key", c.meshTLSKey}, {"--mesh-tls-client-ca", c.meshTLSClientCA},
	} {
		if f.v != "" && c.meshPort == 0 {
			return fmt.Errorf("%s %q applies to the mesh port: give --mesh-port too", f.name, f.v)
		}
	}
	if (c.meshTLSCert == "") != (c.meshTLSKey == "") {
		return fmt.Errorf("--mesh-tls-cert and --mesh-tls-key go together (got --mesh-tls-cert %q, --mesh-tls-key %q)", c.meshTLSCert, c.meshTLSKey)
	}
	if c.meshTLSClientCA != "" && c.meshTLSCert == "" {
		return fmt.Errorf("--mesh-tls-client-ca %q needs --mesh-tls-cert and --mesh-tls-key: client certificates are checked in a TLS handshake", c.meshTLSClientCA)
	}
	if c.meshPort != 0 && c.meshTLSCert == "" && slices.Contains(c.tags, wire.TagHTTPS) {
		return fmt.Errorf("invalid --tag %q: the mesh port serves plain HTTP without --mesh-tls-cert and --mesh-tls-key (the registrar adds the tag itself when they are given)", wire.TagHTTPS)
	}
	return nil
}

// meshTLSOn reports whether the mesh port serves TLS.
func (c *config) meshTLSOn() bool { return c.meshPort != 0 && c.meshTLSCert != "" }

// registeredPort is the port edges dial: the mesh port in mesh mode.
func (c *config) registeredPort() int {
	if c.meshPort != 0 {
		return c.meshPort
	}
	return c.port
}

// service_ builds the Consul definition for an app with pid on host.
func (c *config) service_(pid int, host string) discovery.Service {
	meta := make(map[string]string, len(c.meta)+3)
	for k, v := range c.meta {
		meta[k] = v
	}
	if pid > 0 {
		meta[wire.MetaPID] = fmt.Sprint(pid)
	}
	meta[wire.MetaHost] = host
	if c.meshPort != 0 {
		meta[wire.MetaAppPort] = fmt.Sprint(c.port)
	}
	id := c.id
	if id == "" {
		id = fmt.Sprintf("%s-%s-%d", c.service, host, c.registeredPort())
	}
	tags := []string(c.tags)
	if c.meshTLSOn() && !slices.Contains(tags, wire.TagHTTPS) {
		// Edges speak TLS to instances with this tag.
		tags = append(slices.Clip(tags), wire.TagHTTPS)
	}
	svc := discovery.Service{
		Name: c.service, ID: id, Address: c.address, Port: c.registeredPort(),
		Tags: tags, Meta: meta, TTL: c.ttl, DeregisterAfter: c.deregisterAfter,
	}
	svc.Weights.Passing, svc.Weights.Warning = c.weightPassing, c.weightWarning
	return svc
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}
