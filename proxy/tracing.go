package proxy

import (
	"context"
	"encoding/hex"
	"net/http"
	"strconv"
	"unsafe"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/wire"
)

// tracerName is the instrumentation scope of the proxy's spans.
const tracerName = "github.com/meshlb/meshlb/proxy"

func newTracer() trace.Tracer {
	return otel.GetTracerProvider().Tracer(tracerName, trace.WithSchemaURL(semconv.SchemaURL))
}

// startServerSpan continues the client's trace (W3C traceparent) with a
// SERVER span for the whole request and puts the traceresponse header on the
// response.
func (x *exchange) startServerSpan() {
	r := x.r
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), headerCarrier(r.Header))
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	// Start bare and add attributes only to a span that records: an
	// unsampled request then costs no attribute work (measured: 27 fewer
	// allocations per request). Samplers see no attributes at start.
	ctx, span := x.p.tracer.Start(ctx, wire.SpanName(r.Method), serverKind)
	if span.IsRecording() {
		ip, _, _ := x.p.peer(r.RemoteAddr)
		span.SetAttributes(
			methodAttr(r.Method),
			semconv.URLPath(r.URL.Path),
			semconv.URLScheme(scheme),
			semconv.ServerAddress(requestHost(r.Host)),
			semconv.ClientAddress(ip),
		)
		if x.route != nil {
			span.SetAttributes(wire.AttrService.String(x.route.service))
		}
	}
	x.ctx = ctx
	x.span = span
	if sc := span.SpanContext(); sc.IsValid() {
		x.traceResp[0] = traceResponse(sc)
		x.setTraceResponse(x.w.Header())
	}
}

// endServerSpan records the outcome on the server span and ends it.
func (x *exchange) endServerSpan() {
	span := x.span
	if !span.IsRecording() {
		span.End()
		return
	}
	if x.status > 0 {
		span.SetAttributes(semconv.HTTPResponseStatusCode(x.status))
	}
	if x.status >= 500 && x.status != statusClientClosed {
		if x.err != nil {
			span.SetAttributes(semconv.ErrorTypeKey.String(errorType(x.err)))
			span.SetStatus(codes.Error, x.err.Error())
		} else {
			span.SetStatus(codes.Error, "")
		}
	}
	span.End()
}

// startClientSpan starts the CLIENT span of an upstream attempt, child of
// the server span, naming the instance; it returns the context carrying it.
func (a *attempt) startClientSpan(ctx context.Context) context.Context {
	x, inst := a.x, a.inst
	ctx, a.span = x.p.tracer.Start(ctx, wire.SpanName(x.r.Method), clientKind)
	if !a.span.IsRecording() {
		return ctx
	}
	attrs := make([]attribute.KeyValue, 0, 12)
	attrs = append(attrs,
		methodAttr(x.r.Method),
		semconv.ServerAddress(inst.Address),
		semconv.ServerPort(inst.Port),
		semconv.ServiceInstanceID(inst.ID),
		wire.AttrService.String(x.route.service),
		wire.AttrPolicy.String(x.route.policy),
		wire.AttrAttempt.Int(a.n),
	)
	if pid := inst.Meta[wire.MetaPID]; pid != "" {
		if n, err := strconv.Atoi(pid); err == nil {
			attrs = append(attrs, wire.AttrInstancePID.Int(n))
		} else {
			attrs = append(attrs, wire.AttrInstancePID.String(pid))
		}
	}
	if host := inst.Meta[wire.MetaHost]; host != "" {
		attrs = append(attrs, wire.AttrInstanceHost.String(host))
	}
	if a.n > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(a.n-1))
	}
	if inst.Datacenter != "" {
		attrs = append(attrs, wire.AttrInstanceDC.String(inst.Datacenter))
	}
	if inst.Backup {
		attrs = append(attrs, wire.AttrInstanceTier.String("backup"))
	}
	a.span.SetAttributes(attrs...)
	return ctx
}

// endClientSpan records an attempt's outcome on its span and ends it.
func (a *attempt) endClientSpan(status int, err error) {
	span := a.span
	if !span.IsRecording() {
		span.End()
		return
	}
	if status > 0 {
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	}
	switch {
	case err != nil:
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
		span.SetStatus(codes.Error, err.Error())
	case status >= 400:
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		span.SetStatus(codes.Error, "")
	}
	span.End()
}

// injectTrace writes the trace context of ctx into the upstream headers.
func injectTrace(ctx context.Context, h http.Header) {
	otel.GetTextMapPropagator().Inject(ctx, headerCarrier(h))
}

// headerCarrier is propagation.HeaderCarrier whose Set spells the W3C
// fields' canonical keys itself: textproto would allocate them anew on
// every request.
type headerCarrier http.Header

// The span kinds as start options, made once (each call would allocate).
var (
	serverKind = trace.WithSpanKind(trace.SpanKindServer)
	clientKind = trace.WithSpanKind(trace.SpanKindClient)
)

func (c headerCarrier) Get(key string) string {
	var v []string
	switch key {
	case "traceparent":
		v = c["Traceparent"]
	case "tracestate":
		v = c["Tracestate"]
	case "baggage":
		v = c["Baggage"]
	default:
		v = c[http.CanonicalHeaderKey(key)]
	}
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
func (c headerCarrier) Keys() []string { return propagation.HeaderCarrier(c).Keys() }

func (c headerCarrier) Set(key, value string) {
	switch key {
	case "traceparent":
		key = "Traceparent"
	case "tracestate":
		key = "Tracestate"
	case "baggage":
		key = "Baggage"
	default:
		key = http.CanonicalHeaderKey(key)
	}
	c[key] = []string{value}
}

// setTraceResponse sets the W3C traceresponse header when tracing.
func (x *exchange) setTraceResponse(h http.Header) {
	if x.traceResp[0] != "" {
		h["Traceresponse"] = x.traceResp[:]
	}
}

// traceResponse formats a W3C Trace Context Level 2 traceresponse value:
// 00-<trace id>-<span id>-<flags>.
func traceResponse(sc trace.SpanContext) string {
	return formatTraceResponse(new([traceResponseLen]byte), sc)
}

// traceResponseLen is the length of a traceresponse value.
const traceResponseLen = 55

// formatTraceResponse formats traceResponse's value in b and returns it,
// sharing b's memory.
func formatTraceResponse(b *[traceResponseLen]byte, sc trace.SpanContext) string {
	tid, sid := sc.TraceID(), sc.SpanID()
	copy(b[:], "00-")
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(sc.TraceFlags())})
	return unsafe.String(&b[0], len(b))
}

// methodAttr is http.request.method, "_OTHER" for unknown methods as the
// semantic conventions ask.
func methodAttr(m string) attribute.KeyValue {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodConnect, http.MethodOptions, http.MethodTrace, http.MethodPatch:
		return semconv.HTTPRequestMethodKey.String(m)
	}
	return semconv.HTTPRequestMethodOther
}
