package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meshlb/meshlb/lb"
)

// TestGRPCUnaryPerCall is issue 9's acceptance test: 100 unary calls made
// by one gRPC client over one connection reach every instance of a
// five-instance service (round robin: 20 each).
func TestGRPCUnaryPerCall(t *testing.T) {
	ctx := testCtx(t)
	gs, insts := grpcInstances(t, 5)
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "greeter", insts...)})
	client := dialGRPC(t, a.addr)

	seen := map[string]int{}
	for i := range 100 {
		var hdr, trl metadata.MD
		body := fmt.Appendf(nil, "call %d", i)
		res, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}},
			grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if string(res.GetPayload().GetBody()) != string(body) {
			t.Fatalf("call %d: payload %q, want %q", i, res.GetPayload().GetBody(), body)
		}
		if h, tr := hdr.Get("x-server-id"), trl.Get("x-server-id"); len(h) != 1 || len(tr) != 1 || h[0] != res.ServerId || tr[0] != res.ServerId {
			t.Fatalf("call %d: server %s, header %v, trailer %v", i, res.ServerId, h, tr)
		}
		seen[res.ServerId]++
	}
	for _, g := range gs {
		if seen[g.id] != 20 || g.calls.Load() != 20 {
			t.Errorf("instance %s: %d answers, %d calls, want 20 (all: %v)", g.id, seen[g.id], g.calls.Load(), seen)
		}
	}
	if n := a.conns.Load(); n != 1 {
		t.Errorf("the client opened %d connections to the agent, want 1", n)
	}
}

// TestGRPCStreaming checks that the three kinds of streaming calls pass
// through whole, in order and unbuffered.
func TestGRPCStreaming(t *testing.T) {
	ctx := testCtx(t)
	g := newGRPCInstance(t, "g0")
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "greeter", g.instance())})
	client := dialGRPC(t, a.addr)

	t.Run("server streaming", func(t *testing.T) {
		// Lockstep: the instance sends message n+1 only once the client has
		// read message n, so a proxy that buffered would deadlock.
		const n = 12
		stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: make([]*testpb.ResponseParameters, n),
			Payload:            &testpb.Payload{Body: []byte(cmdLockstep)},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if want := fmt.Sprintf("g0-%d", i); string(m.GetPayload().GetBody()) != want {
				t.Fatalf("message %d: %q, want %q", i, m.GetPayload().GetBody(), want)
			}
			<-g.sent
			g.next <- struct{}{}
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("after %d messages: %v, want io.EOF (status OK)", n, err)
		}
		if got := stream.Trailer().Get("x-server-id"); len(got) != 1 || got[0] != "g0" {
			t.Errorf("trailer x-server-id %v, want [g0]", got)
		}
	})

	t.Run("client streaming", func(t *testing.T) {
		stream, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := int32(0)
		for i := range 20 {
			body := []byte(strings.Repeat("x", i*100))
			want += int32(len(body))
			if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		res, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if res.AggregatedPayloadSize != want {
			t.Errorf("aggregated size %d, want %d", res.AggregatedPayloadSize, want)
		}
	})

	t.Run("bidi ping-pong", func(t *testing.T) {
		// Each answer must arrive before the next message is sent: only a
		// full-duplex path passes.
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			body := fmt.Appendf(nil, "ping %d", i)
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("recv %d: %v", i, err)
			}
			if want := "g0:" + string(body); string(m.GetPayload().GetBody()) != want {
				t.Fatalf("recv %d: %q, want %q", i, m.GetPayload().GetBody(), want)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("after close: %v, want io.EOF", err)
		}
	})
}

// TestGRPCStatusPassThrough checks that the instance's status, message and
// metadata reach the client, whether the status comes alone
// (Trailers-Only) or after messages (trailers).
func TestGRPCStatusPassThrough(t *testing.T) {
	ctx := testCtx(t)
	g := newGRPCInstance(t, "g0")
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "greeter", g.instance())})
	client := dialGRPC(t, a.addr)
	msg := "no such greeting: «héllo» 100%"

	t.Run("unary error (trailers-only)", func(t *testing.T) {
		var trl metadata.MD
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{
			ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: msg},
		}, grpc.Trailer(&trl))
		if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != msg {
			t.Errorf("got %v %q, want NotFound %q", st.Code(), st.Message(), msg)
		}
		if got := trl.Get("x-server-id"); len(got) != 1 || got[0] != "g0" {
			t.Errorf("trailer x-server-id %v, want [g0]", got)
		}
	})

	t.Run("error after messages", func(t *testing.T) {
		stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: make([]*testpb.ResponseParameters, 3),
			ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: msg},
		})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for {
			_, err = stream.Recv()
			if err != nil {
				break
			}
			got++
		}
		if st := status.Convert(err); got != 3 || st.Code() != codes.FailedPrecondition || st.Message() != msg {
			t.Errorf("got %d messages then %v %q, want 3 then FailedPrecondition %q", got, st.Code(), st.Message(), msg)
		}
	})

	t.Run("unimplemented method", func(t *testing.T) {
		_, err := client.UnimplementedCall(ctx, &testpb.Empty{})
		if code := status.Code(err); code != codes.Unimplemented {
			t.Errorf("got %v, want Unimplemented", err)
		}
	})
}

// TestGRPCDeadline checks that a call's deadline reaches the instance and
// ends the call there, and that the client gets DEADLINE_EXCEEDED in time.
func TestGRPCDeadline(t *testing.T) {
	ctx := testCtx(t)
	g := newGRPCInstance(t, "g0")
	bal := newBalancer(t, "greeter", g.instance())
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: bal})
	client := dialGRPC(t, a.addr)

	callCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(cmdWait)}})
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the call took %v with a 200ms deadline", d)
	}
	select {
	case err := <-g.canceled:
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			t.Errorf("instance context ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the instance's call context never ended")
	}
	waitIdle(t, ctx, bal)
}

// TestGRPCDeadlineAtProxy checks that the proxy enforces grpc-timeout on
// its own, for clients that do not cancel (here a bare HTTP/2 client without
// a deadline of its own) and instances that do not honour it (a plain HTTP/2
// server): DEADLINE_EXCEEDED before or after the response headers, and the
// instance's request canceled.
func TestGRPCDeadlineAtProxy(t *testing.T) {
	tests := []struct {
		name        string
		sendHeaders bool
	}{
		{"before response headers", false},
		{"mid-response", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			canceled := make(chan struct{})
			up := newH2CUpstream(t, "stuck", func(w http.ResponseWriter, r *http.Request) {
				if tt.sendHeaders {
					w.Header().Set("Content-Type", "application/grpc")
					w.WriteHeader(http.StatusOK)
					http.NewResponseController(w).Flush()
				}
				<-r.Context().Done()
				close(canceled)
			})
			a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "greeter", up.instance())})

			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+a.addr+"/grpc.testing.TestService/UnaryCall",
				strings.NewReader(string(grpcFrame(t, &testpb.SimpleRequest{}))))
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			req.Header.Set("Grpc-Timeout", "200m")
			start := time.Now()
			res, err := h2cClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			st, msg := res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
			if tt.sendHeaders {
				st, msg = res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
			}
			if res.StatusCode != http.StatusOK || st != "4" || !strings.Contains(msg, "deadline exceeded") {
				t.Errorf("got HTTP %d grpc-status %q %q, want 200, 4 (DEADLINE_EXCEEDED)", res.StatusCode, st, msg)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("the call took %v with grpc-timeout 200m", d)
			}
			select {
			case <-canceled:
			case <-ctx.Done():
				t.Fatal("the instance's request was never canceled")
			}
		})
	}
}

// TestGRPCClientCancel checks that a client's cancel reaches the instance
// and counts as no failure of it.
func TestGRPCClientCancel(t *testing.T) {
	ctx := testCtx(t)
	g := newGRPCInstance(t, "g0")
	bal := newBalancer(t, "greeter", g.instance())
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: bal})
	client := dialGRPC(t, a.addr)

	callCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(cmdWait)}})
		errc <- err
	}()
	select {
	case <-g.arrived:
	case <-ctx.Done():
		t.Fatal("the call never reached the instance")
	}
	cancel()
	select {
	case err := <-g.canceled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("instance context ended with %v, want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("the cancel never reached the instance")
	}
	if code := status.Code(<-errc); code != codes.Canceled {
		t.Errorf("client got %v, want Canceled", code)
	}
	waitIdle(t, ctx, bal)
	if n := bal.Pool().Instances[0].Stats.Failures.Load(); n != 0 {
		t.Errorf("instance failures %d after a client cancel, want 0", n)
	}
}

// TestGRPCRetries checks the retry rule for gRPC: a call that never reached
// an instance (closed port) is retried elsewhere and does not fail; a call
// an instance received is never sent to another one.
func TestGRPCRetries(t *testing.T) {
	ctx := testCtx(t)

	t.Run("dead instance costs no call", func(t *testing.T) {
		gs, insts := grpcInstances(t, 4)
		insts = append(insts, instanceAt("dead", closedAddr(t)))
		bal := newBalancer(t, "greeter", insts...)
		a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: bal})
		client := dialGRPC(t, a.addr)
		for i := range 50 {
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		var total int64
		for _, g := range gs {
			total += g.calls.Load()
		}
		if total != 50 {
			t.Errorf("instances got %d calls, want 50", total)
		}
	})

	t.Run("received call not replayed", func(t *testing.T) {
		// "reset" reads the call and resets the stream without answering.
		reset := newH2CUpstream(t, "reset", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			panic(http.ErrAbortHandler)
		})
		ok := newGRPCInstance(t, "ok")
		bal := newBalancer(t, "greeter", reset.instance(), ok.instance())
		a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: bal})
		client := dialGRPC(t, a.addr)
		failed := 0
		for i := range 10 {
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			switch code := status.Code(err); code {
			case codes.OK:
			case codes.Unavailable:
				failed++
			default:
				t.Fatalf("call %d: %v, want OK or Unavailable", i, err)
			}
		}
		if r, o := reset.hits.Load(), ok.calls.Load(); r+o != 10 || int(r) != failed || r == 0 {
			t.Errorf("reset got %d calls, ok %d, %d failed: want 10 calls in all, every one on reset failed, none sent twice", r, o, failed)
		}
	})
}

// TestGRPCProxyErrors checks that the failures the proxy answers itself
// are gRPC statuses a gRPC client reads, not plain-text HTTP errors.
func TestGRPCProxyErrors(t *testing.T) {
	tests := []struct {
		name    string
		routes  func(t *testing.T) []Route
		code    codes.Code
		message string // a substring of the status message
	}{
		{
			name:   "no instance",
			routes: func(t *testing.T) []Route { return []Route{{Balancer: newBalancer(t, "greeter")}} },
			code:   codes.Unavailable, message: "no instance available for service greeter",
		},
		{
			name: "no route",
			routes: func(t *testing.T) []Route {
				return []Route{{Host: "other.example.com", Balancer: newBalancer(t, "greeter")}}
			},
			code: codes.Unimplemented, message: "no route",
		},
		{
			name: "every instance refuses connections",
			routes: func(t *testing.T) []Route {
				return []Route{{Balancer: newBalancer(t, "greeter", instanceAt("d1", closedAddr(t)), instanceAt("d2", closedAddr(t)))}}
			},
			code: codes.Unavailable, message: "upstream of service greeter failed: dial_error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			a := newAgentServer(t, Config{}, ServerConfig{}, nil, tt.routes(t)...)
			client := dialGRPC(t, a.addr)
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			st := status.Convert(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.message) {
				t.Errorf("got %v %q, want %v containing %q", st.Code(), st.Message(), tt.code, tt.message)
			}
		})
	}
}

// TestGRPCInstanceDiesMidStream checks that a call whose instance dies
// after it answered part of it ends with UNAVAILABLE in the trailers, not a
// reset stream the client reads as an internal error.
func TestGRPCInstanceDiesMidStream(t *testing.T) {
	ctx := testCtx(t)
	g := newGRPCInstance(t, "g0")
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "greeter", g.instance())})
	client := dialGRPC(t, a.addr)
	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: make([]*testpb.ResponseParameters, 5),
		Payload:            &testpb.Payload{Body: []byte(cmdLockstep)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || string(m.GetPayload().GetBody()) != "g0-0" {
		t.Fatalf("first message %v, %v", m, err)
	}
	g.stop()
	_, err = stream.Recv()
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "failed during the call") {
		t.Errorf("got %v %q, want Unavailable, failed during the call", st.Code(), st.Message())
	}
}

// TestGRPCOverTLS checks gRPC and HTTP/1.1 clients on a TLS listener set up
// as the agent does it (tls.NewListener, ALPN h2 and http/1.1).
func TestGRPCOverTLS(t *testing.T) {
	ctx := testCtx(t)
	cert, pool := selfSigned(t)
	gs, insts := grpcInstances(t, 3)
	web := nameUpstream(t, "web")
	a := newAgentServer(t, Config{}, ServerConfig{}, &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
	},
		Route{Balancer: newBalancer(t, "greeter", insts...)},
		Route{Host: "web.example.com", Balancer: newBalancer(t, "web", web.instance())},
	)

	client := dialGRPC(t, a.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	for i := range 30 {
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	for _, g := range gs {
		if g.calls.Load() != 10 {
			t.Errorf("instance %s: %d calls, want 10", g.id, g.calls.Load())
		}
	}

	for _, proto := range []string{"http/1.1", "h2"} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{proto}}, ForceAttemptHTTP2: proto == "h2"}
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+a.addr+"/", nil)
		req.Host = "web.example.com"
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		tr.CloseIdleConnections()
		wantMajor := map[string]int{"http/1.1": 1, "h2": 2}[proto]
		if res.StatusCode != http.StatusOK || string(body) != "web" || res.ProtoMajor != wantMajor {
			t.Errorf("%s: %s %d %q, want HTTP/%d 200 \"web\"", proto, res.Proto, res.StatusCode, body, wantMajor)
		}
	}
}

// TestUpstreamProtocol checks which requests go to the instance over
// HTTP/2 cleartext: gRPC calls, routes with Protocol h2c and instances
// tagged grpc or h2c; the rest over HTTP/1.1. Clients may use h2c too.
func TestUpstreamProtocol(t *testing.T) {
	tests := []struct {
		name        string
		protocol    string
		tags        []string
		h2cClient   bool
		contentType string
		want        string
	}{
		{"plain request, HTTP/1.1 client", ProtocolAuto, nil, false, "", "HTTP/1.1"},
		{"plain request, h2c client", ProtocolAuto, nil, true, "", "HTTP/1.1"},
		{"gRPC-Web stays HTTP/1.1", ProtocolAuto, nil, true, "application/grpc-web+proto", "HTTP/1.1"},
		{"gRPC content type", ProtocolAuto, nil, true, "application/grpc+proto", "HTTP/2.0"},
		{"gRPC content type, HTTP/1.1 client", ProtocolAuto, nil, false, "application/grpc", "HTTP/2.0"},
		{"route protocol h2c", ProtocolH2C, nil, false, "", "HTTP/2.0"},
		{"instance tagged h2c", ProtocolAuto, []string{"v1", TagH2C}, false, "", "HTTP/2.0"},
		{"instance tagged grpc", ProtocolAuto, []string{TagGRPC}, true, "", "HTTP/2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			var inst lb.Instance
			report := func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Upstream-Proto", r.Proto)
				io.WriteString(w, "ok")
			}
			if tt.want == "HTTP/2.0" {
				inst = newH2CUpstream(t, "up", report).instance(tt.tags...)
			} else {
				inst = newUpstream(t, "up", report).instance()
				inst.Tags = tt.tags
			}
			a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "web", inst), Protocol: tt.protocol})
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			if tt.h2cClient {
				client = h2cClient(t)
			}
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+a.addr+"/", strings.NewReader("x"))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if got := res.Header.Get("X-Upstream-Proto"); res.StatusCode != http.StatusOK || got != tt.want || string(body) != "ok" {
				t.Errorf("status %d, body %q, upstream saw %q, want 200 over %s", res.StatusCode, body, got, tt.want)
			}
			if wantMajor := map[bool]int{false: 1, true: 2}[tt.h2cClient]; res.ProtoMajor != wantMajor {
				t.Errorf("client spoke %s, want HTTP/%d", res.Proto, wantMajor)
			}
		})
	}
}

func TestIsGRPC(t *testing.T) {
	tests := []struct {
		ct   []string
		want bool
	}{
		{nil, false},
		{[]string{"application/grpc"}, true},
		{[]string{"application/grpc+proto"}, true},
		{[]string{"application/grpc+json"}, true},
		{[]string{"Application/GRPC"}, true},
		{[]string{"application/grpc; charset=utf-8"}, true},
		{[]string{"application/grpc-web"}, false},
		{[]string{"application/grpc-web-text+proto"}, false},
		{[]string{"application/grpcx"}, false},
		{[]string{"application/json"}, false},
		{[]string{"application/grp"}, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.ct), func(t *testing.T) {
			h := http.Header{}
			if tt.ct != nil {
				h["Content-Type"] = tt.ct
			}
			if got := isGRPC(h); got != tt.want {
				t.Errorf("isGRPC(%q) = %v, want %v", tt.ct, got, tt.want)
			}
		})
	}
}

func TestGRPCTimeoutParse(t *testing.T) {
	tests := []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"200m", 200 * time.Millisecond, true},
		{"1S", time.Second, true},
		{"3M", 3 * time.Minute, true},
		{"2H", 2 * time.Hour, true},
		{"99999999u", 99999999 * time.Microsecond, true},
		{"5n", 5, true},
		{"0m", 0, true},
		{"99999999H", 0, false},  // beyond time.Duration
		{"123456789m", 0, false}, // 9 digits
		{"m", 0, false},
		{"", 0, false},
		{"10", 0, false},
		{"10s", 0, false},
		{"-1S", 0, false},
		{"1.5S", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			got, ok := grpcTimeout(tt.v)
			if got != tt.want || ok != tt.ok {
				t.Errorf("grpcTimeout(%q) = %v, %v; want %v, %v", tt.v, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestGRPCPercentEncode(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain message", "plain message"},
		{"100%", "100%25"},
		{"line\nbreak", "line%0Abreak"},
		{"héllo", "h%C3%A9llo"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := grpcPercentEncode(tt.in); got != tt.want {
				t.Errorf("grpcPercentEncode(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// waitIdle waits until no call is in flight at bal's instances: the proxy
// reports an attempt's end after the client has its answer.
func waitIdle(t *testing.T, ctx context.Context, bal *lb.Balancer) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := false
		for _, in := range bal.Pool().Instances {
			busy = busy || in.Stats.InFlight.Load() != 0
		}
		if !busy {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("calls still in flight at the balancer")
		}
	}
}

// grpcFrame encodes m as one uncompressed gRPC length-prefixed message.
func grpcFrame(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{0, byte(len(b) >> 24), byte(len(b) >> 16), byte(len(b) >> 8), byte(len(b))}, b...)
}

// selfSigned returns a certificate for localhost and 127.0.0.1 and a pool
// trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
