package otlptest

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

type receiverKind struct {
	name     string
	start    func(testing.TB) *Receiver
	exporter func(ctx context.Context, endpoint string) (sdktrace.SpanExporter, error)
}

var kinds = []receiverKind{
	{"grpc", Start, func(ctx context.Context, ep string) (sdktrace.SpanExporter, error) {
		return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(ep), otlptracegrpc.WithHeaders(map[string]string{"x-test": "1"}),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
	}},
	{"http", StartHTTP, func(ctx context.Context, ep string) (sdktrace.SpanExporter, error) {
		return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(ep+TracesPath), otlptracehttp.WithHeaders(map[string]string{"x-test": "1"}),
			otlptracehttp.WithCompression(otlptracehttp.GzipCompression), otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
	}},
}

func TestReceiverFlattensSpans(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r := k.start(t)
			if !strings.HasPrefix(r.Endpoint(), "http://127.0.0.1:") {
				t.Fatalf("Endpoint %q, want http://127.0.0.1:PORT", r.Endpoint())
			}
			exp, err := k.exporter(ctx, r.Endpoint())
			if err != nil {
				t.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithResource(resource.NewSchemaless(
				attribute.String("service.name", "svc"), attribute.Int("process.pid", 7))))
			defer tp.Shutdown(ctx)

			tr := tp.Tracer("scope-a")
			pctx, parent := tr.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer))
			_, child := tr.Start(pctx, "child", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
				attribute.String("s", "v"), attribute.Int("i", 42), attribute.Bool("b", true),
				attribute.Float64("f", 0.5), attribute.StringSlice("a", []string{"x", "y"})))
			child.SetStatus(codes.Error, "boom")
			child.End()
			parent.End()

			spans, err := r.WaitFor(ctx, func(s []Span) bool { return len(s) == 2 })
			if err != nil {
				t.Fatal(err)
			}
			c, p := spans[0], spans[1] // the syncer exports each span as it ends
			if c.Name != "child" || p.Name != "parent" {
				t.Fatalf("spans %+v, want child then parent", spans)
			}
			if p.TraceID != parent.SpanContext().TraceID().String() || p.SpanID != parent.SpanContext().SpanID().String() || p.ParentSpanID != "" {
				t.Errorf("parent ids %s/%s/%q, want %s/%s root", p.TraceID, p.SpanID, p.ParentSpanID,
					parent.SpanContext().TraceID(), parent.SpanContext().SpanID())
			}
			if c.TraceID != p.TraceID || c.ParentSpanID != p.SpanID {
				t.Errorf("child %s under %s, want trace %s under %s", c.TraceID, c.ParentSpanID, p.TraceID, p.SpanID)
			}
			if p.Kind != trace.SpanKindServer || c.Kind != trace.SpanKindClient {
				t.Errorf("kinds %v/%v, want server/client", p.Kind, c.Kind)
			}
			if c.StatusCode != "STATUS_CODE_ERROR" || p.StatusCode != "STATUS_CODE_UNSET" || c.Scope != "scope-a" {
				t.Errorf("child status %s scope %q, parent status %s", c.StatusCode, c.Scope, p.StatusCode)
			}
			wantAttrs := map[string]string{"s": "v", "i": "42", "b": "true", "f": "0.5", "a": "[x y]"}
			for key, v := range wantAttrs {
				if c.Attributes[key] != v {
					t.Errorf("attribute %s = %q, want %q", key, c.Attributes[key], v)
				}
			}
			if c.Resource["service.name"] != "svc" || c.Resource["process.pid"] != "7" {
				t.Errorf("resource %v", c.Resource)
			}
			if got := r.Headers().Get("x-test"); got != "1" {
				t.Errorf("header x-test %q, want 1", got)
			}
			if r.Requests() != 2 {
				t.Errorf("Requests = %d, want 2", r.Requests())
			}
		})
	}
}

func TestReceiverRejects(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r := k.start(t)
			exp, err := k.exporter(ctx, r.Endpoint())
			if err != nil {
				t.Fatal(err)
			}
			defer exp.Shutdown(ctx)
			tp := sdktrace.NewTracerProvider()
			_, s := tp.Tracer("t").Start(ctx, "op")
			s.End()
			ro := s.(sdktrace.ReadOnlySpan)

			r.Reject(true)
			if err := exp.ExportSpans(ctx, []sdktrace.ReadOnlySpan{ro}); err == nil {
				t.Fatal("export to a rejecting receiver succeeded")
			}
			if len(r.Spans()) != 0 || r.Requests() != 1 {
				t.Fatalf("kept %d spans from %d requests, want 0 from 1", len(r.Spans()), r.Requests())
			}
			r.Reject(false)
			if err := exp.ExportSpans(ctx, []sdktrace.ReadOnlySpan{ro}); err != nil {
				t.Fatalf("export after Reject(false): %v", err)
			}
			if len(r.Spans()) != 1 {
				t.Fatalf("kept %d spans, want 1", len(r.Spans()))
			}
		})
	}
}

func TestWaitForHonoursContext(t *testing.T) {
	r := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	spans, err := r.WaitFor(ctx, func(s []Span) bool { return len(s) > 0 })
	if err == nil || len(spans) != 0 {
		t.Fatalf("WaitFor = %v, %v; want no spans and the context's error", spans, err)
	}
}

func TestHTTPReceiverWantsProtobuf(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := StartHTTP(t)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.Endpoint()+TracesPath, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType || r.Requests() != 0 {
		t.Fatalf("status %d after %d requests, want 415 and nothing recorded", resp.StatusCode, r.Requests())
	}
}
