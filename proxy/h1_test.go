package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// rawBackend is an instance written with bytes, to answer what net/http
// servers never would.
type rawBackend struct {
	ln    net.Listener
	conns atomic.Int64 // connections accepted
	reqs  atomic.Int64 // request heads read
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  map[net.Conn]struct{}
}

// newRawBackend serves every connection with serve, which reads requests
// with b.readRequest. Cleanup closes everything and waits for serve.
func newRawBackend(t *testing.T, serve func(b *rawBackend, c net.Conn, br *bufio.Reader)) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln, open: map[net.Conn]struct{}{}}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			b.mu.Lock()
			b.open[c] = struct{}{}
			b.mu.Unlock()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			b.wg.Go(func() {
				defer c.Close()
				serve(b, c, bufio.NewReader(c))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.open {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *rawBackend) instance(id string) lb.Instance { return instanceAt(id, b.ln.Addr().String()) }

// readRequest reads one request head (the proxy's requests here have no
// body) and returns its method and target.
func (b *rawBackend) readRequest(br *bufio.Reader) (method, target string, err error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", "", err
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return "", "", err
		}
		if l == "\r\n" {
			break
		}
	}
	b.reqs.Add(1)
	f := strings.Fields(line)
	if len(f) != 3 {
		return "", "", fmt.Errorf("bad request line %q", line)
	}
	return f[0], f[1], nil
}

// keepAlive answers every request on the connection with resp(method, target).
func keepAlive(resp func(method, target string) string) func(*rawBackend, net.Conn, *bufio.Reader) {
	return func(b *rawBackend, c net.Conn, br *bufio.Reader) {
		for {
			m, target, err := b.readRequest(br)
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, resp(m, target)); err != nil {
				return
			}
		}
	}
}

func okResponse(body string) string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// connCount follows an httptest server's connections through ConnState.
type connCount struct {
	mu     sync.Mutex
	state  map[net.Conn]http.ConnState
	opened int
	closed int
}

func (cc *connCount) hook(c net.Conn, s http.ConnState) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch s {
	case http.StateNew:
		cc.opened++
	case http.StateClosed, http.StateHijacked:
		cc.closed++
	}
	cc.state[c] = s
}

func (cc *connCount) counts() (opened, idle, closed int) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for _, s := range cc.state {
		if s == http.StateIdle {
			idle++
		}
	}
	return cc.opened, idle, cc.closed
}

// countedUpstream is newUpstream with its connections counted.
func countedUpstream(t *testing.T, id string, h http.HandlerFunc) (*upstream, *connCount) {
	t.Helper()
	u := &upstream{id: id}
	cc := &connCount{state: map[net.Conn]http.ConnState{}}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		h(w, r)
	}))
	u.srv.Config.ConnState = cc.hook
	u.srv.Start()
	t.Cleanup(u.srv.Close)
	return u, cc
}

// get sends a GET through f without failing the test on a client error:
// safe off the test goroutine.
func (f *frontend) get(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+path, nil)
	if err != nil {
		return 0, "", err
	}
	res, err := f.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

func failures(bal *lb.Balancer) uint64 { return bal.Pool().Instances[0].Stats.Failures.Load() }

// concurrentGets sends n GETs at once to an upstream whose handler waits
// at gate until all n arrived, so each takes its own connection.
func concurrentGets(t *testing.T, ctx context.Context, f *frontend, n int, arrived <-chan struct{}, release func()) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			status, body, err := f.get(ctx, fmt.Sprintf("/c%d", i))
			if err != nil || status != http.StatusOK {
				t.Errorf("concurrent GET %d: %d %q %v", i, status, body, err)
			}
		})
	}
	for range n {
		select {
		case <-arrived:
		case <-ctx.Done():
			t.Fatal("the concurrent requests did not all reach the upstream")
		}
	}
	release()
	wg.Wait()
}

// gatedHandler blocks its first n requests until all n arrived.
func gatedHandler(ctx context.Context, n int) (h http.HandlerFunc, arrived <-chan struct{}, release func()) {
	arr := make(chan struct{}, n)
	rel := make(chan struct{})
	var gated atomic.Int64
	var once sync.Once
	h = func(w http.ResponseWriter, r *http.Request) {
		if gated.Add(1) <= int64(n) {
			arr <- struct{}{}
			select {
			case <-rel:
			case <-ctx.Done():
			}
		}
		io.WriteString(w, "ok")
	}
	return h, arr, func() { once.Do(func() { close(rel) }) }
}

// TestH1StaleConnResent: an instance that closes each connection after one
// answer (without Connection: close) leaves a stale connection in the
// pool; the next request is resent on a fresh one, with no retry
// elsewhere (MaxAttempts 1) and no failure counted.
func TestH1StaleConnResent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newRawBackend(t, func(b *rawBackend, c net.Conn, br *bufio.Reader) {
		if _, target, err := b.readRequest(br); err == nil {
			io.WriteString(c, okResponse("once "+target))
		}
	})
	bal := newBalancer(t, "web", b.instance("one"))
	f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
	for i := range 5 {
		path := fmt.Sprintf("/r%d", i)
		res, body := f.do(t, ctx, "GET", path, nil, nil)
		if res.StatusCode != http.StatusOK || body != "once "+path {
			t.Fatalf("GET %s: %d %q", path, res.StatusCode, body)
		}
	}
	if n := failures(bal); n != 0 {
		t.Errorf("%d failures counted for stale connections, want 0", n)
	}
	if r, c := b.reqs.Load(), b.conns.Load(); r != 5 || c != 5 {
		t.Errorf("backend read %d requests on %d connections, want 5 on 5", r, c)
	}
}

// TestH1AllStaleIdleConnsResent: when the instance closed every idle
// connection of a pool holding several (a restart, its keep-alive timeout),
// the request still goes through on a fresh connection, as net/http's
// Transport, which retries while the connection it used was a reused one.
func TestH1AllStaleIdleConnsResent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const n = 3
	h, arrived, release := gatedHandler(ctx, n)
	up, cc := countedUpstream(t, "up", h)
	t.Cleanup(release)
	bal := newBalancer(t, "web", up.instance())
	f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
	concurrentGets(t, ctx, f, n, arrived, release)
	waitFor(t, ctx, "idle upstream connections", func() bool { _, idle, _ := cc.counts(); return idle == n })

	up.srv.CloseClientConnections()
	waitFor(t, ctx, "upstream connections closed", func() bool { _, _, closed := cc.counts(); return closed == n })
	res, body := f.do(t, ctx, "GET", "/after", nil, nil)
	if res.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("GET after the instance closed its %d idle connections: %d %q, want 200", n, res.StatusCode, body)
	}
	if n := failures(bal); n != 0 {
		t.Errorf("%d failures counted for stale connections, want 0", n)
	}
}

// TestH1Stale408: a 408 a server sends on an idle connection before
// closing it is not the answer to the next request.
func TestH1Stale408(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newRawBackend(t, func(b *rawBackend, c net.Conn, br *bufio.Reader) {
		if _, _, err := b.readRequest(br); err == nil {
			io.WriteString(c, okResponse("first"))
			io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		}
	})
	bal := newBalancer(t, "web", b.instance("one"))
	f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
	for i := range 3 {
		if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "first" {
			t.Fatalf("GET %d: %d %q, want 200 \"first\"", i, res.StatusCode, body)
		}
	}
	if n := failures(bal); n != 0 {
		t.Errorf("%d failures counted, want 0", n)
	}
}

// TestH1NotResentAfterPartialAnswer: a reused connection that dies after
// part of the answer is no stale connection: the request is not resent.
func TestH1NotResentAfterPartialAnswer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newRawBackend(t, func(b *rawBackend, c net.Conn, br *bufio.Reader) {
		if _, _, err := b.readRequest(br); err != nil {
			return
		}
		io.WriteString(c, okResponse("first"))
		if _, _, err := b.readRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Len")
	})
	bal := newBalancer(t, "web", b.instance("one"))
	f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
	if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "first" {
		t.Fatalf("first GET: %d %q", res.StatusCode, body)
	}
	if res, _ := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != http.StatusBadGateway {
		t.Errorf("GET cut mid-head: %d, want 502", res.StatusCode)
	}
	if r := b.reqs.Load(); r != 2 {
		t.Errorf("backend read %d requests, want 2: the cut one was resent", r)
	}
	if n := failures(bal); n != 1 {
		t.Errorf("%d failures counted, want 1", n)
	}
}

// TestH1ResponseHeaderTimeoutReused: a reused connection whose instance
// does not answer in time gives 504, is not taken for a stale one and
// resent, and counts as a failure.
func TestH1ResponseHeaderTimeoutReused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var calls atomic.Int64
	up, cc := countedUpstream(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) > 1 {
			select {
			case <-r.Context().Done():
			case <-ctx.Done():
			}
			return
		}
		io.WriteString(w, "fast")
	})
	bal := newBalancer(t, "web", up.instance())
	f := newFrontend(t, Config{MaxAttempts: 1, ResponseHeaderTimeout: 150 * time.Millisecond}, Route{Balancer: bal})
	if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "fast" {
		t.Fatalf("first GET: %d %q", res.StatusCode, body)
	}
	start := time.Now()
	res, body := f.do(t, ctx, "GET", "/", nil, nil)
	if res.StatusCode != http.StatusGatewayTimeout || body != "upstream of service web timed out\n" {
		t.Errorf("got %d %q, want 504", res.StatusCode, body)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("504 after %v, before the 150ms timeout", d)
	}
	if opened, _, _ := cc.counts(); opened != 1 || up.hits.Load() != 2 {
		t.Errorf("%d connections, %d requests, want 1 and 2: the request was resent", opened, up.hits.Load())
	}
	if n := failures(bal); n != 1 {
		t.Errorf("%d failures counted, want 1", n)
	}
	// The timed-out connection is closed, not pooled.
	waitFor(t, ctx, "the timed-out connection closed", func() bool { _, _, closed := cc.counts(); return closed == 1 })
}

// TestH1ClientCancel: a client going away while the instance thinks closes
// the upstream connection (the instance reads EOF), on a fresh and on a
// reused connection, and counts no failure.
func TestH1ClientCancel(t *testing.T) {
	t.Parallel()
	for _, reused := range []bool{false, true} {
		t.Run(fmt.Sprintf("reused=%t", reused), func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			arrived := make(chan struct{}, 1)
			sawEOF := make(chan error, 1)
			b := newRawBackend(t, func(b *rawBackend, c net.Conn, br *bufio.Reader) {
				for {
					_, target, err := b.readRequest(br)
					if err != nil {
						return
					}
					if target != "/hang" {
						io.WriteString(c, okResponse("ok"))
						continue
					}
					arrived <- struct{}{}
					_, err = br.ReadByte()
					sawEOF <- err
					return
				}
			})
			bal := newBalancer(t, "web", b.instance("one"))
			f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
			if reused {
				f.do(t, ctx, "GET", "/warm", nil, nil)
			}
			reqCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, _, err := f.get(reqCtx, "/hang")
				errc <- err
			}()
			select {
			case <-arrived:
			case <-ctx.Done():
				t.Fatal("request never reached the instance")
			}
			cancel()
			select {
			case err := <-sawEOF:
				if !errors.Is(err, io.EOF) {
					t.Errorf("instance read %v after the client left, want EOF", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream connection stayed open 5s after the client left")
			}
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Errorf("client error %v, want context.Canceled", err)
			}
			if c := b.conns.Load(); c != 1 {
				t.Errorf("%d upstream connections, want 1", c)
			}
			// The handler is done once the client saw its cancel only when
			// the server noticed; wait for the balancer to hear of it.
			waitFor(t, ctx, "the attempt to end", func() bool { return bal.Pool().Instances[0].Stats.InFlight.Load() == 0 })
			if n := failures(bal); n != 0 {
				t.Errorf("%d failures counted for a client cancel, want 0", n)
			}
			if res, body := f.do(t, ctx, "GET", "/again", nil, nil); res.StatusCode != 200 || body != "ok" {
				t.Errorf("GET after the cancel: %d %q", res.StatusCode, body)
			}
		})
	}
}

// TestH1InterimResponses: 100 Continue and 103 Early Hints before the
// final answer are skipped, and the connection stays usable.
func TestH1InterimResponses(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newRawBackend(t, keepAlive(func(_, _ string) string {
		return "HTTP/1.1 100 Continue\r\n\r\n" +
			"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" +
			"HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 5\r\n\r\nfinal"
	}))
	bal := newBalancer(t, "web", b.instance("one"))
	f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
	for i := range 3 {
		res, body := f.do(t, ctx, "GET", "/", nil, nil)
		if res.StatusCode != 200 || body != "final" || res.Header.Get("X-Final") != "1" || res.Header.Get("Link") != "" {
			t.Errorf("GET %d: %d %v %q, want the final answer only", i, res.StatusCode, res.Header, body)
		}
	}
	if c := b.conns.Load(); c != 1 {
		t.Errorf("%d upstream connections for 3 requests, want 1", c)
	}
}

// TestH1ReadUntilClose: a body framed by the end of the connection is read
// whole, and the connection is not reused.
func TestH1ReadUntilClose(t *testing.T) {
	t.Parallel()
	body := strings.Repeat("0123456789abcdef", 8<<10) // 128 KiB
	for _, head := range []string{"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\n"} {
		t.Run(strings.Fields(head)[0], func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			b := newRawBackend(t, func(b *rawBackend, c net.Conn, br *bufio.Reader) {
				if _, _, err := b.readRequest(br); err == nil {
					io.WriteString(c, head+body)
				}
			})
			bal := newBalancer(t, "web", b.instance("one"))
			f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
			for i := range 2 {
				res, got := f.do(t, ctx, "GET", "/", nil, nil)
				if res.StatusCode != 200 || got != body {
					t.Fatalf("GET %d: %d, %d bytes, want 200 and %d", i, res.StatusCode, len(got), len(body))
				}
			}
			if c := b.conns.Load(); c != 2 {
				t.Errorf("%d upstream connections for 2 requests, want 2", c)
			}
			if n := failures(bal); n != 0 {
				t.Errorf("%d failures, want 0", n)
			}
		})
	}
}

// TestH1ConnectionCloseNotReused: an answer with Connection: close leaves
// its connection out of the pool even if the instance keeps it open.
func TestH1ConnectionCloseNotReused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newRawBackend(t, keepAlive(func(_, _ string) string {
		return "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
	}))
	bal := newBalancer(t, "web", b.instance("one"))
	f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
	for range 3 {
		if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	}
	if r, c := b.reqs.Load(), b.conns.Load(); r != 3 || c != 3 {
		t.Errorf("%d requests on %d connections, want 3 on 3", r, c)
	}
}

// TestH1Head: HEAD answers carry no body whatever their framing fields
// say, keep their Content-Length, and leave the connection reusable.
func TestH1Head(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, head string }{
		{"Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			b := newRawBackend(t, keepAlive(func(method, _ string) string {
				if method == http.MethodHead {
					return tt.head
				}
				return okResponse("hello world")
			}))
			bal := newBalancer(t, "web", b.instance("one"))
			f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
			res, body := f.do(t, ctx, "HEAD", "/", nil, nil)
			if res.StatusCode != 200 || body != "" {
				t.Errorf("HEAD: %d %q", res.StatusCode, body)
			}
			if tt.name == "Content-Length" && res.Header.Get("Content-Length") != "11" {
				t.Errorf("HEAD Content-Length %q, want 11", res.Header.Get("Content-Length"))
			}
			if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "hello world" {
				t.Errorf("GET after HEAD: %d %q", res.StatusCode, body)
			}
			if c := b.conns.Load(); c != 1 {
				t.Errorf("%d upstream connections, want 1", c)
			}
		})
	}
}

// TestH1UnsolicitedBytes: bytes an instance sends beyond its answer (more
// body than its Content-Length says, a body to a HEAD) must never become
// the answer to the next request on the connection. net/http's Transport
// closes such a connection ("Unsolicited response received on idle HTTP
// channel").
func TestH1UnsolicitedBytes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, method string
		first        string // what the instance sends to the first request
	}{
		{"body longer than Content-Length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" +
			"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nbogus!"},
		{"body to a HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			b := newRawBackend(t, keepAlive(func(_, target string) string {
				if target == "/first" {
					return tt.first
				}
				return okResponse("second")
			}))
			bal := newBalancer(t, "web", b.instance("one"))
			f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
			if res, _ := f.do(t, ctx, tt.method, "/first", nil, nil); res.StatusCode != 200 {
				t.Fatalf("first %s: %d", tt.method, res.StatusCode)
			}
			res, body := f.do(t, ctx, "GET", "/second", nil, nil)
			if res.StatusCode != 200 || body != "second" {
				t.Errorf("next GET got %d %q, want 200 \"second\"", res.StatusCode, body)
			}
			if n := failures(bal); n != 0 {
				t.Errorf("%d failures counted, want 0", n)
			}
		})
	}
}

// TestH1ResponseHeadSize: a head larger than the connection's buffer is
// read; one over 1 MiB is refused with 502.
func TestH1ResponseHeadSize(t *testing.T) {
	t.Parallel()
	head := func(size int) string {
		var b strings.Builder
		b.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
		v := strings.Repeat("v", 1000)
		for i := 0; b.Len() < size; i++ {
			fmt.Fprintf(&b, "X-Fill-%d: %s\r\n", i, v)
		}
		return b.String() + "\r\nok"
	}
	tests := []struct {
		name   string
		size   int
		status int
	}{
		{"100 KiB", 100 << 10, 200},
		{"over 1 MiB", 1<<20 + 10<<10, http.StatusBadGateway},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			resp := head(tt.size)
			b := newRawBackend(t, keepAlive(func(_, _ string) string { return resp }))
			bal := newBalancer(t, "web", b.instance("one"))
			f := newFrontend(t, Config{MaxAttempts: 1}, Route{Balancer: bal})
			res, body := f.do(t, ctx, "GET", "/", nil, nil)
			if res.StatusCode != tt.status {
				t.Fatalf("got %d, want %d", res.StatusCode, tt.status)
			}
			if tt.status == 200 && (body != "ok" || res.Header.Get("X-Fill-0") == "") {
				t.Errorf("body %q, X-Fill-0 %q", body, res.Header.Get("X-Fill-0"))
			}
		})
	}
}

// TestH1IdlePool: the pool keeps at most MaxIdleConnsPerHost idle
// connections, reuses them, and CloseIdleConnections closes them.
func TestH1IdlePool(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const n, maxIdle = 5, 2
	h, arrived, release := gatedHandler(ctx, n)
	up, cc := countedUpstream(t, "up", h)
	t.Cleanup(release)
	bal := newBalancer(t, "web", up.instance())
	f := newFrontend(t, Config{MaxAttempts: 1, MaxIdleConnsPerHost: maxIdle}, Route{Balancer: bal})
	concurrentGets(t, ctx, f, n, arrived, release)
	waitFor(t, ctx, "connections over the cap closed", func() bool {
		_, idle, closed := cc.counts()
		return closed == n-maxIdle && idle == maxIdle
	})
	for range 4 {
		if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	}
	if opened, _, closed := cc.counts(); opened != n || closed != n-maxIdle {
		t.Errorf("%d opened, %d closed after sequential requests, want %d and %d: idle connections were not reused",
			opened, closed, n, n-maxIdle)
	}
	f.p.CloseIdleConnections()
	waitFor(t, ctx, "every connection closed", func() bool { _, _, closed := cc.counts(); return closed == n })
}

// TestH1IdleConnTimeout: an idle connection is closed once it has been idle
// IdleConnTimeout, and the next request dials a new one.
func TestH1IdleConnTimeout(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const idle = 200 * time.Millisecond
	up, cc := countedUpstream(t, "up", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	bal := newBalancer(t, "web", up.instance())
	f := newFrontend(t, Config{MaxAttempts: 1, IdleConnTimeout: idle}, Route{Balancer: bal})
	f.do(t, ctx, "GET", "/", nil, nil)
	start := time.Now()
	waitFor(t, ctx, "the idle connection closed", func() bool { _, _, closed := cc.counts(); return closed == 1 })
	if d := time.Since(start); d < idle/2 {
		t.Errorf("idle connection closed after %v, IdleConnTimeout is %v", d, idle)
	}
	if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", res.StatusCode, body)
	}
	if opened, _, _ := cc.counts(); opened != 2 {
		t.Errorf("%d connections, want 2", opened)
	}
	if n := failures(bal); n != 0 {
		t.Errorf("%d failures, want 0", n)
	}
}
