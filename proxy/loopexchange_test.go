package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// rawUpstream is an instance written byte by byte: serve gets each
// accepted connection's number (from 1) and the connection.
func rawUpstream(t *testing.T, serve func(n int, c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(n, c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// readHead reads one request head from br; false at the end.
func readHead(br *bufio.Reader) (string, bool) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return b.String(), false
		}
		b.WriteString(line)
		if line == "\r\n" {
			return b.String(), true
		}
	}
}

func loopProxy(t *testing.T, routes []Route, cfg Config) *laneServer {
	t.Helper()
	p, err := New(cfg, routes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	return startLoop(t, p, nil)
}

// TestLoopExchangePipelinedInOrder: pipelined GETs through the proxy are
// served on the loop, one at a time and in order, the first being the
// slowest.
func TestLoopExchangePipelinedInOrder(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var running, most atomic.Int32
	release := make(chan struct{})
	up := newUpstream(t, "web", func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if r.URL.Path == "/0" {
			<-release
		}
		fmt.Fprintf(w, "answer to %s", r.URL.Path)
	})
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", up.instance())}}, Config{})
	rc := dialRaw(t, ctx, ls.addr)
	const n = 12
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
	}
	rc.send(b.String())
	close(release)
	for i := range n {
		res, body := rc.response("GET")
		if want := fmt.Sprintf("answer to /%d", i); res.StatusCode != 200 || body != want {
			t.Fatalf("response %d: %d %q, want 200 %q", i, res.StatusCode, body, want)
		}
	}
	if m := most.Load(); m != 1 {
		t.Errorf("%d pipelined requests ran at once on the instance, want 1", m)
	}
	if got := ls.f.onLoop.Load(); got != n {
		t.Errorf("%d requests served on the loop, want %d", got, n)
	}
}

// TestLoopExchangeClientGoneClosesUpstream: a client that leaves while its
// request waits makes the loop close the upstream connection (the
// instance sees it end) and not reuse it: the next request comes on a new
// connection.
func TestLoopExchangeClientGoneClosesUpstream(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	arrived := make(chan int, 4)
	closed := make(chan int, 4)
	addr := rawUpstream(t, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			head, ok := readHead(br)
			if !ok {
				closed <- n
				return
			}
			arrived <- n
			if strings.HasPrefix(head, "GET /wait ") {
				continue // never answered: only the proxy's close ends it
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", instanceAt("raw", addr))}}, Config{})
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
	first := <-arrived
	rc.c.Close()
	select {
	case n := <-closed:
		if n != first {
			t.Fatalf("connection %d closed, want %d", n, first)
		}
	case <-ctx.Done():
		t.Fatal("the upstream connection stayed open after the client left")
	}
	rc2 := dialRaw(t, ctx, ls.addr)
	rc2.send("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body := rc2.response("GET"); res.StatusCode != 200 || body != "ok" {
		t.Fatalf("next request: %d %q", res.StatusCode, body)
	}
	if n := <-arrived; n == first {
		t.Errorf("the next request came on connection %d, the one the gone client's request held", n)
	}
}

// TestLoopExchangeStaleConnResent: a kept-alive connection the instance
// closes as the next request arrives, before any byte of an answer, is
// not an answer: the request is resent once on a fresh connection.
func TestLoopExchangeStaleConnResent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var heads atomic.Int32
	addr := rawUpstream(t, func(n int, c net.Conn, br *bufio.Reader) {
		for i := 0; ; i++ {
			if _, ok := readHead(br); !ok {
				return
			}
			heads.Add(1)
			if n == 1 && i == 1 {
				return // the second request on the first connection: closed unanswered
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d", n)
		}
	})
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", instanceAt("raw", addr))}}, Config{})
	rc := dialRaw(t, ctx, ls.addr)
	for i, want := range []string{"1", "2"} {
		rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if res, body := rc.response("GET"); res.StatusCode != 200 || body != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, res.StatusCode, body, want)
		}
	}
	if h := heads.Load(); h != 3 {
		t.Errorf("the instance read %d request heads, want 3 (one resent)", h)
	}
	if got := ls.f.onLoop.Load(); got != 2 {
		t.Errorf("%d requests served on the loop, want 2", got)
	}
}

// TestLoopExchangeRetriesDeadInstance: a connect failure goes on to
// another instance; every GET is answered.
func TestLoopExchangeRetriesDeadInstance(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	up := nameUpstream(t, "alive")
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", instanceAt("dead", dead), up.instance())}}, Config{})
	rc := dialRaw(t, ctx, ls.addr)
	for i := range 6 {
		rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if res, body := rc.response("GET"); res.StatusCode != 200 || body != "alive" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
}

// TestLoopExchangeFraming: chunked bodies with trailers, bodies up to the
// close, HEAD, 204 and 304 reach the client whole and correctly framed;
// the upstream connection is reused only after a delimited body.
func TestLoopExchangeFraming(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var conns atomic.Int32
	addr := rawUpstream(t, func(n int, c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		for {
			head, ok := readHead(br)
			if !ok {
				return
			}
			switch {
			case strings.HasPrefix(head, "GET /chunked "):
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Sum: 12\r\n\r\n")
			case strings.HasPrefix(head, "HEAD "):
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
			case strings.HasPrefix(head, "GET /204 "):
				io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			case strings.HasPrefix(head, "GET /304 "):
				io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
			case strings.HasPrefix(head, "GET /close "):
				io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
				return
			default:
				io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
			}
		}
	})
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", instanceAt("raw", addr))}}, Config{})
	rc := dialRaw(t, ctx, ls.addr)
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/chunked", "hello, world", 200},
		{"HEAD", "/", "", 200},
		{"GET", "/204", "", 204},
		{"GET", "/304", "", 304},
		{"GET", "/plain", "abc", 200},
		{"GET", "/close", "until the end", 200},
		{"GET", "/plain", "abc", 200},
	} {
		rc.send(tc.method + " " + tc.path + " HTTP/1.1\r\nHost: a\r\n\r\n")
		res, body := rc.response(tc.method)
		if res.StatusCode != tc.status || body != tc.body {
			t.Fatalf("%s %s: %d %q, want %d %q", tc.method, tc.path, res.StatusCode, body, tc.status, tc.body)
		}
		switch tc.path {
		case "/chunked":
			if got := res.Trailer.Get("X-Sum"); got != "12" {
				t.Errorf("trailer X-Sum %q, want 12", got)
			}
		case "/":
			if res.ContentLength != 99 {
				t.Errorf("HEAD Content-Length %d, want 99", res.ContentLength)
			}
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d upstream connections, want 2 (a new one after the body up to the close)", n)
	}
	if got := ls.f.onLoop.Load(); got != 7 {
		t.Errorf("%d requests served on the loop, want 7", got)
	}
}

// TestLoopExchangeHedges: an instance that sends no head within the
// per-try timeout gets a hedge to another, whose answer wins; the slow
// one's connection is closed.
func TestLoopExchangeHedges(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	slowGone := make(chan struct{}, 1)
	slow := newUpstream(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		select {
		case slowGone <- struct{}{}:
		default:
		}
	})
	fast := nameUpstream(t, "fast")
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	bal.Update([]lb.Instance{slow.instance(), fast.instance()})
	ls := loopProxy(t, []Route{{Balancer: bal, TryTimeout: 50 * time.Millisecond}}, Config{})
	rc := dialRaw(t, ctx, ls.addr)
	for i := range 4 {
		rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if res, body := rc.response("GET"); res.StatusCode != 200 || body != "fast" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	select {
	case <-slowGone:
	case <-ctx.Done():
		t.Fatal("the slow instance's connection was not closed after the hedge won")
	}
}

// TestLoopExchangeHeaderTimeout: no response head within the
// response-header timeout answers 504.
func TestLoopExchangeHeaderTimeout(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	up := newUpstream(t, "stuck", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", up.instance()), TryTimeout: TryTimeoutOff}},
		Config{ResponseHeaderTimeout: 100 * time.Millisecond, MaxAttempts: 1})
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, _ := rc.response("GET"); res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", res.StatusCode)
	}
}

// TestLoopExchangeInstanceLeft: a GET waiting on an instance that leaves
// the pool (InstancesLeft) is sent to another at once, on the loop.
func TestLoopExchangeInstanceLeft(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	arrived := make(chan struct{}, 1)
	stuck := newUpstream(t, "stuck", func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	other := nameUpstream(t, "other")
	bal := newBalancer(t, "web", stuck.instance())
	p, err := New(Config{}, []Route{{Balancer: bal, TryTimeout: TryTimeoutOff}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	ls := startLoop(t, p, nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("the request never reached the stuck instance")
	}
	left := bal.Pool().Instances[0]
	bal.Update([]lb.Instance{other.instance()})
	waitFor(t, ctx, "the attempt to be cancelled", func() bool { return p.InstancesLeft([]*lb.Instance{left}) == 0 })
	if res, body := rc.response("GET"); res.StatusCode != 200 || body != "other" {
		t.Fatalf("after the instance left: %d %q, want 200 \"other\"", res.StatusCode, body)
	}
	if got := ls.f.onLoop.Load(); got != 1 {
		t.Errorf("%d requests served on the loop, want 1", got)
	}
}

// TestLoopExchangeAccessLog: with the access log on, requests are still
// served on the loop, and their lines, written through the queue, name
// method, path, status, service and instance.
func TestLoopExchangeAccessLog(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	up := nameUpstream(t, "web-1")
	logs := &syncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info})
	ls := loopProxy(t, []Route{{Balancer: newBalancer(t, "web", up.instance())}}, Config{AccessLog: true, Logger: logger})
	rc := dialRaw(t, ctx, ls.addr)
	for i := range 3 {
		rc.send(fmt.Sprintf("GET /page/%d HTTP/1.1\r\nHost: a\r\n\r\n", i))
		if res, body := rc.response("GET"); res.StatusCode != 200 || body != "web-1" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, body)
		}
	}
	waitFor(t, ctx, "three access log lines", func() bool { return strings.Count(logs.String(), "request:") == 3 })
	for i := range 3 {
		if want := fmt.Sprintf("method=GET host=a path=/page/%d status=200", i); !strings.Contains(logs.String(), want) {
			t.Errorf("no line with %q in:\n%s", want, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "instance=web-1") {
		t.Errorf("no instance in the lines:\n%s", logs.String())
	}
	if got := ls.f.onLoop.Load(); got != 3 {
		t.Errorf("%d requests served on the loop, want 3", got)
	}
}
