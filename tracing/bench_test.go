package tracing

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/meshlb/meshlb/internal/testing/otlptest"
)

// BenchmarkSpan measures what one proxied request pays for its span: extract
// the incoming context, start a server span with the usual attributes, set
// the status code, end it. The exported case sends to a real receiver;
// the batch processor drops what its queue cannot hold, as in production.
func BenchmarkSpan(b *testing.B) {
	recv := otlptest.Start(b)
	cases := []struct {
		name string
		env  map[string]string // nil: tracing off
	}{
		{"off", nil},
		{"unsampled_always_off", map[string]string{envSampler: "always_off"}},
		{"unsampled_parentbased_ratio0", map[string]string{envSampler: "parentbased_traceidratio", envSamplerArg: "0"}},
		{"sampled", map[string]string{envSampler: "parentbased_always_on"}},
	}
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", "GET"),
		attribute.String("url.path", "/"),
		attribute.String("server.address", "10.0.0.7"),
		attribute.Int("server.port", 8080),
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var tp trace.TracerProvider = noop.NewTracerProvider()
			if bc.env != nil {
				env := map[string]string{envEndpoint: recv.Endpoint(), envProtocol: ProtocolGRPC}
				for k, v := range bc.env {
					env[k] = v
				}
				sdk, on, err := NewProvider(ctx, Options{ServiceName: "bench", Getenv: envOf(env), Logger: testLogger(b)})
				if err != nil || !on {
					b.Fatalf("NewProvider = %v, %v", on, err)
				}
				defer sdk.Shutdown(ctx)
				tp = sdk
			}
			tr := tp.Tracer("bench")
			prop := Propagator()
			// A root request: no traceparent, so the sampler decides.
			carrier := propagation.HeaderCarrier{}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				pctx := prop.Extract(ctx, carrier)
				_, span := tr.Start(pctx, "GET", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
				span.SetAttributes(attribute.Int("http.response.status_code", 200))
				span.End()
			}
		})
	}
}
