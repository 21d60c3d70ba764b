package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshlb/meshlb/lb"
)

// Payload bodies that make grpcInstance's UnaryCall behave specially.
const (
	// cmdWait blocks the call until its context ends, then reports the
	// cancellation on the instance's canceled channel.
	cmdWait = "wait"
	// cmdHold blocks the call until the instance's hold channel is closed.
	cmdHold = "hold"
	// cmdLockstep makes StreamingOutputCall wait for a value on the
	// instance's next channel after sending each message.
	cmdLockstep = "lockstep"
)

// grpcInstance is a real gRPC server running grpc's interop TestService,
// naming itself in every answer (ServerId, the x-server-id header and
// trailer) and counting its calls.
type grpcInstance struct {
	testpb.UnimplementedTestServiceServer
	id   string
	addr string
	srv  *grpc.Server

	calls    atomic.Int64
	inFlight atomic.Int64
	maxIn    atomic.Int64  // highest inFlight seen
	arrived  chan struct{} // a cmdWait call arrived (buffered)
	canceled chan error    // a cmdWait call saw its context end (buffered)
	hold     chan struct{} // closed to release cmdHold calls
	next     chan struct{} // releases the next message of a cmdLockstep stream
	sent     chan struct{} // a cmdLockstep stream sent a message (buffered)
	stopOnce sync.Once
}

func newGRPCInstance(t testing.TB, id string) *grpcInstance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &grpcInstance{
		id:       id,
		addr:     ln.Addr().String(),
		srv:      grpc.NewServer(),
		arrived:  make(chan struct{}, 16),
		canceled: make(chan error, 16),
		hold:     make(chan struct{}),
		next:     make(chan struct{}),
		sent:     make(chan struct{}, 16),
	}
	testpb.RegisterTestServiceServer(g.srv, g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		g.stop()
		<-done
	})
	return g
}

// stop kills the server and its connections at once.
func (g *grpcInstance) stop() { g.stopOnce.Do(g.srv.Stop) }

func (g *grpcInstance) instance() lb.Instance { return instanceAt(g.id, g.addr) }

func (g *grpcInstance) enter() func() {
	g.calls.Add(1)
	n := g.inFlight.Add(1)
	for {
		m := g.maxIn.Load()
		if n <= m || g.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { g.inFlight.Add(-1) }
}

func (g *grpcInstance) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	defer g.enter()()
	grpc.SetHeader(ctx, metadata.Pairs("x-server-id", g.id))
	grpc.SetTrailer(ctx, metadata.Pairs("x-server-id", g.id))
	if st := req.GetResponseStatus(); st != nil {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	switch string(req.GetPayload().GetBody()) {
	case cmdWait:
		g.arrived <- struct{}{}
		<-ctx.Done()
		g.canceled <- ctx.Err()
		return nil, ctx.Err()
	case cmdHold:
		select {
		case <-g.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testpb.SimpleResponse{ServerId: g.id, Payload: req.GetPayload()}, nil
}

// StreamingOutputCall sends one message per ResponseParameters, numbered
// "<id>-<n>", then the status asked for, if any.
func (g *grpcInstance) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	defer g.enter()()
	stream.SetTrailer(metadata.Pairs("x-server-id", g.id))
	lockstep := string(req.GetPayload().GetBody()) == cmdLockstep
	for i := range req.GetResponseParameters() {
		msg := &testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: fmt.Appendf(nil, "%s-%d", g.id, i)}}
		if err := stream.Send(msg); err != nil {
			return err
		}
		if lockstep {
			g.sent <- struct{}{}
			select {
			case <-g.next:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
	}
	if st := req.GetResponseStatus(); st != nil {
		return status.Error(codes.Code(st.Code), st.Message)
	}
	return nil
}

// StreamingInputCall answers the total payload size of the messages.
func (g *grpcInstance) StreamingInputCall(stream grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	defer g.enter()()
	var total int32
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		total += int32(len(m.GetPayload().GetBody()))
	}
}

// FullDuplexCall answers every message at once with "<id>:<its payload>".
func (g *grpcInstance) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	defer g.enter()()
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		body := append([]byte(g.id+":"), m.GetPayload().GetBody()...)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

// grpcInstances starts n gRPC instances named g0..g<n-1>.
func grpcInstances(t testing.TB, n int) ([]*grpcInstance, []lb.Instance) {
	t.Helper()
	gs := make([]*grpcInstance, n)
	insts := make([]lb.Instance, n)
	for i := range gs {
		gs[i] = newGRPCInstance(t, fmt.Sprintf("g%d", i))
		insts[i] = gs[i].instance()
	}
	return gs, insts
}

// agentServer is the proxy behind NewServer on a real loopback listener,
// as the agent runs it.
type agentServer struct {
	p     *Proxy
	srv   *http.Server
	addr  string
	conns atomic.Int64 // client connections accepted
}

// newAgentServer serves a Proxy for routes through NewServer(sc); with
// tlsConf set it serves TLS the way the agent does (tls.NewListener).
func newAgentServer(t testing.TB, cfg Config, sc ServerConfig, tlsConf *tls.Config, routes ...Route) *agentServer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "proxy", Level: hclog.Debug, Output: testWriter{t}})
	}
	p, err := New(cfg, routes)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &agentServer{p: p, addr: ln.Addr().String()}
	a.srv = NewServer(a.addr, p, sc, cfg.Logger.Named("http"))
	a.srv.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			a.conns.Add(1)
		}
	}
	if tlsConf != nil {
		a.srv.TLSConfig = tlsConf
		ln = tls.NewListener(ln, tlsConf)
	}
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(ln) }()
	t.Cleanup(func() {
		a.srv.Close()
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		p.CloseIdleConnections()
	})
	return a
}

// dialGRPC returns a TestService client over one new client connection to
// addr (h2c unless opts say otherwise).
func dialGRPC(t testing.TB, addr string, opts ...grpc.DialOption) testpb.TestServiceClient {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// h2cUpstream is a plain Go HTTP server speaking HTTP/2 cleartext only
// (like a gRPC server, it refuses HTTP/1.1), counting its requests.
type h2cUpstream struct {
	id       string
	addr     string
	hits     atomic.Int64
	inFlight atomic.Int64
	maxIn    atomic.Int64
}

func newH2CUpstream(t *testing.T, id string, h http.HandlerFunc) *h2cUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &h2cUpstream{id: id, addr: ln.Addr().String()}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &protos,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 1 << 20},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.hits.Add(1)
			n := u.inFlight.Add(1)
			defer u.inFlight.Add(-1)
			for {
				m := u.maxIn.Load()
				if n <= m || u.maxIn.CompareAndSwap(m, n) {
					break
				}
			}
			h(w, r)
		}),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-errc
	})
	return u
}

func (u *h2cUpstream) instance(tags ...string) lb.Instance {
	in := instanceAt(u.id, u.addr)
	in.Tags = tags
	return in
}

// h2cClient returns an HTTP client speaking HTTP/2 with prior knowledge.
func h2cClient(t *testing.T) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}
