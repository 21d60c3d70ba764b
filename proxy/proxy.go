// Package proxy is meshlb's HTTP data path: it matches a request to a route,
// asks the route's lb.Balancer for an instance, forwards the request over a
// pool of keep-alive connections, retries on another instance only when that
// is safe, and streams the answer back (WebSocket and other upgrades
// included). Clients may speak HTTP/1.1 or HTTP/2 (h2c or TLS with ALPN);
// gRPC calls are balanced one by one and reach the instances over HTTP/2
// cleartext (see grpc.go).
//
// The package must not talk to Consul, choose instances itself or keep
// per-instance state: picking and passive health belong to lb, discovery
// feeds the balancers. It must not set up OpenTelemetry either; it only uses
// the global API, which the tracing package configures.
package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultConnectTimeout        = time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultIdleConnTimeout       = 90 * time.Second
	DefaultMaxIdleConnsPerHost   = 256
	DefaultMaxAttempts           = 3
	DefaultMaxReplayBody         = 64 << 10
)

// Config tunes a Proxy. Zero fields take the defaults above.
type Config struct {
	// ConnectTimeout bounds one TCP connect to an instance (default 1s).
	ConnectTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an instance's response
	// headers once the request is written (default 60s).
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes upstream keep-alive connections idle that long
	// (default 90s).
	IdleConnTimeout time.Duration
	// MaxIdleConnsPerHost caps the idle keep-alive connections kept per
	// instance (default 256).
	MaxIdleConnsPerHost int
	// MaxAttempts is the number of tries per request, the first included
	// (default 3; 1 disables retries).
	MaxAttempts int
	// MaxReplayBody is the largest idempotent request body buffered so it
	// can be replayed on another instance (default 64 KiB; negative: never
	// buffer, so such requests are only retried when nothing was sent).
	MaxReplayBody int64
	// TrustedProxies lists the peers whose X-Forwarded-* and Forwarded
	// headers are kept and extended; from any other peer they are replaced.
	TrustedProxies []netip.Prefix
	// Logger receives the proxy's logs; pass one already Named("proxy").
	// Nil discards them.
	Logger hclog.Logger
	// AccessLog logs one line per request at Info.
	AccessLog bool
	// Tracing turns on OpenTelemetry spans, propagation and the
	// traceresponse header. When false the request path does no otel work.
	Tracing bool
	// OnFailure, if set, is called after a routed request answered with a
	// 5xx status, with the instance that last served or failed it ("" if
	// none was picked) and the trace id ("" if none). A gRPC call the proxy
	// failed itself counts with the HTTP equivalent of the gRPC status it
	// got (503, 502, 504), though it went out as HTTP 200. It runs on the
	// request path: it must be cheap and must not block.
	OnFailure func(service, instanceID, traceID string, status int)
	// UpstreamTLS is the client TLS configuration for instances tagged
	// TagHTTPS (mesh ports serving TLS): RootCAs to verify them (nil: the
	// system roots), the client certificate to present (Certificates or
	// GetClientCertificate, for mTLS) and ServerName when it must not be
	// the address dialled. It is cloned, NextProtos forced to HTTP/1.1.
	// Nil: the system roots and no client certificate. Instances without
	// the tag are not affected.
	UpstreamTLS *tls.Config
	// Recorder, if set, gets a Record of every request once it is
	// answered (see Record); nil records nothing and makes no trace id.
	Recorder Recorder
}

// Proxy is the agent's reverse proxy. It is an http.Handler; the route table
// can be swapped at any time with SetRoutes.
type Proxy struct {
	cfg       Config
	log       hclog.Logger
	routes    atomic.Pointer[routeTable]
	h1        *h1Client       // HTTP/1.1 on the request's goroutine, for requests safe to resend
	transport *http.Transport // HTTP/1.1 to the instances, for everything else
	h2c       *http.Transport // HTTP/2 cleartext, for routes and instances that ask for it
	grpc      *http.Transport // HTTP/2 cleartext for gRPC calls: no response header timeout
	tracer    trace.Tracer    // nil when tracing is off
	hedges    hedges          // per service: per-try timeout, latency, retry budget
	inflight  inflight        // attempts waiting on a response head, by instance
}

// New validates cfg and routes and returns a Proxy. When cfg.Tracing is set
// it takes its tracer from the global provider, so set that up first.
func New(cfg Config, routes []Route) (*Proxy, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rt, err := compileRoutes(routes)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger,
		h1:        newH1Client(cfg),
		transport: newTransport(cfg),
		h2c:       newH2CTransport(cfg, cfg.ResponseHeaderTimeout),
		grpc:      newH2CTransport(cfg, 0),
	}
	if cfg.Tracing {
		p.tracer = newTracer()
	}
	p.hedges.attach(rt)
	p.routes.Store(rt)
	return p, nil
}

func (c *Config) setDefaults() error {
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ConnectTimeout", &c.ConnectTimeout, DefaultConnectTimeout},
		{"ResponseHeaderTimeout", &c.ResponseHeaderTimeout, DefaultResponseHeaderTimeout},
		{"IdleConnTimeout", &c.IdleConnTimeout, DefaultIdleConnTimeout},
	} {
		if *d.v < 0 {
			return fmt.Errorf("proxy: invalid %s %v: must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	switch {
	case c.MaxIdleConnsPerHost < 0:
		return fmt.Errorf("proxy: invalid MaxIdleConnsPerHost %d: must not be negative", c.MaxIdleConnsPerHost)
	case c.MaxIdleConnsPerHost == 0:
		c.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	switch {
	case c.MaxAttempts < 0:
		return fmt.Errorf("proxy: invalid MaxAttempts %d: must be at least 1", c.MaxAttempts)
	case c.MaxAttempts == 0:
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxReplayBody == 0 {
		c.MaxReplayBody = DefaultMaxReplayBody
	}
	for _, pfx := range c.TrustedProxies {
		if !pfx.IsValid() {
			return fmt.Errorf("proxy: invalid trusted proxy prefix %q", pfx)
		}
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return nil
}

// SetRoutes validates routes and atomically replaces the route table;
// requests already running keep the route they matched.
func (p *Proxy) SetRoutes(routes []Route) error {
	rt, err := compileRoutes(routes)
	if err != nil {
		return err
	}
	p.hedges.attach(rt)
	p.routes.Store(rt)
	return nil
}

// CloseIdleConnections closes the idle upstream keep-alive connections.
func (p *Proxy) CloseIdleConnections() {
	p.h1.closeIdle()
	p.transport.CloseIdleConnections()
	p.h2c.CloseIdleConnections()
	p.grpc.CloseIdleConnections()
}

// exchange is the state of one client request on its way through the
// proxy: one allocation, which also holds the first attempt.
type exchange struct {
	p     *Proxy
	w     http.ResponseWriter
	r     *http.Request
	ctx   context.Context // r's context, plus the server span when tracing
	route *compiledRoute
	start time.Time

	upgrade    string // requested protocol upgrade ("" for none)
	grpc       bool   // a gRPC call (see isGRPC)
	idempotent bool
	body       reqBody
	span       trace.Span // server span; nil when tracing is off
	traceResp  [1]string  // traceresponse header value, when tracing (a header value slice)

	// Outcome, for the access log and the server span.
	status   int
	written  int64
	attempts int
	inst     *lb.Instance // instance that served (or last failed)
	err      error        // last upstream error, if any
	abort    bool         // the response was cut short: abort the client connection

	grpcStatus string // a gRPC call's grpc-status, when known

	cache *cacheState // nil unless the route caches

	rec *Record // the request's Record, nil without Config.Recorder

	first attempt // the first attempt's storage
}

// ServeHTTP forwards r to an instance of the service its route names.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{p: p, w: w, r: r, ctx: r.Context(), start: time.Now()}
	x.grpc = isGRPC(r.Header)
	x.route = p.routes.Load().match(r.Host, r.URL.Path)
	if p.tracer != nil {
		x.startServerSpan()
	}
	if p.cfg.Recorder != nil {
		x.startRecord()
	}
	if x.route == nil {
		x.fail(http.StatusNotFound, "no route")
	} else if c := x.route.cache; c == nil || !x.cacheBefore(c) {
		x.forward()
	}
	if x.cache != nil {
		x.cacheEnd()
	}
	if x.span != nil {
		x.endServerSpan()
	}
	if p.cfg.AccessLog {
		x.logAccess()
	}
	if x.rec != nil {
		x.endRecord()
	}
	if p.cfg.OnFailure != nil && x.status >= 500 && x.route != nil {
		id := ""
		if x.inst != nil {
			id = x.inst.ID
		}
		p.cfg.OnFailure(x.route.service, id, x.traceID(), x.status)
	}
	if x.abort {
		// The upstream died mid-body: all we can do is cut the client
		// connection so it does not take a truncated body for a whole one.
		panic(http.ErrAbortHandler)
	}
}

// forward runs the attempts: pick, send, maybe retry elsewhere, answer.
func (x *exchange) forward() {
	r := x.r
	if r.Header == nil {
		r.Header = make(http.Header) // only a hand-made request lacks it
	}
	if x.grpc {
		// An HTTP/1.1 client (HTTP/2 is full duplex anyway) must be able to
		// stream its messages while the answer streams back.
		if r.ProtoMajor == 1 {
			http.NewResponseController(x.w).EnableFullDuplex()
		}
		if cancel := x.withGRPCDeadline(); cancel != nil {
			defer cancel()
		}
	} else {
		x.upgrade = upgradeType(r.Header)
		if !validUpgrade(x.upgrade) {
			x.fail(http.StatusBadRequest, "invalid upgrade protocol")
			return
		}
	}
	// A gRPC call is never replayed once sent, whatever its method (always
	// POST from a conforming client).
	x.idempotent = !x.grpc && isIdempotent(r.Method)
	x.p.prepareHeaders(r, x.upgrade)
	if err := x.prepareBody(); err != nil {
		x.err = err
		x.fail(http.StatusBadRequest, "error reading request body")
		return
	}
	bal := x.route.balancer

	var (
		triedBuf [DefaultMaxAttempts]*lb.Instance // Pick keeps no reference: stays on the stack
		tried    = triedBuf[:0]
		held     *attempt // a draining 503, forwarded if no retry is possible
	)
	for n := 1; ; n = x.attempts + 1 { // hedges count as attempts too
		inst, err := x.pick(bal, tried)
		if err != nil {
			switch {
			case held != nil:
				x.respond(held)
			case x.err != nil:
				x.failUpstream()
			default:
				x.failPick(err)
			}
			return
		}
		if held != nil {
			held.discard()
			held = nil
		}
		x.attempts = n
		x.inst = inst
		a := x.newAttempt(inst, n)
		a, res, err := x.send(a, &tried) // hedge.go: per-try timeout and hedges
		inst = a.inst
		if err != nil {
			a.finish(x.failedResult(a, err), 0, err)
			x.err = err
			retry := x.triesLeft(inst, tried) && x.retryable(a, err) && x.retryAllowed(err)
			if x.p.log.IsDebug() {
				x.p.log.Debug("upstream attempt failed", "service", x.route.service,
					"instance", inst.ID, "attempt", n, "retry", retry, "error", err)
			}
			if retry {
				tried = append(tried, inst)
				continue
			}
			x.failUpstream()
			return
		}
		a.res = res
		a.latency = time.Since(a.start)
		if x.drainSignal(inst, res) && res.StatusCode == http.StatusServiceUnavailable &&
			x.triesLeft(inst, tried) && x.idempotent && x.replayable() && x.ctx.Err() == nil {
			// The instance said first-hand it is going away and did not
			// serve: try another one, or pass its 503 on if none is left.
			held = a
			a.draining = true
			tried = append(tried, inst)
			continue
		}
		x.respond(a)
		return
	}
}

// transportFor returns the transport for sending the request to inst:
// HTTP/2 cleartext for gRPC calls, for routes with Protocol h2c and for
// instances tagged grpc or h2c; HTTP/1.1 otherwise, for upgrades, which
// HTTP/2 does not have, and for instances tagged https (mesh sidecars
// serving TLS speak HTTP/1.1 only).
func (x *exchange) transportFor(inst *lb.Instance) *http.Transport {
	switch {
	case usesTLS(inst):
		return x.p.transport // HTTPS to a mesh sidecar: HTTP/1.1 only
	case x.grpc:
		return x.p.grpc
	case x.upgrade != "":
		return x.p.transport
	case x.route.h2c || speaksH2C(inst):
		return x.p.h2c
	}
	return x.p.transport
}

// fastPath reports whether the request goes to inst through h1Client:
// idempotent, with no body or one held in memory, no upgrade, HTTP/1.1 in
// cleartext.
func (x *exchange) fastPath(inst *lb.Instance) bool {
	return x.idempotent && x.body.kind != bodyStream && x.upgrade == "" && !x.grpc &&
		!x.route.h2c && !speaksH2C(inst) && !usesTLS(inst)
}

// drainSignal reports whether the instance said first-hand that it is
// draining (wire.DrainingHeader), marks it so in the balancer, and strips the
// header from res.
func (x *exchange) drainSignal(inst *lb.Instance, res *http.Response) bool {
	v, ok := res.Header[wire.DrainingHeader]
	if !ok {
		return false
	}
	delete(res.Header, wire.DrainingHeader)
	if len(v) == 0 || strings.TrimSpace(v[0]) != wire.DrainingValue {
		return false
	}
	if err := x.route.balancer.SetDraining(inst.ID, true); err != nil {
		x.p.log.Debug("cannot mark instance draining", "service", x.route.service, "instance", inst.ID, "error", err)
	}
	return true
}

// failedResult is what the balancer hears of an attempt that failed with
// err: nothing when the client went away, which says nothing of the
// instance.
func (x *exchange) failedResult(a *attempt, err error) lb.Result {
	if x.ctx.Err() != nil {
		return lb.Result{}
	}
	return lb.Result{Err: err, Latency: time.Since(a.start)}
}

// respond forwards a's response to the client and ends the attempt.
func (x *exchange) respond(a *attempt) {
	res := a.res
	x.inst = a.inst
	x.status = res.StatusCode
	x.err = nil // earlier attempts' errors were overcome
	if res.StatusCode == http.StatusSwitchingProtocols {
		x.serveUpgrade(a)
		return
	}
	if x.cache != nil && x.cacheResponse(a) {
		return
	}
	result := lb.Result{Status: res.StatusCode, Latency: a.latency, RetryAfter: retryAfter(res)}
	readErr := x.writeResponse(res)
	if readErr != nil && x.ctx.Err() == nil {
		result.Err = readErr
		x.err = readErr
		// A gRPC call ends with a status in the trailers (endGRPC);
		// anything else can only be cut.
		x.abort = !x.grpc
	}
	if x.grpc {
		x.endGRPC(res, readErr)
	}
	a.finish(result, res.StatusCode, readErr)
}
