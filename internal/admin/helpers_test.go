package admin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshlb/meshlb/lb"
)

// testTimeout bounds every test.
const testTimeout = 30 * time.Second

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newBalancer(t *testing.T, service string, insts ...lb.Instance) *lb.Balancer {
	t.Helper()
	b, err := lb.NewBalancer(service, lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if insts != nil {
		b.Update(insts)
	}
	return b
}

func inst(service, id string, port int) lb.Instance {
	return lb.Instance{
		ID: id, Service: service, Address: "127.0.0.1", Port: port, Weight: 1,
		Meta: map[string]string{"pid": "4242", "host": "testhost"},
	}
}

// testServer is an admin Server running and served the way the agent
// serves it: a real listener on 127.0.0.1:0 and an http.Server speaking
// HTTP/1 and unencrypted HTTP/2.
type testServer struct {
	*Server
	addr    string
	stopRun func() // stops Run and waits for it
}

func startServer(t *testing.T, ctx context.Context, o Options, extra http.Handler) *testServer {
	t.Helper()
	if o.Poll == 0 {
		o.Poll = 20 * time.Millisecond
	}
	s := New(o)
	// A first poll before Run starts makes the first events deterministic.
	s.pollOnce(time.Now())
	runCtx, cancelRun := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		s.Run(runCtx)
	}()
	stopRun := func() {
		cancelRun()
		<-runDone
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: s.Handler(extra), Protocols: &p, ReadHeaderTimeout: 5 * time.Second}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(ln) }()
	t.Cleanup(func() {
		// The agent's order: stop Run (ends watches and streams), then
		// shut the listener down.
		stopRun()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("admin http server shutdown: %v", err)
		}
		if err := <-serveDone; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return &testServer{Server: s, addr: ln.Addr().String(), stopRun: stopRun}
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
