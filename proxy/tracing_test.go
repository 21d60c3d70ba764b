package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

const (
	clientTraceID  = "0af7651916cd43dd8448eb211c80319c"
	clientSpanID   = "b7ad6b7169203331"
	clientParent   = "00-" + clientTraceID + "-" + clientSpanID + "-01"
	traceparentKey = "Traceparent"
)

// withRecorder installs a global tracer provider recording spans and the
// W3C propagators, restoring the previous ones when the test ends.
func withRecorder(t *testing.T) *tracetest.SpanRecorder {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() {
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
		tp.Shutdown(context.Background())
	})
	return sr
}

// waitServerSpans waits until n server spans have ended and returns all
// ended spans: a server span ends after its attempts and after the last
// byte is written, so maybe after the client read it.
func waitServerSpans(t *testing.T, ctx context.Context, sr *tracetest.SpanRecorder, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	for {
		spans := sr.Ended()
		servers := 0
		for _, s := range spans {
			if s.SpanKind() == trace.SpanKindServer {
				servers++
			}
		}
		if servers >= n {
			return spans
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d server spans ended, want %d", servers, n)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer = testproc.Buffer

func TestTracingSpans(t *testing.T) {
	ctx := testCtx(t)
	sr := withRecorder(t)
	var mu sync.Mutex
	var parents []string // traceparent the live instance received
	live := newUpstream(t, "live", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents = append(parents, r.Header.Get(traceparentKey))
		mu.Unlock()
		w.Write([]byte("ok"))
	})
	bal := newBalancer(t, "web", instanceAt("dead", closedAddr(t)), live.instance())
	var logs syncBuffer
	f := newFrontend(t, Config{
		Tracing:   true,
		AccessLog: true,
		Logger:    hclog.New(&hclog.LoggerOptions{Name: "proxy", Output: &logs}),
	}, Route{Balancer: bal})

	// Round robin sends one or both of two requests to "dead" first (the
	// retry advances it too): those are retried on "live".
	var traceresponses []string
	for range 2 {
		res, body := f.do(t, ctx, "GET", "/x", nil, http.Header{traceparentKey: {clientParent}})
		if res.StatusCode != http.StatusOK || body != "ok" {
			t.Fatalf("status %d body %q", res.StatusCode, body)
		}
		traceresponses = append(traceresponses, res.Header.Get("Traceresponse"))
	}
	spans := waitServerSpans(t, ctx, sr, 2)

	servers := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		if s.SpanContext().TraceID().String() != clientTraceID {
			t.Errorf("span %s in trace %s, want the client's %s", s.Name(), s.SpanContext().TraceID(), clientTraceID)
		}
		switch s.SpanKind() {
		case trace.SpanKindServer:
			servers[s.SpanContext().SpanID()] = s
			if s.Parent().SpanID().String() != clientSpanID || !s.Parent().IsRemote() {
				t.Errorf("server span parent %s, want the client's remote %s", s.Parent().SpanID(), clientSpanID)
			}
			a := attrs(s)
			if a["http.request.method"].AsString() != "GET" || a["url.path"].AsString() != "/x" ||
				a["http.response.status_code"].AsInt64() != 200 || a["client.address"].AsString() != "127.0.0.1" ||
				a["server.address"].AsString() != "127.0.0.1" {
				t.Errorf("server span attributes %v", a)
			}
		case trace.SpanKindClient:
			children[s.Parent().SpanID()] = append(children[s.Parent().SpanID()], s)
		default:
			t.Errorf("span %s of kind %v", s.Name(), s.SpanKind())
		}
	}
	if len(servers) != 2 {
		t.Fatalf("%d server spans, want 2", len(servers))
	}
	for i, tr := range traceresponses {
		found := false
		for id, s := range servers {
			if tr == "00-"+clientTraceID+"-"+id.String()+"-01" && s.SpanContext().IsSampled() {
				found = true
			}
		}
		if !found {
			t.Errorf("response %d: traceresponse %q names no server span", i, tr)
		}
	}

	retried := 0
	for id, kids := range children {
		if _, ok := servers[id]; !ok {
			t.Errorf("attempt span with parent %s, not a server span", id)
			continue
		}
		for _, k := range kids {
			a := attrs(k)
			n := a["meshlb.attempt"].AsInt64()
			inst := a["service.instance.id"].AsString()
			if a["server.address"].AsString() != "127.0.0.1" || a["server.port"].AsInt64() == 0 ||
				a["meshlb.instance.pid"].AsInt64() != 4242 || a["meshlb.instance.host"].AsString() != "host-"+inst ||
				a["meshlb.lb.policy"].AsString() != "round_robin" {
				t.Errorf("attempt span attributes %v", a)
			}
			switch inst {
			case "dead":
				if n != 1 || k.Status().Code != codes.Error || a["error.type"].AsString() != "dial_error" {
					t.Errorf("dead attempt: number %d status %v error.type %q", n, k.Status(), a["error.type"].AsString())
				}
			case "live":
				if a["http.response.status_code"].AsInt64() != 200 || k.Status().Code == codes.Error {
					t.Errorf("live attempt: %v %v", a, k.Status())
				}
				mu.Lock()
				want := "00-" + clientTraceID + "-" + k.SpanContext().SpanID().String() + "-01"
				got := false
				for _, p := range parents {
					got = got || p == want
				}
				mu.Unlock()
				if !got {
					t.Errorf("no upstream request carried traceparent %s (got %v)", want, parents)
				}
			default:
				t.Errorf("attempt on unknown instance %q", inst)
			}
		}
		if len(kids) == 2 {
			retried++
			n1, n2 := attrs(kids[0])["meshlb.attempt"].AsInt64(), attrs(kids[1])["meshlb.attempt"].AsInt64()
			if n1+n2 != 3 || n1 == n2 {
				t.Errorf("retried request attempts numbered %d and %d, want 1 and 2", n1, n2)
			}
		}
	}
	if retried == 0 {
		t.Errorf("no request shows a retry")
	}
	if n := len(spans) - len(servers); n != 2+retried {
		t.Errorf("%d attempt spans for %d retried requests, want %d", n, retried, 2+retried)
	}
	if got := strings.Count(logs.String(), "trace_id="+clientTraceID); got != 2 {
		t.Errorf("%d access log lines carry the trace id, want 2:\n%s", got, logs.String())
	}
}

func TestTracingOff(t *testing.T) {
	ctx := testCtx(t)
	sr := withRecorder(t)
	up := newRecordingUpstream(t, nil)
	var logs syncBuffer
	f := newFrontend(t, Config{
		AccessLog: true,
		Logger:    hclog.New(&hclog.LoggerOptions{Name: "proxy", Output: &logs}),
	}, Route{Balancer: newBalancer(t, "web", up.instance())})
	res, _ := f.do(t, ctx, "GET", "/", nil, http.Header{traceparentKey: {clientParent}})
	if v := res.Header.Get("Traceresponse"); v != "" {
		t.Errorf("traceresponse %q with tracing off", v)
	}
	got, _ := up.last()
	if v := got.Get(traceparentKey); v != clientParent {
		t.Errorf("upstream traceparent %q, want the client's untouched %q", v, clientParent)
	}
	if n := len(sr.Ended()) + len(sr.Started()); n != 0 {
		t.Errorf("%d spans with tracing off", n)
	}
	if !strings.Contains(logs.String(), "trace_id="+clientTraceID) {
		t.Errorf("access log lacks the client's trace id:\n%s", logs.String())
	}
}

func TestTraceResponseFormat(t *testing.T) {
	tid, _ := trace.TraceIDFromHex(clientTraceID)
	sid, _ := trace.SpanIDFromHex(clientSpanID)
	tests := []struct {
		flags trace.TraceFlags
		want  string
	}{
		{trace.FlagsSampled, "00-" + clientTraceID + "-" + clientSpanID + "-01"},
		{0, "00-" + clientTraceID + "-" + clientSpanID + "-00"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: tt.flags})
			if got := traceResponse(sc); got != tt.want {
				t.Errorf("got %s", got)
			}
		})
	}
}
