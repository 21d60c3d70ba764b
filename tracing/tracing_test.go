package tracing

import (
	"context"
	"errors"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/testing/otlptest"
)

// syncBuffer collects log output written from several goroutines.
type syncBuffer = testproc.Buffer

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: &tWriter{t}})
}

type tWriter struct{ t testing.TB }

func (w *tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// keepGlobals restores the otel globals Setup replaces.
func keepGlobals(t *testing.T) {
	tp, prop := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	t.Cleanup(func() {
		if otel.GetTracerProvider() != tp {
			otel.SetTracerProvider(tp)
		}
		otel.SetTextMapPropagator(prop)
		// Not t.Logf: the SDK may report after the test has ended.
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Printf("otel error: %v", err) }))
	})
}

func TestSetupOff(t *testing.T) {
	keepGlobals(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	before := otel.GetTracerProvider()
	shutdown, on, err := Setup(ctx, Options{ServiceName: "x", Getenv: envOf(nil), Logger: testLogger(t)})
	if err != nil || on {
		t.Fatalf("Setup = %v, %v; want off without error", on, err)
	}
	if err := shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if otel.GetTracerProvider() != before {
		t.Error("Setup replaced the global TracerProvider although tracing is off")
	}
	fields := otel.GetTextMapPropagator().Fields()
	for _, f := range []string{"traceparent", "tracestate", "baggage"} {
		if !slices.Contains(fields, f) {
			t.Errorf("global propagator fields %v lack %q", fields, f)
		}
	}
}

func TestSetupInstallsProvider(t *testing.T) {
	keepGlobals(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	recv := otlptest.Start(t)
	shutdown, on, err := Setup(ctx, Options{ServiceName: "meshlb-agent", Logger: testLogger(t), Getenv: envOf(map[string]string{
		envEndpoint: recv.Endpoint(), envProtocol: "grpc",
	})})
	if err != nil || !on {
		t.Fatalf("Setup = %v, %v; want on", on, err)
	}
	_, span := otel.Tracer("test").Start(ctx, "global")
	span.End()
	if err := shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	spans := recv.Spans()
	if len(spans) != 1 || spans[0].Name != "global" || spans[0].Resource["service.name"] != "meshlb-agent" {
		t.Fatalf("received %+v, want one span \"global\" from meshlb-agent", spans)
	}
}

// TestExport sends spans to a real receiver over each protocol and checks
// that shutdown alone flushes them (the batch delay is 5 s; the receiver is
// read right after shutdown returns, without waiting).
func TestExport(t *testing.T) {
	for _, proto := range []string{ProtocolGRPC, ProtocolHTTPProtobuf} {
		t.Run(strings.ReplaceAll(proto, "/", "_"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var recv *otlptest.Receiver
			if proto == ProtocolGRPC {
				recv = otlptest.Start(t)
			} else {
				recv = otlptest.StartHTTP(t)
			}
			tp, on, err := NewProvider(ctx, Options{
				ServiceName: "default-name",
				Attributes:  []attribute.KeyValue{attribute.Int("process.pid", 4242), attribute.String("service.instance.id", "web-1")},
				Logger:      testLogger(t),
				Getenv: envOf(map[string]string{
					envEndpoint:      recv.Endpoint(),
					envProtocol:      proto,
					envServiceName:   "web",
					envResourceAttrs: "deployment.environment=test",
					envHeaders:       "x-api-key=k1",
					envCompression:   "gzip",
				}),
			})
			if err != nil || !on {
				t.Fatalf("NewProvider = %v, %v; want on", on, err)
			}
			tr := tp.Tracer("test")
			pctx, parent := tr.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer))
			_, child := tr.Start(pctx, "child", trace.WithAttributes(attribute.String("k", "v")))
			child.End()
			parent.End()
			if err := tp.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			spans := recv.Spans()
			if len(spans) != 2 {
				t.Fatalf("received %d spans after Shutdown, want 2: %+v", len(spans), spans)
			}
			byName := map[string]otlptest.Span{}
			for _, s := range spans {
				byName[s.Name] = s
			}
			p, c := byName["parent"], byName["child"]
			if p.TraceID != parent.SpanContext().TraceID().String() || c.TraceID != p.TraceID || c.ParentSpanID != p.SpanID || p.ParentSpanID != "" {
				t.Errorf("parent %+v child %+v: want one trace, child under parent", p, c)
			}
			if p.Kind != trace.SpanKindServer || c.Attributes["k"] != "v" {
				t.Errorf("parent kind %v, child attributes %v", p.Kind, c.Attributes)
			}
			wantRes := map[string]string{
				"service.name":           "web", // OTEL_SERVICE_NAME over Options.ServiceName
				"service.instance.id":    "web-1",
				"process.pid":            "4242", // Options.Attributes over this process
				"deployment.environment": "test",
				"telemetry.sdk.language": "go",
			}
			for k, v := range wantRes {
				if p.Resource[k] != v {
					t.Errorf("resource %s = %q, want %q (resource %v)", k, p.Resource[k], v, p.Resource)
				}
			}
			if p.Resource["host.name"] == "" {
				t.Errorf("resource lacks host.name: %v", p.Resource)
			}
			if got := recv.Headers().Get("x-api-key"); got != "k1" {
				t.Errorf("receiver saw x-api-key %q, want k1 from %s", got, envHeaders)
			}
		})
	}
}

// TestUnreachableCollector: a collector that refuses connections must not
// slow start, span creation, or shutdown beyond its context.
func TestUnreachableCollector(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	for _, proto := range []string{ProtocolGRPC, ProtocolHTTPProtobuf} {
		t.Run(strings.ReplaceAll(proto, "/", "_"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// The gRPC export goes on retrying after the test ends, so its
			// log must not go to t.Log.
			var out syncBuffer
			defer func() { t.Logf("log:\n%s", out.String()) }()
			start := time.Now()
			tp, on, err := NewProvider(ctx, Options{Logger: hclog.New(&hclog.LoggerOptions{Output: &out}), Getenv: envOf(map[string]string{
				envEndpoint: dead, envProtocol: proto,
			})})
			if err != nil || !on {
				t.Fatalf("NewProvider = %v, %v; want on", on, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("NewProvider took %v with the collector down; it must not wait for it", d)
			}
			spanStart := time.Now()
			for i := 0; i < 100; i++ {
				_, s := tp.Tracer("test").Start(ctx, "op")
				s.End()
			}
			if d := time.Since(spanStart); d > time.Second {
				t.Errorf("100 spans took %v with the collector down", d)
			}
			sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer scancel()
			shutStart := time.Now()
			err = tp.Shutdown(sctx)
			if d := time.Since(shutStart); d > 2*time.Second {
				t.Errorf("Shutdown with a 300ms context took %v", d)
			}
			// Shutdown's flush cannot reach the collector, so it gives up
			// when its context ends (gRPC retries; HTTP fails at once).
			t.Logf("Shutdown: %v", err)
		})
	}
}

// TestExportFailureLogged: a rejecting collector is logged once (not per
// batch), and the recovery is logged.
func TestExportFailureLogged(t *testing.T) {
	for _, proto := range []string{ProtocolGRPC, ProtocolHTTPProtobuf} {
		t.Run(strings.ReplaceAll(proto, "/", "_"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var recv *otlptest.Receiver
			if proto == ProtocolGRPC {
				recv = otlptest.Start(t)
			} else {
				recv = otlptest.StartHTTP(t)
			}
			var out syncBuffer
			log := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Info})
			tp, _, err := NewProvider(ctx, Options{Logger: log, Getenv: envOf(map[string]string{
				envEndpoint: recv.Endpoint(), envProtocol: proto,
			})})
			if err != nil {
				t.Fatal(err)
			}
			defer tp.Shutdown(ctx)
			export := func() {
				_, s := tp.Tracer("test").Start(ctx, "op")
				s.End()
				if err := tp.ForceFlush(ctx); err != nil {
					t.Fatalf("ForceFlush: %v", err)
				}
			}
			recv.Reject(true)
			export()
			export()
			export()
			if n := strings.Count(out.String(), "cannot export spans"); n != 1 {
				t.Fatalf("%d failure lines after 3 failed exports, want 1:\n%s", n, out.String())
			}
			if recv.Requests() != 3 {
				t.Fatalf("receiver got %d requests, want 3", recv.Requests())
			}
			recv.Reject(false)
			export()
			if !strings.Contains(out.String(), "exporting spans again") || !strings.Contains(out.String(), "failures=3") {
				t.Fatalf("no recovery line with failures=3:\n%s", out.String())
			}
			if n := len(recv.Spans()); n != 1 {
				t.Fatalf("receiver kept %d spans, want the 1 sent after recovery", n)
			}
		})
	}
}

func TestRateLog(t *testing.T) {
	var out syncBuffer
	now := time.Unix(1000, 0)
	r := newRateLog(hclog.New(&hclog.LoggerOptions{Output: &out}), "boom", "fine again")
	r.now = func() time.Time { return now }
	errX := errors.New("x")

	lines := func() int { return strings.Count(out.String(), "\n") }
	steps := []struct {
		advance   time.Duration
		fail      bool
		wantLines int
		wantLast  string
	}{
		{0, true, 1, "failures=1"},
		{time.Second, true, 1, ""},
		{10 * time.Second, true, 1, ""},
		{logEvery, true, 2, "not_logged=2"},
		{time.Second, false, 3, "fine again"},
		{time.Second, false, 3, ""},
		{time.Second, true, 4, "failures=1"}, // a new run logs at once
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		if s.fail {
			r.failure(errX)
		} else {
			r.success()
		}
		if got := lines(); got != s.wantLines {
			t.Fatalf("step %d: %d lines, want %d:\n%s", i, got, s.wantLines, out.String())
		}
		all := strings.Split(strings.TrimSpace(out.String()), "\n")
		if s.wantLast != "" && !strings.Contains(all[len(all)-1], s.wantLast) {
			t.Fatalf("step %d: last line %q, want %q", i, all[len(all)-1], s.wantLast)
		}
	}
}

func TestErrorHandlerRateLimited(t *testing.T) {
	var out syncBuffer
	h := newErrorHandler(hclog.New(&hclog.LoggerOptions{Output: &out}))
	for i := 0; i < 50; i++ {
		h.Handle(errors.New("dropped attribute " + strconv.Itoa(i)))
	}
	if n := strings.Count(out.String(), "opentelemetry error"); n != 1 {
		t.Fatalf("%d lines for 50 errors within %v, want 1:\n%s", n, logEvery, out.String())
	}
}

func TestDefaultServiceName(t *testing.T) {
	c, err := readConfig(envOf(nil), os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	res, err := newResource(Options{}, c)
	if err != nil {
		t.Fatal(err)
	}
	if got := serviceName(res); !strings.HasPrefix(got, "unknown_service:") {
		t.Fatalf("service.name %q, want the SDK's unknown_service:<executable>", got)
	}
	pid, _ := res.Set().Value("process.pid")
	if pid.AsInt64() != int64(os.Getpid()) {
		t.Fatalf("process.pid %v, want this process %d", pid.Emit(), os.Getpid())
	}
}

// TestExportTLS: an https endpoint is verified against
// OTEL_EXPORTER_OTLP_CERTIFICATE; without it the self-signed receiver is
// refused (the export fails, and is logged).
func TestExportTLS(t *testing.T) {
	recv := otlptest.StartHTTPS(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, recv.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		cert      string
		wantSpans int
	}{
		{"with CA", ca, 1},
		{"system roots", "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var out syncBuffer
			tp, on, err := NewProvider(ctx, Options{Logger: hclog.New(&hclog.LoggerOptions{Output: &out}), Getenv: envOf(map[string]string{
				envEndpoint: recv.Endpoint(), envCertificate: tt.cert,
			})})
			if err != nil || !on {
				t.Fatalf("NewProvider = %v, %v", on, err)
			}
			before := len(recv.Spans())
			_, s := tp.Tracer("test").Start(ctx, "tls")
			s.End()
			if err := tp.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if got := len(recv.Spans()) - before; got != tt.wantSpans {
				t.Fatalf("receiver got %d spans, want %d; log:\n%s", got, tt.wantSpans, out.String())
			}
			if tt.wantSpans == 0 && !strings.Contains(out.String(), "certificate") {
				t.Errorf("no certificate error logged:\n%s", out.String())
			}
		})
	}
}
