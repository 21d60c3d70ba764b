// Package tracing sets up OpenTelemetry for both meshlb binaries from the
// standard OTEL_* environment variables: an OTLP trace exporter (gRPC or
// HTTP/protobuf), a batch span processor, a sampler, the resource, and the
// W3C TraceContext + Baggage propagator.
//
// Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and OTEL_SDK_DISABLED is not
// true, and OTEL_TRACES_EXPORTER is not none); off, only the propagator is
// installed, so trace context still flows through and spans cost next to
// nothing.
//
// The protocol defaults to http/protobuf, as the specification says SDKs
// should; set OTEL_EXPORTER_OTLP_PROTOCOL=grpc for a collector's gRPC port.
//
// Every variable is validated at start and a bad one is an error naming it.
// The package must never slow or block a request: the exporter connects in
// the background, the batch processor drops spans when its queue is full,
// and export failures are logged, rate limited, instead of surfacing.
// It creates no spans itself.
package tracing

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Options configure Setup and NewProvider. The environment wins over them:
// OTEL_SERVICE_NAME over ServiceName, OTEL_RESOURCE_ATTRIBUTES over
// Attributes.
type Options struct {
	// ServiceName is service.name when OTEL_SERVICE_NAME is unset; empty
	// means "unknown_service:<executable>", the SDK's default.
	ServiceName string
	// Attributes are extra resource attributes. process.pid and host.name
	// default to this process and this host; set them here to describe
	// another process (the registrar's mesh mode describes the app).
	Attributes []attribute.KeyValue
	// Logger receives configuration notes and rate-limited export errors;
	// nil means hclog.Default().
	Logger hclog.Logger
	// Getenv reads the OTEL_* variables; nil means os.Getenv. Tests set it.
	// (The batch processor's OTEL_BSP_* tuning is read by the SDK from the
	// process environment.)
	Getenv func(string) string
}

// Propagator returns the propagator meshlb uses everywhere: W3C
// TraceContext and W3C Baggage.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Setup installs the W3C TraceContext + Baggage propagator as the otel
// global and, when tracing is configured, a TracerProvider (batch span
// processor, the configured sampler) and an error handler that logs through
// o.Logger, rate limited. It returns a shutdown function that flushes the
// spans still queued, bounded by its context, and whether tracing is on.
// When tracing is off nothing but the propagator is installed and shutdown
// does nothing.
func Setup(ctx context.Context, o Options) (shutdown func(context.Context) error, enabled bool, err error) {
	otel.SetTextMapPropagator(Propagator())
	tp, on, err := NewProvider(ctx, o)
	if err != nil || !on {
		return func(context.Context) error { return nil }, false, err
	}
	otel.SetErrorHandler(newErrorHandler(logger(o).Named("otel")))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, true, nil
}

// NewProvider is Setup without the globals: it returns the provider (nil
// when tracing is off) for the caller to use and shut down. The registrar's
// mesh mode uses it for spans whose resource describes the app process.
// Errors inside the SDK other than failed exports still go to the otel
// global error handler.
func NewProvider(ctx context.Context, o Options) (*sdktrace.TracerProvider, bool, error) {
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	log := logger(o)
	c, err := readConfig(getenv, os.ReadFile)
	if err != nil {
		return nil, false, fmt.Errorf("tracing: %w", err)
	}
	for _, w := range c.warnings {
		log.Warn("questionable tracing setting", "warning", w)
	}
	if c.off {
		log.Debug("tracing is off", "reason", c.offReason)
		return nil, false, nil
	}
	exp, err := newExporter(ctx, c)
	if err != nil {
		return nil, false, fmt.Errorf("tracing: creating the %s exporter for %s: %w", c.protocol, c.endpointVar, err)
	}
	res, err := newResource(o, c)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, false, fmt.Errorf("tracing: building the resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(&loggingExporter{SpanExporter: exp, log: newRateLog(log, "cannot export spans", "exporting spans again")}),
		sdktrace.WithSampler(c.sampler),
		sdktrace.WithResource(res),
	)
	log.Info("tracing is on", "endpoint", redactURL(c.endpoint), "protocol", c.protocol, "sampler", c.samplerDesc,
		"service", serviceName(res))
	return tp, true, nil
}

func logger(o Options) hclog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return hclog.Default().Named("tracing")
}

// newExporter builds the exporter with every setting passed explicitly, so
// the values validated from Getenv are the ones used. Neither exporter
// connects here: the gRPC client dials lazily (grpc.NewClient), the HTTP one
// per export.
func newExporter(ctx context.Context, c *config) (*otlptrace.Exporter, error) {
	switch c.protocol {
	case ProtocolGRPC:
		// Credentials are always explicit: the scheme decides (as the
		// specification says), even if the exporter found certificate
		// variables of its own, which would otherwise turn on TLS for an
		// http:// endpoint.
		creds := insecure.NewCredentials()
		if c.endpoint.Scheme == "https" {
			creds = credentials.NewTLS(tlsConfig(c))
		}
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(c.endpoint.String()), otlptracegrpc.WithTLSCredentials(creds)}
		if len(c.headers) > 0 {
			opts = append(opts, otlptracegrpc.WithHeaders(c.headers))
		}
		if c.timeout > 0 {
			opts = append(opts, otlptracegrpc.WithTimeout(c.timeout))
		}
		if c.gzip {
			opts = append(opts, otlptracegrpc.WithCompressor("gzip"))
		}
		return otlptracegrpc.New(ctx, opts...)
	case ProtocolHTTPProtobuf:
		opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(c.endpoint.String())}
		if c.endpoint.Scheme == "https" {
			opts = append(opts, otlptracehttp.WithTLSClientConfig(tlsConfig(c)))
		}
		if len(c.headers) > 0 {
			opts = append(opts, otlptracehttp.WithHeaders(c.headers))
		}
		if c.timeout > 0 {
			opts = append(opts, otlptracehttp.WithTimeout(c.timeout))
		}
		if c.gzip {
			opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
		}
		return otlptracehttp.New(ctx, opts...)
	default:
		return nil, fmt.Errorf("protocol %q: want %s or %s", c.protocol, ProtocolGRPC, ProtocolHTTPProtobuf)
	}
}

// tlsConfig is the configured TLS (CA, client certificate) or the system
// roots.
func tlsConfig(c *config) *tls.Config {
	if c.tls != nil {
		return c.tls
	}
	return &tls.Config{MinVersion: tls.VersionTLS12}
}

// newResource merges, lowest precedence first: the SDK's telemetry.sdk.*,
// this process's pid and host, service.name from Options,
// Options.Attributes, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME (the
// environment over code, as resource.WithFromEnv orders them).
func newResource(o Options, c *config) (*resource.Resource, error) {
	name := o.ServiceName
	if name == "" {
		name = defaultServiceName()
	}
	base := []attribute.KeyValue{semconv.ProcessPID(os.Getpid()), semconv.ServiceName(name)}
	if h, err := os.Hostname(); err == nil {
		base = append(base, semconv.HostName(h))
	}
	layers := []*resource.Resource{
		resource.NewSchemaless(base...),
		resource.NewSchemaless(o.Attributes...),
		resource.NewSchemaless(c.resourceAttrs...),
	}
	if c.serviceName != "" {
		layers = append(layers, resource.NewSchemaless(semconv.ServiceName(c.serviceName)))
	}
	// telemetry.sdk.* carries the SDK's schema URL; merging schemaless
	// layers into it keeps that URL (Merge puts its second argument over the
	// first).
	res, err := resource.New(context.Background(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		if res, err = resource.Merge(res, l); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func defaultServiceName() string {
	exe, err := os.Executable()
	if err != nil {
		return "unknown_service"
	}
	return "unknown_service:" + filepath.Base(exe)
}

func serviceName(res *resource.Resource) string {
	v, _ := res.Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}

// redactURL drops user info and the query, which may carry credentials,
// before an endpoint is logged.
func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	c.RawQuery = ""
	return strings.TrimSuffix(c.String(), "?")
}
