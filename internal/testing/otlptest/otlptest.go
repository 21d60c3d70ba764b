// Package otlptest runs a real OTLP trace receiver for tests: an OTLP/gRPC
// server (Start) or an OTLP/HTTP protobuf server (StartHTTP) on a free
// loopback port, which keeps every span it is sent and flattens them into a
// simple struct a test can assert on. It is for tests only: it keeps
// everything in memory and must never be linked into a binary.
package otlptest

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"go.opentelemetry.io/otel/trace"
)

// Span is one received span, flattened for assertions. IDs are lower-case
// hex; ParentSpanID is "" for a root span. Attribute values are rendered as
// strings (ints in decimal, bools as true/false, arrays as [a b]).
type Span struct {
	TraceID      string
	SpanID       string
	ParentSpanID string
	Name         string
	Kind         trace.SpanKind
	// StatusCode is the OTLP status code name: "STATUS_CODE_UNSET", "STATUS_CODE_OK" or "STATUS_CODE_ERROR".
	StatusCode string
	Scope      string
	Attributes map[string]string
	Resource   map[string]string
}

// Receiver is a running OTLP trace receiver. Its methods are safe for
// concurrent use.
type Receiver struct {
	endpoint string
	certPEM  []byte

	mu       sync.Mutex
	batches  []*tracepb.ResourceSpans
	requests int
	headers  http.Header
	reject   bool
	changed  chan struct{} // closed and replaced on every received request
}

func newReceiver() *Receiver {
	return &Receiver{changed: make(chan struct{})}
}

// Start runs an OTLP/gRPC receiver on 127.0.0.1 and stops it when the test
// ends. Its Endpoint works as OTEL_EXPORTER_OTLP_ENDPOINT with
// OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
func Start(t testing.TB) *Receiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen: %v", err)
	}
	r := newReceiver()
	r.endpoint = "http://" + ln.Addr().String()
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, grpcService{r: r})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return r
}

// Endpoint returns the receiver's base URL, "http://127.0.0.1:PORT".
func (r *Receiver) Endpoint() string { return r.endpoint }

// Requests returns how many export requests the receiver has answered,
// rejected ones included.
func (r *Receiver) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Headers returns the headers (gRPC metadata) of the last export request.
func (r *Receiver) Headers() http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.headers.Clone()
}

// Reject makes the receiver refuse every export with a non-retryable error
// (gRPC InvalidArgument, HTTP 400) while on is true; rejected spans are not
// kept. It lets a test drive the exporter's failure and recovery paths.
func (r *Receiver) Reject(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reject = on
}

// Spans returns every span received so far, in arrival order.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return flatten(r.batches)
}

// WaitFor waits until done returns true for the spans received so far and
// returns them, or returns the spans and ctx's error when ctx ends first.
func (r *Receiver) WaitFor(ctx context.Context, done func([]Span) bool) ([]Span, error) {
	for {
		r.mu.Lock()
		spans := flatten(r.batches)
		changed := r.changed
		r.mu.Unlock()
		if done(spans) {
			return spans, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return spans, fmt.Errorf("otlptest: waiting for spans (have %d): %w", len(spans), ctx.Err())
		}
	}
}

// receive records one export request; it returns false if the receiver
// rejects it.
func (r *Receiver) receive(rs []*tracepb.ResourceSpans, h http.Header) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	r.headers = h
	if !r.reject {
		r.batches = append(r.batches, rs...)
	}
	close(r.changed)
	r.changed = make(chan struct{})
	return !r.reject
}

// rejectMsg is the error the receiver answers while rejecting.
const rejectMsg = "otlptest: rejecting exports"

type grpcService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

// Export implements coltracepb.TraceServiceServer.
func (s grpcService) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	h := http.Header{}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, vs := range md {
			for _, v := range vs {
				h.Add(k, v)
			}
		}
	}
	if !s.r.receive(req.GetResourceSpans(), h) {
		return nil, status.Error(codes.InvalidArgument, rejectMsg)
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func flatten(batches []*tracepb.ResourceSpans) []Span {
	var out []Span
	for _, rs := range batches {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				s := Span{
					TraceID:    hex.EncodeToString(sp.GetTraceId()),
					SpanID:     hex.EncodeToString(sp.GetSpanId()),
					Name:       sp.GetName(),
					Kind:       trace.SpanKind(sp.GetKind()),
					StatusCode: sp.GetStatus().GetCode().String(),
					Scope:      ss.GetScope().GetName(),
					Attributes: attrMap(sp.GetAttributes()),
					Resource:   res,
				}
				if p := sp.GetParentSpanId(); len(p) > 0 {
					s.ParentSpanID = hex.EncodeToString(p)
				}
				out = append(out, s)
			}
		}
	}
	return out
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = valueString(kv.GetValue())
	}
	return m
}

func valueString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_BytesValue:
		return hex.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		parts := make([]string, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, valueString(e))
		}
		return "[" + strings.Join(parts, " ") + "]"
	case *commonpb.AnyValue_KvlistValue:
		parts := make([]string, 0, len(x.KvlistValue.GetValues()))
		for _, kv := range x.KvlistValue.GetValues() {
			parts = append(parts, kv.GetKey()+"="+valueString(kv.GetValue()))
		}
		return "{" + strings.Join(parts, " ") + "}"
	default:
		return ""
	}
}
