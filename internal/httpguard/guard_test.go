package httpguard

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/net/http2"
)

// backend is a real http.Server on 127.0.0.1 behind Listen. Its handler
// echoes the request body and names what it saw in response fields.
type backend struct {
	addr    string
	hits    atomic.Int64
	rejects chan string

	mu   sync.Mutex
	read map[net.Conn]*bytes.Buffer // what the server read, per connection
}

// startBackend starts a backend whose server reports its connection
// states to the guard, as the package recommends.
func startBackend(t *testing.T, o Options) *backend {
	t.Helper()
	return startBackendHooked(t, o, true)
}

func startBackendHooked(t *testing.T, o Options, hooked bool) *backend {
	t.Helper()
	b := &backend{rejects: make(chan string, 1024), read: map[net.Conn]*bytes.Buffer{}}
	o.OnReject = func(reason string) {
		select {
		case b.rejects <- reason:
		default:
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           http.HandlerFunc(b.serve),
		ReadHeaderTimeout: time.Minute,
		Protocols:         &protos,
	}
	if hooked {
		srv.ConnState = ConnState
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(&recordListener{Listener: Listen(ln, o), b: b})
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	if r.Header.Get("Upgrade") == "websocket" {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(c, brw) // echo the upgraded stream
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("X-Seen", r.Method+" "+r.URL.Path+" "+r.Proto)
	w.Header().Set("X-Trailer", r.Trailer.Get("X-T"))
	_, _ = w.Write(body)
}

// nextReject waits for the next OnReject call.
func (b *backend) nextReject(ctx context.Context) string {
	select {
	case r := <-b.rejects:
		return r
	case <-ctx.Done():
		return "no OnReject call"
	}
}

// serverRead returns what the server read on all connections so far.
func (b *backend) serverRead() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	var all []byte
	for _, buf := range b.read {
		all = append(all, buf.Bytes()...)
	}
	return all
}

// recordListener records what the server reads from the guarded conns.
type recordListener struct {
	net.Listener
	b *backend
}

func (l *recordListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	buf := new(bytes.Buffer)
	l.b.mu.Lock()
	l.b.read[c] = buf
	l.b.mu.Unlock()
	return &recordConn{Conn: c, b: l.b, buf: buf}, nil
}

type recordConn struct {
	net.Conn
	b   *backend
	buf *bytes.Buffer
}

func (c *recordConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.b.mu.Lock()
	c.buf.Write(p[:n])
	c.b.mu.Unlock()
	return n, err
}

func (c *recordConn) CloseWrite() error { return c.Conn.(*conn).CloseWrite() }
func (c *recordConn) NetConn() net.Conn { return c.Conn }

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, ctx context.Context, addr string) net.Conn {
	t.Helper()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// exchange writes raw (whole, or a byte at a time) and reads until the
// server closes the connection.
func exchange(t *testing.T, ctx context.Context, addr, raw string, byteAtATime bool) []byte {
	t.Helper()
	c := dial(t, ctx, addr)
	go func() {
		if !byteAtATime {
			_, _ = io.WriteString(c, raw)
			return
		}
		for i := range len(raw) {
			if _, err := c.Write([]byte{raw[i]}); err != nil {
				return
			}
		}
	}()
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading until the server closes: %v (got %q)", err, out)
	}
	return out
}

// responses parses raw responses (for requests with the given methods).
func responses(t *testing.T, raw []byte) []*http.Response {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	var out []*http.Response
	for {
		if _, err := br.Peek(1); err == io.EOF {
			return out
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v in %q", len(out), err, raw)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("response %d body: %v", len(out), err)
		}
		res.Body = io.NopCloser(bytes.NewReader(body))
		out = append(out, res)
	}
}

func bodyOf(res *http.Response) string {
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func TestRefusesSmugglingVectors(t *testing.T) {
	b := startBackend(t, Options{MaxHeaderBytes: 4096})
	for _, tc := range refusedHeads {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 10*time.Second)
			out := exchange(t, ctx, b.addr, tc.head+get1, false)
			rs := responses(t, out)
			if len(rs) != 1 {
				t.Fatalf("%d responses, want 1: %q", len(rs), out)
			}
			if rs[0].StatusCode != tc.status || bodyOf(rs[0]) != tc.reason+"\n" || !rs[0].Close {
				t.Errorf("got %q, want %d %q and Connection: close", out, tc.status, tc.reason)
			}
			if got := b.nextReject(ctx); got != tc.reason {
				t.Errorf("OnReject(%q), want %q", got, tc.reason)
			}
		})
	}
	if n := b.hits.Load(); n != 0 {
		t.Errorf("the handler saw %d refused requests", n)
	}
}

func TestRefusesSmuggledRequest(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 10*time.Second)
	// The classic CL.TE desync: a front end using Content-Length would
	// forward all of it, one using chunked would see a second request.
	smuggle := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	body := "0\r\n\r\n" + smuggle
	raw := "POST /front HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(body)) +
		"\r\nTransfer-Encoding: chunked\r\n\r\n" + body
	rs := responses(t, exchange(t, ctx, b.addr, raw, false))
	if len(rs) != 1 || rs[0].StatusCode != 400 {
		t.Fatalf("got %d responses (first %v), want one 400", len(rs), rs)
	}
	if n := b.hits.Load(); n != 0 {
		t.Errorf("the handler saw %d requests", n)
	}
}

func TestPipelinedRefusalAnswersInOrder(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 10*time.Second)
	raw := get1 + post + "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get1
	rs := responses(t, exchange(t, ctx, b.addr, raw, false))
	if len(rs) != 3 {
		t.Fatalf("%d responses, want 200, 200, 400", len(rs))
	}
	if rs[0].StatusCode != 200 || rs[0].Header.Get("X-Seen") != "GET /a HTTP/1.1" ||
		rs[1].StatusCode != 200 || bodyOf(rs[1]) != "hello world" || rs[2].StatusCode != 400 {
		t.Errorf("got %d %q, %d, %d; want the two requests answered, then 400",
			rs[0].StatusCode, rs[0].Header.Get("X-Seen"), rs[1].StatusCode, rs[2].StatusCode)
	}
	if n := b.hits.Load(); n != 2 {
		t.Errorf("the handler saw %d requests, want 2", n)
	}
}

func TestRefusesBadChunkedBody(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 10*time.Second)
	raw := "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\nabc\r\n0\r\n\r\n" +
		"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"
	rs := responses(t, exchange(t, ctx, b.addr, raw, false))
	for _, r := range rs {
		if r.StatusCode == 200 {
			t.Errorf("a request was served after a broken chunked body: %v", r.Header.Get("X-Seen"))
		}
	}
	if got := b.nextReject(ctx); got != "malformed chunked body" {
		t.Errorf("OnReject(%q)", got)
	}
}

func TestOversizedHead(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 10*time.Second)
	raw := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"
	rs := responses(t, exchange(t, ctx, b.addr, raw, false))
	if len(rs) != 1 || rs[0].StatusCode != 431 {
		t.Fatalf("got %v, want one 431", rs)
	}
	if n := b.hits.Load(); n != 0 {
		t.Errorf("the handler saw %d requests", n)
	}
}

func TestPassesKeepAliveClientTraffic(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 20*time.Second)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	payload := bytes.Repeat([]byte("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n\x00\xff"), 3000)
	for i, tc := range []struct {
		name    string
		method  string
		body    func() io.Reader
		chunked bool
	}{
		{"get", "GET", func() io.Reader { return nil }, false},
		{"post content-length", "POST", func() io.Reader { return bytes.NewReader(payload) }, false},
		{"post chunked", "POST", func() io.Reader { return io.MultiReader(bytes.NewReader(payload)) }, true},
		{"get again", "GET", func() io.Reader { return nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reused := false
			trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
			req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), tc.method,
				"http://"+b.addr+"/k", tc.body())
			if err != nil {
				t.Fatal(err)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(res.Body)
			_ = res.Body.Close()
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("status %d, %v", res.StatusCode, err)
			}
			want := []byte(nil)
			if tc.method == "POST" {
				want = payload
			}
			if !bytes.Equal(got, want) {
				t.Errorf("echoed %d bytes, want %d unchanged", len(got), len(want))
			}
			if i > 0 && !reused {
				t.Error("the keep-alive connection was not reused")
			}
		})
	}
}

func TestPassesPipelinedRequestsUnchanged(t *testing.T) {
	raw := get1 + post + chunked + "\r\n" + // net/http tolerates CRLF after a POST
		"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"3\r\nabc\r\n0;last\r\nX-T: trailer value\r\nX-Other: o\r\n\r\n" +
		"GET /close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	for _, byteAtATime := range []bool{false, true} {
		t.Run(fmt.Sprintf("byte at a time %v", byteAtATime), func(t *testing.T) {
			b := startBackend(t, Options{})
			ctx := testContext(t, 20*time.Second)
			rs := responses(t, exchange(t, ctx, b.addr, raw, byteAtATime))
			want := []struct{ seen, body, trailer string }{
				{"GET /a HTTP/1.1", "", ""},
				{"POST /echo HTTP/1.1", "hello world", ""},
				{"POST /c HTTP/1.1", "hello world", "t"},
				{"POST /t HTTP/1.1", "abc", "trailer value"},
				{"GET /close HTTP/1.1", "", ""},
			}
			if len(rs) != len(want) {
				t.Fatalf("%d responses, want %d", len(rs), len(want))
			}
			for i, w := range want {
				r := rs[i]
				if r.StatusCode != 200 || r.Header.Get("X-Seen") != w.seen || bodyOf(r) != w.body ||
					r.Header.Get("X-Trailer") != w.trailer {
					t.Errorf("response %d: %d %q %q, want %+v", i, r.StatusCode, r.Header.Get("X-Seen"),
						r.Header.Get("X-Trailer"), w)
				}
			}
			if got := b.serverRead(); string(got) != raw {
				t.Errorf("the server read %q, want the client's bytes unchanged", got)
			}
		})
	}
}

func TestUpgradePassesThrough(t *testing.T) {
	for _, hooked := range []bool{true, false} {
		t.Run(fmt.Sprintf("ConnState %v", hooked), func(t *testing.T) {
			b := startBackendHooked(t, Options{}, hooked)
			ctx := testContext(t, 10*time.Second)
			c := dial(t, ctx, b.addr)
			_, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			res, err := http.ReadResponse(br, nil)
			if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake: %v %v", res, err)
			}
			// After the switch nothing is HTTP: not even what looks
			// like a refused head may be touched.
			frames := "\x81\x05hello" + refusedHeads[0].head + "\x00\n\n"
			if _, err := io.WriteString(c, frames); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(frames))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != frames {
				t.Errorf("echoed %q, %v; want %q", got, err, frames)
			}
		})
	}
}

func TestDeclinedSwitchIsStillGuarded(t *testing.T) {
	const vector = "POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	for _, tc := range []struct {
		name, head string
	}{
		{"upgrade", "GET /no HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"},
		{"upgrade with body", "POST /no HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nabc"},
		{"connect", "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"},
	} {
		for _, pipelined := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s pipelined %v", tc.name, pipelined), func(t *testing.T) {
				b := startBackend(t, Options{})
				ctx := testContext(t, 10*time.Second)
				c := dial(t, ctx, b.addr)
				first := tc.head
				if pipelined {
					first += vector
				}
				if _, err := io.WriteString(c, first); err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(c)
				res, err := http.ReadResponse(br, nil)
				if err != nil || res.StatusCode != 200 {
					t.Fatalf("declined switch: %v %v", res, err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				if !pipelined {
					if _, err := io.WriteString(c, vector); err != nil {
						t.Fatal(err)
					}
				}
				rest, err := io.ReadAll(br)
				if err != nil {
					t.Fatal(err)
				}
				rs := responses(t, rest)
				if len(rs) != 1 || rs[0].StatusCode != 400 {
					t.Fatalf("after the declined switch got %q, want 400", rest)
				}
				if n := b.hits.Load(); n != 1 {
					t.Errorf("the handler saw %d requests, want 1", n)
				}
			})
		}
	}
}

func TestAwaitAfterUpgrade(t *testing.T) {
	const upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
	const after = "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"
	newConn := func() *conn {
		l := Listen(nil, Options{}).(*listener)
		c := &conn{Conn: &fakeConn{data: []byte(upgrade + after), pieces: []int{7}}, l: l, p: parser{maxHead: l.maxHead}}
		ConnState(c, http.StateNew)
		return c
	}
	readUntilHeld := func(t *testing.T, c *conn) string {
		t.Helper()
		var got []byte
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				return string(got) // the fake stream ended while held
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("hijacked", func(t *testing.T) {
		c := newConn()
		if got := readUntilHeld(t, c); got != upgrade {
			t.Fatalf("released %q before the outcome, want only the upgrade request", got)
		}
		ConnState(c, http.StateActive)
		ConnState(c, http.StateHijacked)
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != after {
			t.Errorf("after the hijack read %q, %v; want the held bytes unchanged", buf[:n], err)
		}
	})
	t.Run("answered", func(t *testing.T) {
		c := newConn()
		if got := readUntilHeld(t, c); got != upgrade {
			t.Fatalf("released %q before the outcome, want only the upgrade request", got)
		}
		ConnState(c, http.StateActive)
		ConnState(c, http.StateIdle)
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != substitute || c.p.viol != vObsFold {
			t.Errorf("after the answer read %q, %v, violation %v; want the obs-fold refused", buf[:n], err, c.p.viol)
		}
	})
}

func TestH2CPriorKnowledgePassesThrough(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 10*time.Second)
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, method := range []string{"GET", "POST", "POST"} {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+b.addr+"/h2", strings.NewReader("h2 body"))
		if err != nil {
			t.Fatal(err)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.ProtoMajor != 2 || res.Header.Get("X-Seen") != method+" /h2 HTTP/2.0" || string(got) != "h2 body" {
			t.Errorf("%s: %s %q %q", method, res.Proto, res.Header.Get("X-Seen"), got)
		}
	}
}

func TestMaxConns(t *testing.T) {
	b := startBackend(t, Options{MaxConns: 2})
	ctx := testContext(t, 20*time.Second)
	get := func(c net.Conn, br *bufio.Reader) error {
		if _, err := io.WriteString(c, get1); err != nil {
			return err
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, res.Body)
		if res.StatusCode != 200 {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		return nil
	}
	var live []net.Conn
	var readers []*bufio.Reader
	for range 2 {
		c := dial(t, ctx, b.addr)
		br := bufio.NewReader(c)
		if err := get(c, br); err != nil {
			t.Fatal(err)
		}
		live, readers = append(live, c), append(readers, br)
	}

	out := exchange(t, ctx, b.addr, get1, false)
	rs := responses(t, out)
	if len(rs) != 1 || rs[0].StatusCode != 503 || rs[0].Header.Get("Retry-After") != "1" || !rs[0].Close {
		t.Fatalf("over the limit got %q, want 503 with Retry-After: 1", out)
	}
	if got := b.nextReject(ctx); got != "too many connections" {
		t.Errorf("OnReject(%q)", got)
	}
	for i := range live {
		if err := get(live[i], readers[i]); err != nil {
			t.Errorf("connection %d within the limit: %v", i, err)
		}
	}

	// Closing one frees its place once the server has closed its side.
	_ = live[0].Close()
	for {
		c := dial(t, ctx, b.addr)
		err := get(c, bufio.NewReader(c))
		_ = c.Close()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a closed connection never freed its place: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestStalledConnectionsDoNotDelayOthers(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 30*time.Second)
	for range 300 {
		c := dial(t, ctx, b.addr)
		if _, err := io.WriteString(c, "GET /stalled HTTP/1.1\r\nHost: x\r\nX-Half: "); err != nil {
			t.Fatal(err)
		}
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+b.addr+"/ok", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("with 300 stalled connections: %v", err)
	}
	_ = res.Body.Close()
	t.Logf("request latency with 300 stalled connections: %v", time.Since(start))
	if res.StatusCode != 200 || b.hits.Load() != 1 {
		t.Errorf("status %d, %d requests served; want 200 and only this one", res.StatusCode, b.hits.Load())
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl := Listen(ln, Options{MaxConns: 1})
	defer gl.Close()
	ctx := testContext(t, 10*time.Second)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := gl.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	dial(t, ctx, ln.Addr().String())
	var c net.Conn
	select {
	case c = <-accepted:
	case <-ctx.Done():
		t.Fatal("no connection accepted")
	}
	_ = c.Close()
	if err := c.Close(); err == nil {
		t.Error("second Close returned nil")
	}
	if n := gl.(*listener).live.Load(); n != 0 {
		t.Errorf("%d live connections after two Close calls, want 0", n)
	}
}

// infiniteConn serves the same request forever.
type infiniteConn struct {
	fakeConn
	req []byte
	off int
}

func (c *infiniteConn) Read(b []byte) (int, error) {
	n := copy(b, c.req[c.off:])
	c.off = (c.off + n) % len(c.req)
	return n, nil
}

func TestNoAllocationPerRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  string
		read int
	}{
		{"get, direct", get1, 4096},
		{"chunked post, direct", chunked, 4096},
		{"get, small reads", get1, 16},
		{"chunked post, small reads", chunked, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := Listen(nil, Options{}).(*listener)
			c := &conn{Conn: &infiniteConn{req: []byte(tc.req)}, l: l, p: parser{maxHead: l.maxHead}}
			buf := make([]byte, tc.read)
			readOne := func() {
				for got := 0; got < len(tc.req); {
					n, err := c.Read(buf)
					if err != nil {
						t.Fatal(err)
					}
					got += n
				}
			}
			readOne()
			if a := testing.AllocsPerRun(200, readOne); a != 0 {
				t.Errorf("%v allocations per request", a)
			}
			if c.p.viol != nil {
				t.Errorf("violation %v", c.p.viol)
			}
		})
	}
}

func TestExpectContinue(t *testing.T) {
	b := startBackend(t, Options{})
	ctx := testContext(t, 10*time.Second)
	c := dial(t, ctx, b.addr)
	if _, err := io.WriteString(c, "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusContinue {
		t.Fatalf("want 100 Continue first: %v %v", res, err)
	}
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := bodyOf(res); res.StatusCode != 200 || got != "hello" {
		t.Errorf("got %d %q, want 200 hello", res.StatusCode, got)
	}
}

func TestLogsReasonNotHead(t *testing.T) {
	var logs syncBuffer
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &logs})
	b := startBackend(t, Options{Logger: logger})
	ctx := testContext(t, 10*time.Second)
	raw := "GET / HTTP/1.1\r\nHost: x\r\nCookie: secret-session-value\r\nX: a\r\n b\r\n\r\n"
	rs := responses(t, exchange(t, ctx, b.addr, raw, false))
	if len(rs) != 1 || rs[0].StatusCode != 400 {
		t.Fatalf("got %v, want 400", rs)
	}
	b.nextReject(ctx) // the log line is written before OnReject runs
	got := logs.String()
	if !strings.Contains(got, "httpguard: refused request") || !strings.Contains(got, "reason=obs-fold") ||
		!strings.Contains(got, "peer=127.0.0.1:") {
		t.Errorf("log %q lacks the refusal, its reason or the peer", got)
	}
	if strings.Contains(got, "secret-session-value") {
		t.Errorf("log %q holds the request head", got)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
