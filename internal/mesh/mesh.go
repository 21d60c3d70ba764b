// Package mesh is the registrar's inbound side in mesh mode: Serve listens
// on the registered mesh port (plain HTTP, or TLS with optional client
// certificates, reloadable: TLS) and its Handler forwards every request to
// the app on loopback, with a SERVER span that describes the app process,
// and tells edges when the instance is draining.
//
// It is the data path of one instance: it must stay a thin, fast hop. It
// does no balancing, no retries and no timeouts of its own (the edge agent
// owns those), never buffers bodies, and logs nothing per request above
// debug. It does not talk to Consul: the registrar registers the port.
package mesh

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/retry"
	"github.com/meshlb/meshlb/internal/wire"
)

// tracerName is the instrumentation scope of the spans this package makes.
const tracerName = "github.com/meshlb/meshlb/internal/mesh"

// Config configures a Handler.
type Config struct {
	// AppAddr is the app's "host:port" on loopback, e.g. "127.0.0.1:8000".
	AppAddr string
	// Tracer makes the SERVER spans; its resource should describe the app
	// process (service.name = the Consul service, service.instance.id,
	// process.pid of the app, host.name). Nil (or a typed nil) means no
	// spans; the incoming trace context is then passed to the app as it is.
	Tracer trace.TracerProvider
	// Logger is the handler's logger; nil means hclog.Default().
	Logger hclog.Logger
}

// Handler forwards requests to the app. It is safe for concurrent use.
type Handler struct {
	appAddr   string
	proxy     *httputil.ReverseProxy
	transport *http.Transport
	tracer    trace.Tracer // nil: no spans
	prop      propagation.TextMapPropagator
	log       hclog.Logger
	appErrs   appErrorLog

	draining atomic.Bool
	inFlight atomic.Int64
}

// NewHandler returns a Handler forwarding to cfg.AppAddr. It does not
// connect to the app: an app that is not up yet gets 502s until it is.
func NewHandler(cfg Config) (*Handler, error) {
	if err := checkAddr(cfg.AppAddr); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.Default().Named("mesh")
	}
	h := &Handler{
		appAddr: cfg.AppAddr,
		prop:    propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		log:     log,
	}
	h.appErrs.log = log
	if !isNil(cfg.Tracer) {
		h.tracer = cfg.Tracer.Tracer(tracerName, trace.WithSchemaURL(semconv.SchemaURL))
	}
	h.transport = &http.Transport{
		// Never an HTTP proxy from the environment: the app is on loopback.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   2 * time.Second, // loopback: a slow connect means the app is wedged
			KeepAlive: 30 * time.Second,
		}).DialContext,
		// Keep connections to the app open: a new loopback connection per
		// request costs the single-threaded app an accept each time. The
		// default of 2 idle per host would churn under any concurrency.
		MaxIdleConns:          0, // no total limit; one host
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Pass Content-Encoding through untouched.
		DisableCompression: true,
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      h.transport,
		BufferPool:     bufferPool{},
		ErrorHandler:   h.proxyError,
		ModifyResponse: h.appAnswered,
		ErrorLog:       log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
	return h, nil
}

func checkAddr(addr string) error {
	const want = "want host:port of the app on loopback, like 127.0.0.1:8000"
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("mesh: app address %q: %s: %w", addr, want, err)
	}
	if host == "" {
		return fmt.Errorf("mesh: app address %q has no host: %s", addr, want)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("mesh: app address %q has port %q outside 1-65535: %s", addr, port, want)
	}
	return nil
}

// isNil reports whether tp is nil or a typed nil pointer (a nil
// *sdktrace.TracerProvider, which tracing.NewProvider returns when tracing
// is off, would otherwise panic on first use).
func isNil(tp trace.TracerProvider) bool {
	if tp == nil {
		return true
	}
	v := reflect.ValueOf(tp)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// SetDraining turns draining on or off. While on, every response carries
// wire.DrainingHeader and Connection: close, so the edge marks the instance
// draining and moves its keep-alive connections elsewhere; requests are
// still served, in-flight and late ones alike.
func (h *Handler) SetDraining(on bool) { h.draining.Store(on) }

// Draining reports whether SetDraining(true) is in force.
func (h *Handler) Draining() bool { return h.draining.Load() }

// InFlight returns the number of requests being served now.
func (h *Handler) InFlight() int64 { return h.inFlight.Load() }

// CloseIdleConnections closes the idle keep-alive connections to the app;
// call it once the app is stopped or the server is shut down.
func (h *Handler) CloseIdleConnections() { h.transport.CloseIdleConnections() }

// ServeHTTP forwards r to the app.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.inFlight.Add(1)
	defer h.inFlight.Add(-1)

	draining := h.draining.Load()
	if draining {
		hdr := w.Header()
		hdr.Set(wire.DrainingHeader, wire.DrainingValue)
		if r.Header.Get("Upgrade") == "" { // an upgraded connection is not ours to close
			hdr.Set("Connection", "close")
		}
	}
	if h.tracer == nil {
		h.proxy.ServeHTTP(w, r)
		return
	}

	ctx := h.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := h.tracer.Start(ctx, wire.SpanName(r.Method),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(requestAttrs(r, draining)...))
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if p := recover(); p != nil {
			// ReverseProxy panics with http.ErrAbortHandler when the copy
			// of the response body fails; end the span, then let the
			// server abort the connection as it would.
			span.SetStatus(codes.Error, "response aborted")
			span.SetAttributes(semconv.ErrorTypeKey.String(wire.ErrResponseAborted))
			endSpan(span, sw)
			panic(p)
		}
		endSpan(span, sw)
	}()
	h.proxy.ServeHTTP(sw, r.WithContext(ctx))
}

func endSpan(span trace.Span, sw *statusWriter) {
	status := sw.status
	if status == 0 {
		status = http.StatusOK // nothing written: net/http sends 200
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	if sw.bytes > 0 {
		span.SetAttributes(semconv.HTTPResponseBodySize(int(sw.bytes)))
	}
	if status >= 500 && !sw.errorTyped {
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		span.SetStatus(codes.Error, "")
	}
	span.End()
}

// rewrite turns the inbound request into the request to the app. The mesh
// port is a transparent hop: the Host header and the edge's X-Forwarded-*
// headers pass unchanged (Tornado's xheaders takes the last
// X-Forwarded-For entry, which must stay the client, not the edge); they
// are only added when a client calls the mesh port directly.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = h.appAddr
	pr.Out.Host = pr.In.Host
	if _, ok := pr.In.Header["X-Forwarded-For"]; ok {
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
			if v, ok := pr.In.Header[k]; ok {
				pr.Out.Header[k] = v
			}
		}
	} else {
		pr.SetXForwarded()
	}
	if h.tracer != nil {
		// The app continues the trace under the mesh span.
		h.prop.Inject(pr.Out.Context(), propagation.HeaderCarrier(pr.Out.Header))
	}
}

// appAnswered is ReverseProxy's ModifyResponse: the app answered, so any
// run of "cannot reach the app" is over.
func (h *Handler) appAnswered(*http.Response) error {
	h.appErrs.success()
	return nil
}

// proxyError answers 502 when the app cannot be reached or the exchange
// failed before the response headers.
func (h *Handler) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	kind := wire.ErrorType(err)
	span := trace.SpanFromContext(r.Context())
	span.SetAttributes(semconv.ErrorTypeKey.String(kind))
	span.SetStatus(codes.Error, err.Error())
	if sw, ok := w.(*statusWriter); ok {
		sw.errorTyped = true
	}
	if kind == wire.ErrCanceled {
		// The client (the edge) gave up; nobody reads this answer.
		h.log.Debug("request canceled by the client", "path", r.URL.Path, "error", err)
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	h.appErrs.failure(h.appAddr, err)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusBadGateway)
	_, _ = w.Write([]byte("502 bad gateway: meshlb cannot reach the app\n"))
}

// appErrorLog logs "cannot reach the app" at once, then at most once per
// appErrEvery, then the recovery (retry.Outage keeps the count); the
// success path is one atomic load.
type appErrorLog struct {
	log     hclog.Logger
	failing atomic.Bool

	mu     sync.Mutex
	outage retry.Outage
}

const appErrEvery = 30 * time.Second

func (l *appErrorLog) failure(addr string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.outage.Interval = appErrEvery
	log, skipped := l.outage.Fail(time.Now())
	l.failing.Store(true)
	if log {
		l.log.Warn("cannot reach the app", "app", addr, "error", err, "failures", uint64(l.outage.Failures()), "not_logged", uint64(skipped))
	}
}

func (l *appErrorLog) success() {
	if !l.failing.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, _, ok := l.outage.Recover(time.Now()); ok {
		l.log.Info("the app answers again", "failures", uint64(n))
	}
	l.failing.Store(false)
}

// bufferPool gives ReverseProxy's body copies reusable 32 KiB buffers
// instead of a fresh one per request.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

var knownMethods = map[string]attribute.KeyValue{
	http.MethodConnect: semconv.HTTPRequestMethodConnect,
	http.MethodDelete:  semconv.HTTPRequestMethodDelete,
	http.MethodGet:     semconv.HTTPRequestMethodGet,
	http.MethodHead:    semconv.HTTPRequestMethodHead,
	http.MethodOptions: semconv.HTTPRequestMethodOptions,
	http.MethodPatch:   semconv.HTTPRequestMethodPatch,
	http.MethodPost:    semconv.HTTPRequestMethodPost,
	http.MethodPut:     semconv.HTTPRequestMethodPut,
	http.MethodTrace:   semconv.HTTPRequestMethodTrace,
}

// requestAttrs are the HTTP server span attributes known at the start
// (semantic conventions v1.40). url.query is left out: it often carries
// credentials.
func requestAttrs(r *http.Request, draining bool) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 12)
	if m, ok := knownMethods[r.Method]; ok {
		attrs = append(attrs, m)
	} else {
		attrs = append(attrs, semconv.HTTPRequestMethodOther, semconv.HTTPRequestMethodOriginal(r.Method))
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	attrs = append(attrs, semconv.URLPath(r.URL.Path), semconv.URLScheme(scheme))
	if host, port := splitHostPort(r.Host); host != "" {
		attrs = append(attrs, semconv.ServerAddress(host))
		if port > 0 {
			attrs = append(attrs, semconv.ServerPort(port))
		}
	}
	peer, peerPort := splitHostPort(r.RemoteAddr)
	if peer != "" {
		attrs = append(attrs, semconv.NetworkPeerAddress(peer))
		if peerPort > 0 {
			attrs = append(attrs, semconv.NetworkPeerPort(peerPort))
		}
	}
	if c := clientAddress(r.Header.Get("X-Forwarded-For")); c != "" {
		attrs = append(attrs, semconv.ClientAddress(c))
	} else if peer != "" {
		attrs = append(attrs, semconv.ClientAddress(peer))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(ua))
	}
	switch r.ProtoMajor {
	case 1:
		attrs = append(attrs, semconv.NetworkProtocolVersion("1."+strconv.Itoa(r.ProtoMinor)))
	case 2:
		attrs = append(attrs, semconv.NetworkProtocolVersion("2"))
	}
	if draining {
		attrs = append(attrs, wire.AttrDraining.Bool(true))
	}
	return attrs
}

// clientAddress is the first (original client) entry of X-Forwarded-For.
func clientAddress(xff string) string {
	for i := 0; i < len(xff); i++ {
		if xff[i] == ',' {
			xff = xff[:i]
			break
		}
	}
	for len(xff) > 0 && xff[0] == ' ' {
		xff = xff[1:]
	}
	for len(xff) > 0 && xff[len(xff)-1] == ' ' {
		xff = xff[:len(xff)-1]
	}
	return xff
}

// splitHostPort splits "host[:port]"; port is 0 when absent or invalid.
func splitHostPort(hp string) (string, int) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return hp, 0 // no port
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return host, 0
	}
	return host, n
}

// statusWriter records the status code and body size the app's response
// gets. Unwrap lets http.ResponseController reach Flush and Hijack, which
// ReverseProxy uses for streaming and upgrades.
type statusWriter struct {
	http.ResponseWriter
	status     int
	bytes      int64
	errorTyped bool // proxyError already set error.type
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
