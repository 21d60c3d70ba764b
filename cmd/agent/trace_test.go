package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/otlptest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

// TestTraceCrossesAgentAndSidecar sends a request with a known traceparent
// through the agent to a mesh-mode instance and reads the spans a real
// OTLP/gRPC receiver got: the agent's server and attempt spans and the
// sidecar's server span, linked parent to child across the processes, the
// sidecar's resource naming the app's PID, and the trace id in the response.
func TestTraceCrossesAgentAndSidecar(t *testing.T) {
	rcv := otlptest.Start(t)
	otel := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + rcv.Endpoint(), "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_BSP_SCHEDULE_DELAY=100"}
	srv := consultest.New(t)
	env := append(srv.Env(), otel...)
	c := &cluster{t: t, consul: srv, env: env, capi: srv.Client(), service: "traced", regs: map[int]*testproc.Proc{},
		client: &http.Client{Timeout: 10 * time.Second}}
	appPort, meshPort := testproc.FreePort(t), testproc.FreePort(t)
	args := append([]string{"--service", "traced", "--port", strconv.Itoa(appPort), "--mesh-port", strconv.Itoa(meshPort), "--drain", "200ms", "--"},
		append(tornadotest.App(t, appPort), "--logging=warning")...)
	c.regs[appPort] = testproc.Start(t, env, bin(t, "registrar"), args...)
	c.startAgent()
	pids := c.waitPool(1)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr+"/", nil)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if tr := resp.Header.Get("traceresponse"); !strings.Contains(tr, traceID) {
		t.Errorf("traceresponse %q does not carry trace id %s", tr, traceID)
	}
	var appPID int
	for p := range pids {
		appPID = p
	}
	if !strings.Contains(string(body), fmt.Sprint(appPID)) {
		t.Fatalf("answer %q not from the app %d", body, appPID)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	spans, err := rcv.WaitFor(ctx, func(ss []otlptest.Span) bool {
		n := 0
		for _, s := range ss {
			if s.TraceID == traceID {
				n++
			}
		}
		return n >= 3
	})
	if err != nil {
		t.Fatalf("spans of trace %s: %v (got %d spans)", traceID, err, len(spans))
	}
	var edge, attempt, sidecar *otlptest.Span
	for i := range spans {
		s := &spans[i]
		if s.TraceID != traceID {
			continue
		}
		switch {
		case s.Kind == trace.SpanKindServer && s.ParentSpanID == "00f067aa0ba902b7":
			edge = s
		case s.Kind == trace.SpanKindClient:
			attempt = s
		case s.Kind == trace.SpanKindServer && s.Resource["process.pid"] == strconv.Itoa(appPID):
			sidecar = s
		}
	}
	if edge == nil || attempt == nil || sidecar == nil {
		t.Fatalf("want the agent's server span, its attempt span and the sidecar's span in trace %s; got %+v", traceID, spans)
	}
	if attempt.ParentSpanID != edge.SpanID {
		t.Errorf("attempt span's parent %s, want the agent's server span %s", attempt.ParentSpanID, edge.SpanID)
	}
	if sidecar.ParentSpanID != attempt.SpanID {
		t.Errorf("sidecar span's parent %s, want the agent's attempt span %s", sidecar.ParentSpanID, attempt.SpanID)
	}
	if sidecar.Resource["service.name"] != "traced" {
		t.Errorf("sidecar resource service.name %q, want the Consul service", sidecar.Resource["service.name"])
	}
	if attempt.Attributes["meshlb.instance.pid"] != strconv.Itoa(appPID) || attempt.Attributes["server.port"] != strconv.Itoa(meshPort) {
		t.Errorf("attempt span attributes %v: want the instance's pid %d and the mesh port %d", attempt.Attributes, appPID, meshPort)
	}
	t.Logf("trace %s: agent %s → attempt %s → sidecar %s (pid %s, host %s)", traceID, edge.SpanID, attempt.SpanID,
		sidecar.SpanID, sidecar.Resource["process.pid"], sidecar.Resource["host.name"])
}
