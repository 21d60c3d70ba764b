// Package probe checks an app instance the way Consul's own checks would,
// over HTTP, TCP or the gRPC health service, and says what it saw as a
// discovery.Health for the registrar's TTL check. It talks to the app
// only, never to Consul.
package probe

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshlb/meshlb/discovery"
)

// Config says how to probe the app.
type Config struct {
	Kind        string // "http" (the default), "tcp" or "grpc"
	Addr        string // host:port of the app
	Path        string // HTTP path to GET
	Timeout     time.Duration
	GRPCService string // the service asked about with "grpc"; "" is the server as a whole
}

// Prober checks the app the way Consul's own checks would: HTTP 2xx and
// 3xx are passing, 429 warning, anything else critical; a TCP connect is
// passing; gRPC SERVING is passing. A Prober is used by one goroutine.
type Prober struct {
	kind    string // "http", "tcp" or "grpc"
	addr    string // host:port of the app
	url     string
	timeout time.Duration
	client  *http.Client

	grpcService string
	grpcConn    *grpc.ClientConn // made lazily, kept: gRPC reconnects by itself
}

// New returns the prober of cfg.
func New(cfg Config) *Prober {
	return &Prober{
		kind:    cfg.Kind,
		addr:    cfg.Addr,
		url:     "http://" + cfg.Addr + cfg.Path,
		timeout: cfg.Timeout,
		client: &http.Client{
			Timeout: cfg.Timeout,
			Transport: &http.Transport{
				Proxy:             nil,
				DisableKeepAlives: true, // a probe must see a dead app, not a pooled conn
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		grpcService: cfg.GRPCService,
	}
}

// Close releases the gRPC connection, if any.
func (p *Prober) Close() {
	if p.grpcConn != nil {
		p.grpcConn.Close()
	}
}

// probeGRPC asks the app's grpc.health.v1 service: SERVING is passing,
// anything else critical.
func (p *Prober) probeGRPC(ctx context.Context) discovery.Health {
	if p.grpcConn == nil {
		conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return discovery.Health{Status: api.HealthCritical, Output: fmt.Sprintf("gRPC health %s: %v", p.addr, err)}
		}
		p.grpcConn = conn
	}
	resp, err := healthpb.NewHealthClient(p.grpcConn).Check(ctx, &healthpb.HealthCheckRequest{Service: p.grpcService})
	if err != nil {
		return discovery.Health{Status: api.HealthCritical, Output: fmt.Sprintf("gRPC health %s service %q: %v", p.addr, p.grpcService, err)}
	}
	out := fmt.Sprintf("gRPC health %s service %q: %s", p.addr, p.grpcService, resp.GetStatus())
	if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
		return discovery.Health{Status: api.HealthPassing, Output: out}
	}
	return discovery.Health{Status: api.HealthCritical, Output: out}
}

// Probe checks the app once, within the timeout.
func (p *Prober) Probe(ctx context.Context) discovery.Health {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if p.kind == "grpc" {
		return p.probeGRPC(ctx)
	}
	if p.kind == "tcp" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", p.addr)
		if err != nil {
			return discovery.Health{Status: api.HealthCritical, Output: fmt.Sprintf("TCP connect %s: %v", p.addr, err)}
		}
		c.Close()
		return discovery.Health{Status: api.HealthPassing, Output: "TCP connect " + p.addr + ": ok"}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	req.Header.Set("User-Agent", "meshlb-registrar/health")
	resp, err := p.client.Do(req)
	if err != nil {
		return discovery.Health{Status: api.HealthCritical, Output: fmt.Sprintf("HTTP GET %s: %v", p.url, err)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	out := fmt.Sprintf("HTTP GET %s: %s", p.url, resp.Status)
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 400:
		return discovery.Health{Status: api.HealthPassing, Output: out}
	case resp.StatusCode == http.StatusTooManyRequests:
		return discovery.Health{Status: api.HealthWarning, Output: out}
	default:
		return discovery.Health{Status: api.HealthCritical, Output: out}
	}
}
