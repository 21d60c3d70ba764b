package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/tracing"
)

// BenchmarkProxyTracing compares a proxied GET with tracing off, with
// tracing configured but the request not sampled (the SDK installed with a
// never-sample sampler, as OTEL_TRACES_SAMPLER=parentbased_traceidratio
// with a low ratio does for most requests), and sampled (spans recorded
// and dropped at the end, so the figure is the span work without an
// exporter's I/O).
func BenchmarkProxyTracing(b *testing.B) {
	addr := cannedUpstream(b, []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n\r\nHello from Process Id = 42\n"))
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	b.Cleanup(func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) })
	otel.SetTextMapPropagator(tracing.Propagator())

	cases := []struct {
		name    string
		tracing bool
		tp      func() *sdktrace.TracerProvider
	}{
		{"off", false, nil},
		{"unsampled", true, func() *sdktrace.TracerProvider {
			return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
		}},
		{"sampled", true, func() *sdktrace.TracerProvider {
			// A fresh recorder per run, so recorded spans don't pile up.
			return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
				sdktrace.WithSpanProcessor(discardProcessor{}))
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			if tc.tp != nil {
				tp := tc.tp()
				otel.SetTracerProvider(tp)
				defer tp.Shutdown(context.Background())
			}
			bal, err := lb.NewBalancer("web", lb.Config{})
			if err != nil {
				b.Fatal(err)
			}
			bal.Update([]lb.Instance{instanceAt("canned", addr)})
			p, err := New(Config{Tracing: tc.tracing}, []Route{{Balancer: bal}})
			if err != nil {
				b.Fatal(err)
			}
			defer p.CloseIdleConnections()
			req := httptest.NewRequestWithContext(context.Background(), "GET", "http://app.example.com/", nil)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				p.ServeHTTP(w, req)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

// discardProcessor ends spans without keeping or exporting them: the
// sampled figure is the cost of recording, not of an exporter's I/O.
type discardProcessor struct{}

func (discardProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discardProcessor) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discardProcessor) Shutdown(context.Context) error                  { return nil }
func (discardProcessor) ForceFlush(context.Context) error                { return nil }
