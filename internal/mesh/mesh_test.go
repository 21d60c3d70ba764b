package mesh

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/wire"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

const (
	traceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentID = "00f067aa0ba902b7"
)

// seen is what the app received.
type seen struct {
	header http.Header
	host   string
	body   string
}

// app is a real backend that records each request and answers status with
// body "hello".
type app struct {
	srv   *httptest.Server
	mu    sync.Mutex
	reqs  []seen
	reply func(w http.ResponseWriter, r *http.Request)
}

func startApp(t *testing.T) *app {
	a := &app{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.reqs = append(a.reqs, seen{header: r.Header.Clone(), host: r.Host, body: string(b)})
		reply := a.reply
		a.mu.Unlock()
		if reply != nil {
			reply(w, r)
			return
		}
		_, _ = io.WriteString(w, "hello")
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) addr() string { return a.srv.Listener.Addr().String() }

func (a *app) last(t *testing.T) seen {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.reqs) == 0 {
		t.Fatal("the app received no request")
	}
	return a.reqs[len(a.reqs)-1]
}

// appResource describes the app process, as the registrar builds it.
func appResource() *resource.Resource {
	return resource.NewSchemaless(
		attribute.String("service.name", "web"),
		attribute.String("service.instance.id", "web-host1-8000"),
		attribute.Int("process.pid", 4242),
		attribute.String("host.name", "host1"),
	)
}

func newRecorder() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	sr := tracetest.NewSpanRecorder()
	return sr, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithResource(appResource()))
}

// serve runs h behind a real HTTP server; done receives after each
// ServeHTTP has returned, so span and in-flight checks need no polling.
func serve(t *testing.T, h *Handler) (*httptest.Server, <-chan struct{}) {
	done := make(chan struct{}, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { done <- struct{}{} }()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, done
}

func wait(ctx context.Context, t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("ServeHTTP did not return")
	}
}

func get(ctx context.Context, t *testing.T, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func attrs(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes() {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

func onlySpan(t *testing.T, sr *tracetest.SpanRecorder) sdktrace.ReadOnlySpan {
	t.Helper()
	ended := sr.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans ended, want 1", len(ended))
	}
	return ended[0]
}

func TestSpanContinuesIncomingTrace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend := startApp(t)
	sr, tp := newRecorder()
	h, err := NewHandler(Config{AppAddr: backend.addr(), Tracer: tp, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	srv, done := serve(t, h)

	resp, body := get(ctx, t, srv.URL+"/orders/7?token=secret", map[string]string{
		"traceparent":     "00-" + traceID + "-" + parentID + "-01",
		"baggage":         "tenant=acme",
		"X-Forwarded-For": "203.0.113.9, 10.0.0.1",
		"User-Agent":      "meshlb-test",
	})
	wait(ctx, t, done)
	if resp.StatusCode != http.StatusOK || body != "hello" {
		t.Fatalf("response %d %q, want 200 hello", resp.StatusCode, body)
	}

	span := onlySpan(t, sr)
	if span.SpanKind() != trace.SpanKindServer || span.Name() != "GET" {
		t.Errorf("span %q kind %v, want GET, server", span.Name(), span.SpanKind())
	}
	if got := span.Parent(); got.TraceID().String() != traceID || got.SpanID().String() != parentID || !got.IsRemote() {
		t.Errorf("parent %s/%s remote=%v, want %s/%s from traceparent", got.TraceID(), got.SpanID(), got.IsRemote(), traceID, parentID)
	}
	if span.SpanContext().TraceID().String() != traceID || !span.SpanContext().IsSampled() {
		t.Errorf("span trace %s sampled=%v, want %s sampled", span.SpanContext().TraceID(), span.SpanContext().IsSampled(), traceID)
	}
	a := attrs(span)
	want := map[string]string{
		"http.request.method":       "GET",
		"url.path":                  "/orders/7",
		"url.scheme":                "http",
		"server.address":            "127.0.0.1",
		"client.address":            "203.0.113.9",
		"network.peer.address":      "127.0.0.1",
		"user_agent.original":       "meshlb-test",
		"network.protocol.version":  "1.1",
		"http.response.status_code": "200",
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, a[k], v)
		}
	}
	for k, v := range a {
		if strings.Contains(v, "secret") {
			t.Errorf("attribute %s = %q leaks the query", k, v)
		}
	}
	if span.Status().Code != codes.Unset {
		t.Errorf("status %v, want unset for a 200", span.Status())
	}
	res := map[string]string{}
	for _, kv := range span.Resource().Attributes() {
		res[string(kv.Key)] = kv.Value.Emit()
	}
	for k, v := range map[string]string{"service.name": "web", "service.instance.id": "web-host1-8000", "process.pid": "4242", "host.name": "host1"} {
		if res[k] != v {
			t.Errorf("resource %s = %q, want %q", k, res[k], v)
		}
	}

	got := backend.last(t)
	wantTP := "00-" + traceID + "-" + span.SpanContext().SpanID().String() + "-01"
	if tp := got.header.Get("traceparent"); tp != wantTP {
		t.Errorf("app got traceparent %q, want %q (same trace, the mesh span as parent)", tp, wantTP)
	}
	if b := got.header.Get("baggage"); b != "tenant=acme" {
		t.Errorf("app got baggage %q, want tenant=acme", b)
	}
	if xff := got.header.Get("X-Forwarded-For"); xff != "203.0.113.9, 10.0.0.1" {
		t.Errorf("app got X-Forwarded-For %q, want the edge's unchanged", xff)
	}
	if got.host != srv.Listener.Addr().String() {
		t.Errorf("app got Host %q, want the client's %q", got.host, srv.Listener.Addr().String())
	}
}

func TestRootSpanWithoutTraceparent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend := startApp(t)
	sr, tp := newRecorder()
	h, err := NewHandler(Config{AppAddr: backend.addr(), Tracer: tp, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	srv, done := serve(t, h)
	get(ctx, t, srv.URL+"/", nil)
	wait(ctx, t, done)

	span := onlySpan(t, sr)
	if span.Parent().IsValid() {
		t.Errorf("span has parent %v, want a root span", span.Parent())
	}
	tp2 := backend.last(t).header.Get("traceparent")
	if !strings.Contains(tp2, span.SpanContext().TraceID().String()) {
		t.Errorf("app got traceparent %q, want the mesh span's trace %s", tp2, span.SpanContext().TraceID())
	}
	if xff := backend.last(t).header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
		t.Errorf("app got X-Forwarded-For %q, want the direct client 127.0.0.1", xff)
	}
}

func TestNoTracer(t *testing.T) {
	var typedNil *sdktrace.TracerProvider
	for _, tt := range []struct {
		name string
		tp   trace.TracerProvider
	}{{"nil", nil}, {"typed nil", typedNil}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			backend := startApp(t)
			h, err := NewHandler(Config{AppAddr: backend.addr(), Tracer: tt.tp, Logger: hclog.NewNullLogger()})
			if err != nil {
				t.Fatal(err)
			}
			srv, done := serve(t, h)
			in := "00-" + traceID + "-" + parentID + "-01"
			resp, _ := get(ctx, t, srv.URL+"/", map[string]string{"traceparent": in})
			wait(ctx, t, done)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := backend.last(t).header.Get("traceparent"); got != in {
				t.Errorf("app got traceparent %q, want the incoming %q unchanged", got, in)
			}
		})
	}
}

func TestDraining(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend := startApp(t)
	dead := deadAddr(t)
	for _, tt := range []struct {
		name     string
		addr     string
		draining bool
		status   int
	}{
		{"serving", backend.addr(), false, http.StatusOK},
		{"draining", backend.addr(), true, http.StatusOK},
		{"draining app down", dead, true, http.StatusBadGateway},
		{"app down", dead, false, http.StatusBadGateway},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sr, tp := newRecorder()
			h, err := NewHandler(Config{AppAddr: tt.addr, Tracer: tp, Logger: hclog.NewNullLogger()})
			if err != nil {
				t.Fatal(err)
			}
			h.SetDraining(tt.draining)
			if h.Draining() != tt.draining {
				t.Fatalf("Draining() = %v", h.Draining())
			}
			srv, done := serve(t, h)
			resp, _ := get(ctx, t, srv.URL+"/", nil)
			wait(ctx, t, done)
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			got := resp.Header.Get(wire.DrainingHeader)
			if tt.draining && (got != "1" || !resp.Close) {
				t.Errorf("%s=%q close=%v, want 1 and Connection: close", wire.DrainingHeader, got, resp.Close)
			}
			if !tt.draining && (got != "" || resp.Close) {
				t.Errorf("%s=%q close=%v while serving, want neither", wire.DrainingHeader, got, resp.Close)
			}
			if d := attrs(onlySpan(t, sr))["meshlb.draining"]; (d == "true") != tt.draining {
				t.Errorf("span meshlb.draining=%q, want it only while draining", d)
			}
		})
	}
}

func TestInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend := startApp(t)
	arrived, release := make(chan struct{}, 3), make(chan struct{})
	backend.reply = func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		_, _ = io.WriteString(w, "late")
	}
	h, err := NewHandler(Config{AppAddr: backend.addr(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	var wg sync.WaitGroup
	recs := make([]*httptest.ResponseRecorder, n)
	for i := range n {
		recs[i] = httptest.NewRecorder()
		wg.Go(func() {
			h.ServeHTTP(recs[i], httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil))
		})
	}
	for range n {
		select {
		case <-arrived:
		case <-ctx.Done():
			t.Fatal("requests did not reach the app")
		}
	}
	if got := h.InFlight(); got != n {
		t.Errorf("InFlight = %d with %d requests at the app, want %d", got, n, n)
	}
	h.SetDraining(true) // late responses still complete
	close(release)
	wg.Wait()
	if got := h.InFlight(); got != 0 {
		t.Errorf("InFlight = %d after all returned, want 0", got)
	}
	for i, rec := range recs {
		if rec.Code != http.StatusOK || rec.Body.String() != "late" {
			t.Errorf("request %d: %d %q, want 200 late", i, rec.Code, rec.Body.String())
		}
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer = testproc.Buffer

func TestAppUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr := deadAddr(t)
	var out syncBuffer
	sr, tp := newRecorder()
	h, err := NewHandler(Config{AppAddr: addr, Tracer: tp, Logger: hclog.New(&hclog.LoggerOptions{Output: &out})})
	if err != nil {
		t.Fatal(err)
	}
	srv, done := serve(t, h)
	for range 3 {
		resp, body := get(ctx, t, srv.URL+"/", nil)
		wait(ctx, t, done)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "cannot reach the app") {
			t.Fatalf("response %d %q, want 502 with a short reason", resp.StatusCode, body)
		}
	}
	if n := strings.Count(out.String(), "cannot reach the app"); n != 1 {
		t.Errorf("%d log lines for 3 failures, want 1:\n%s", n, out.String())
	}
	span := sr.Ended()[0]
	a := attrs(span)
	if span.Status().Code != codes.Error || a["error.type"] != wire.ErrDial || a["http.response.status_code"] != "502" {
		t.Errorf("span status %v attributes %v, want error, dial_error, 502", span.Status(), a)
	}

	// The app comes up on its port: the next request succeeds and the
	// recovery is logged.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the app's port was taken meanwhile: %v", err)
	}
	appSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "up") })}
	go appSrv.Serve(ln)
	defer appSrv.Close()
	resp, body := get(ctx, t, srv.URL+"/", nil)
	wait(ctx, t, done)
	if resp.StatusCode != http.StatusOK || body != "up" {
		t.Fatalf("response %d %q once the app is up, want 200 up", resp.StatusCode, body)
	}
	if !strings.Contains(out.String(), "the app answers again") || !strings.Contains(out.String(), "failures=3") {
		t.Errorf("no recovery line with failures=3:\n%s", out.String())
	}
	h.CloseIdleConnections()
}

func TestAppStatusOnSpan(t *testing.T) {
	for _, tt := range []struct {
		status    int
		wantCode  codes.Code
		wantError string
	}{
		{http.StatusNotFound, codes.Unset, ""},
		{http.StatusServiceUnavailable, codes.Error, "503"},
	} {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			backend := startApp(t)
			backend.reply = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(tt.status) }
			sr, tp := newRecorder()
			h, err := NewHandler(Config{AppAddr: backend.addr(), Tracer: tp, Logger: hclog.NewNullLogger()})
			if err != nil {
				t.Fatal(err)
			}
			srv, done := serve(t, h)
			resp, _ := get(ctx, t, srv.URL+"/", nil)
			wait(ctx, t, done)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want the app's %d", resp.StatusCode, tt.status)
			}
			span := onlySpan(t, sr)
			if span.Status().Code != tt.wantCode || attrs(span)["error.type"] != tt.wantError {
				t.Errorf("span status %v error.type %q, want %v %q", span.Status().Code, attrs(span)["error.type"], tt.wantCode, tt.wantError)
			}
		})
	}
}

func TestPostBodyForwarded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend := startApp(t)
	backend.reply = func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }
	h, err := NewHandler(Config{AppAddr: backend.addr(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	srv, done := serve(t, h)
	payload := strings.Repeat("x", 100_000)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/echo", strings.NewReader(payload))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	wait(ctx, t, done)
	if got := backend.last(t).body; got != payload {
		t.Fatalf("app got a %d-byte body, want %d bytes", len(got), len(payload))
	}
}

// TestStreaming: a response the app flushes in parts reaches the client part
// by part (statusWriter must not hide http.Flusher from ReverseProxy).
func TestStreaming(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backend := startApp(t)
	next := make(chan struct{})
	backend.reply = func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done(): // the client gave up: do not hold the server's Close
			return
		}
		_, _ = io.WriteString(w, "second\n")
	}
	_, tp := newRecorder()
	h, err := NewHandler(Config{AppAddr: backend.addr(), Tracer: tp, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	srv, done := serve(t, h)
	// A short bound: without flushing, the first part never comes alone.
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
	defer rcancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, srv.URL+"/stream", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first part %q, %v: want it before the app finishes", line, err)
	}
	close(next)
	if line, err = br.ReadString('\n'); err != nil || line != "second\n" {
		t.Fatalf("second part %q, %v", line, err)
	}
	wait(ctx, t, done)
}

func TestNewHandlerRejects(t *testing.T) {
	for _, addr := range []string{"", "8000", "127.0.0.1", ":8000", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:http"} {
		t.Run(addr, func(t *testing.T) {
			_, err := NewHandler(Config{AppAddr: addr})
			if err == nil || !strings.Contains(err.Error(), "\""+addr+"\"") {
				t.Fatalf("NewHandler(%q) error %v, want one naming the address", addr, err)
			}
		})
	}
}

func TestClientAddress(t *testing.T) {
	for in, want := range map[string]string{
		"":                        "",
		"203.0.113.9":             "203.0.113.9",
		" 203.0.113.9 , 10.0.0.1": "203.0.113.9",
		"2001:db8::1,10.0.0.1":    "2001:db8::1",
	} {
		if got := clientAddress(in); got != want {
			t.Errorf("clientAddress(%q) = %q, want %q", in, got, want)
		}
	}
}
