package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// connEvent is one ConnState call.
type connEvent struct {
	conn  net.Conn
	state http.ConnState
}

// connStates records the ConnState calls of a server.
type connStates struct {
	mu sync.Mutex
	ev []connEvent
}

func (s *connStates) hook(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	s.ev = append(s.ev, connEvent{c, st})
	s.mu.Unlock()
}

func (s *connStates) events() []connEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ev)
}

// handOffs counts the connections the fallback server got: net/http calls
// StateNew with the *replayConn LoopServer gave it.
func (s *connStates) handOffs() int {
	n := 0
	for _, e := range s.events() {
		if _, ok := e.conn.(*replayConn); ok && e.state == http.StateNew {
			n++
		}
	}
	return n
}

// laneServer is a LoopServer on a loopback listener in front of a
// fallback built by NewServer, as cmd/agent builds it.
type laneServer struct {
	f      *LoopServer
	srv    *http.Server
	addr   string
	states *connStates
	logs   *syncBuffer

	served   chan struct{} // closed when Serve returned
	serveErr error
}

// startLoop serves h through a LoopServer; mod, if set, adjusts the
// fallback server before it starts. Cleanup shuts it down and checks that
// Serve returned http.ErrServerClosed.
func startLoop(t *testing.T, h http.Handler, mod func(*http.Server)) *laneServer {
	t.Helper()
	logs := &syncBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Name: "lane", Output: logs, Level: hclog.Debug})
	srv := NewServer("127.0.0.1:0", h, ServerConfig{ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}, logger)
	if mod != nil {
		mod(srv)
	}
	ls := &laneServer{srv: srv, states: &connStates{}, logs: logs, served: make(chan struct{})}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		ls.states.hook(c, st)
		if prev != nil {
			prev(c, st)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls.addr = ln.Addr().String()
	var opts LoopOptions
	if p, ok := h.(*Proxy); ok {
		opts.Proxy = p // what the loop can serve it serves itself
	}
	ls.f = NewLoopServer(srv, opts)
	go func() {
		ls.serveErr = ls.f.Serve(ln)
		close(ls.served)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ls.f.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case <-ls.served:
			if !errors.Is(ls.serveErr, http.ErrServerClosed) {
				t.Errorf("Serve returned %v, want http.ErrServerClosed", ls.serveErr)
			}
		case <-ctx.Done():
			t.Error("Serve did not return after Shutdown")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return ls
}

func (ls *laneServer) url() string { return "http://" + ls.addr }

// client returns an HTTP/1.1 client with its own keep-alive pool.
func (ls *laneServer) client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// rawClient is a client connection speaking bytes, to see the framing.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, ctx context.Context, addr string) *rawClient {
	t.Helper()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawClient) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// response reads the next response to a request with method, its whole
// body included.
func (rc *rawClient) response(method string) (*http.Response, string) {
	rc.t.Helper()
	res, body, err := readRawResponse(rc.br, method)
	if err != nil {
		rc.t.Fatalf("%s: %v", method, err)
	}
	return res, body
}

func readRawResponse(br *bufio.Reader, method string) (*http.Response, string, error) {
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return nil, "", fmt.Errorf("read response: %w", err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return res, string(b), fmt.Errorf("read body: %w", err)
	}
	return res, string(b), nil
}

// head reads a response head, up to and with its blank line.
func (rc *rawClient) head() string {
	rc.t.Helper()
	var b strings.Builder
	for {
		line, err := rc.br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			rc.t.Fatalf("read head %q: %v", b.String(), err)
		}
		if line == "\r\n" {
			return b.String()
		}
	}
}

// closedWithin reports an error unless the server closes the connection
// (EOF or reset) before anything else arrives, within d.
func (rc *rawClient) closedWithin(d time.Duration) error {
	rc.c.SetReadDeadline(time.Now().Add(d))
	b, err := rc.br.ReadByte()
	switch {
	case err == nil:
		rest, _ := rc.br.Peek(rc.br.Buffered())
		return fmt.Errorf("connection still open: read %q", append([]byte{b}, rest...))
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("connection still open after %v", d)
	}
	return nil
}

// expectClosed fails unless the server closes the connection (EOF or
// reset) before anything else arrives, within d.
func (rc *rawClient) expectClosed(d time.Duration) {
	rc.t.Helper()
	if err := rc.closedWithin(d); err != nil {
		rc.t.Fatal(err)
	}
}

// echoHandler answers with the method, request URI, body and whether the
// lane served the request.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_, lane := w.(*loopResponse)
	fmt.Fprintf(w, "%s %s proto=%d lane=%t body=%q", r.Method, r.RequestURI, r.ProtoMajor, lane, b)
}

func TestLoopServesGET(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	client := ls.client(t)
	const n = 50
	for i := range n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/item/%d?x=%d", ls.url(), i, i), nil)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		want := fmt.Sprintf(`GET /item/%d?x=%d proto=1 lane=true body=""`, i, i)
		if err != nil || res.StatusCode != http.StatusOK || string(b) != want {
			t.Fatalf("request %d: %d %q %v, want 200 %q", i, res.StatusCode, b, err, want)
		}
		if res.ProtoMajor != 1 || res.ProtoMinor != 1 {
			t.Errorf("response proto %s, want HTTP/1.1", res.Proto)
		}
		if res.Header.Get("Date") == "" {
			t.Errorf("no Date header")
		}
	}
	news := 0
	for _, e := range ls.states.events() {
		if e.state == http.StateNew {
			news++
		}
	}
	if news != 1 || ls.states.handOffs() != 0 {
		t.Errorf("%d connections, %d handed off for %d keep-alive GETs, want 1 and 0", news, ls.states.handOffs(), n)
	}
}

func TestLoopPipelinedHandOff(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n" +
		"GET /two?q=2 HTTP/1.1\r\nHost: a\r\n\r\n" +
		"POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /four HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, want := range []string{
		`GET /one proto=1 lane=true body=""`,
		`GET /two?q=2 proto=1 lane=true body=""`,
		`POST /three proto=1 lane=false body="hello"`,
		`GET /four proto=1 lane=false body=""`, // net/http keeps the connection
	} {
		method, _, _ := strings.Cut(want, " ")
		res, body := rc.response(method)
		if res.StatusCode != http.StatusOK || body != want {
			t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, want)
		}
	}
	if n := ls.states.handOffs(); n != 1 {
		t.Errorf("%d hand-offs, want 1", n)
	}
}

func TestLoopHandsOff(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("b", 10<<10)
	tests := []struct {
		name   string
		req    string
		method string
		status int
		body   string // "" to skip
	}{
		{name: "POST first", req: "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", method: "POST",
			status: 200, body: `POST /p proto=1 lane=false body="abc"`},
		{name: "PUT", req: "PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", method: "PUT",
			status: 200, body: `PUT /p proto=1 lane=false body="x"`},
		{name: "HTTP/1.0", req: "GET /old HTTP/1.0\r\n\r\n", method: "GET",
			status: 200, body: `GET /old proto=1 lane=false body=""`},
		{name: "GET with body", req: "GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi", method: "GET",
			status: 200, body: `GET /b proto=1 lane=false body="hi"`},
		{name: "GET chunked", req: "GET /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", method: "GET",
			status: 200, body: `GET /c proto=1 lane=false body="hi"`},
		{name: "Expect", req: "GET /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", method: "GET",
			status: 200, body: `GET /e proto=1 lane=false body=""`},
		{name: "gRPC content type", req: "GET /g HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n\r\n", method: "GET",
			status: 200, body: `GET /g proto=1 lane=false body=""`},
		{name: "absolute form", req: "GET http://a/abs HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET",
			status: 200, body: `GET http://a/abs proto=1 lane=false body=""`},
		{name: "head over 8 KiB", req: "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: " + big + "\r\n\r\n", method: "GET",
			status: 200, body: `GET /big proto=1 lane=false body=""`},
		{name: "head over MaxHeaderBytes", req: "GET /huge HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat(big, 4) + "\r\n\r\n", method: "GET",
			status: http.StatusRequestHeaderFieldsTooLarge},
		{name: "bare LF in a value", req: "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nb\r\n\r\n", method: "GET", status: 400},
		{name: "two Host fields", req: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", method: "GET", status: 400},
		{name: "no Host", req: "GET / HTTP/1.1\r\nX-A: a\r\n\r\n", method: "GET", status: 400},
		{name: "invalid Host", req: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", method: "GET", status: 400},
		{name: "invalid field name", req: "GET / HTTP/1.1\r\nHost: a\r\nX A: v\r\n\r\n", method: "GET", status: 400},
		{name: "bad escape", req: "GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", status: 400},
		{name: "lowercase method", req: "get / HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET",
			status: 200, body: `get / proto=1 lane=false body=""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			handled := make(chan struct{}, 1)
			ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				handled <- struct{}{}
				if tt.name == "head over 8 KiB" && len(r.Header.Get("X-Big")) != len(big) {
					t.Errorf("X-Big of %d bytes, want %d", len(r.Header.Get("X-Big")), len(big))
				}
				echoHandler(w, r)
			}), func(srv *http.Server) { srv.MaxHeaderBytes = 16 << 10 })
			rc := dialRaw(t, ctx, ls.addr)
			rc.send(tt.req)
			res, body := rc.response(tt.method)
			if res.StatusCode != tt.status || (tt.body != "" && body != tt.body) {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, body, tt.status, tt.body)
			}
			if tt.body == "" && len(handled) > 0 {
				t.Errorf("the handler ran for a request net/http refuses")
			}
			if n := ls.states.handOffs(); n != 1 {
				t.Errorf("%d hand-offs, want 1", n)
			}
		})
	}
}

// describe writes what a handler sees of r, the fields net/http fills.
func describe(r *http.Request) string {
	var b strings.Builder
	u := r.URL
	body, err := io.ReadAll(r.Body)
	fmt.Fprintf(&b, "%s %s %d.%d host=%q requestURI=%q close=%t clen=%d te=%q trailer=%v body=%q err=%v\n",
		r.Method, r.Proto, r.ProtoMajor, r.ProtoMinor, r.Host, r.RequestURI, r.Close, r.ContentLength,
		r.TransferEncoding, r.Trailer, body, err)
	fmt.Fprintf(&b, "url=%q scheme=%q host=%q path=%q rawPath=%q escapedPath=%q rawQuery=%q forceQuery=%t fragment=%q uri=%q query=%v\n",
		u.String(), u.Scheme, u.Host, u.Path, u.RawPath, u.EscapedPath(), u.RawQuery, u.ForceQuery, u.Fragment, u.RequestURI(), u.Query())
	for _, k := range slices.Sorted(maps.Keys(r.Header)) {
		fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
	}
	return b.String()
}

// TestLoopMatchesNetHTTP sends the same bytes to net/http alone and to a
// LoopServer and compares what the handler saw and what the client got.
func TestLoopMatchesNetHTTP(t *testing.T) {
	t.Parallel()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := describe(r)
		if _, ok := w.(*loopResponse); ok {
			w.Header().Set("X-Lane", "1")
		}
		w.Header().Set("X-Describe", strings.ReplaceAll(d, "\n", " | "))
		io.WriteString(w, d)
	})
	ref := httptest.NewServer(h)
	t.Cleanup(ref.Close)
	ls := startLoop(t, h, nil)

	get := func(target string) string { return "GET " + target + " HTTP/1.1\r\nHost: example.com\r\n\r\n" }
	tests := []struct {
		name string
		req  string
		lane bool // served by the lane, not handed off
	}{
		{"root", get("/"), true},
		{"escaped path and query", get("/a%20b?x=1"), true},
		{"escaped slash", get("/a%2Fb/c?q=%41&r"), true},
		{"utf-8 escape", get("/caf%C3%A9"), true},
		{"query with plus and bad escape", get("/x?y=a+b&z=%zz"), true},
		{"double slash", get("//double//slash"), true},
		{"path params", get("/p;v=1/q:r@s$t&u+v,w=x"), true},
		{"parentheses", get("/wiki/Foo_(bar)"), true},
		{"sub-delims", get("/a!b*c'd"), true},
		{"brackets", get("/[v]"), true},
		{"empty query", get("/a?"), true},
		{"question mark in query", get("/a?b?c"), true},
		{"HEAD", "HEAD /h?x HTTP/1.1\r\nHost: example.com\r\n\r\n", true},
		{"repeated fields", "GET / HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nx-multi: b\r\nx-lower-case: v\r\n\r\n", true},
		{"Content-Length 0", "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", true},
		{"Connection keep-alive", "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", true},
		{"Connection close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", true},
		{"tab, spaces and obs-text", "GET / HTTP/1.1\r\nHost: h\r\nX-Tab: a\tb\r\nX-Sp:   v  \r\nX-Utf: caf\xc3\xa9\r\n\r\n", true},
		{"empty value", "GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\n\r\n", true},
		{"host with port and case", "GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", true},
		{"IPv6 host", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", true},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", false},
		{"bare LF lines", "GET /lf HTTP/1.1\nHost: h\n\n", false},
		{"bare LF request line", "GET /lf1 HTTP/1.1\nHost: h\r\n\r\n", false},
		{"bare LF last field", "GET /lf2 HTTP/1.1\r\nHost: h\n\r\n", false},
		{"bare LF blank line", "GET /lf3 HTTP/1.1\r\nHost: h\r\n\n", false},
		{"bare LF between fields", "GET /lf4 HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n", false},
		{"fragment", get("/a#frag"), true},
		{"HTTP/1.0", "GET /old HTTP/1.0\r\n\r\n", false},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", false},
		{"Upgrade h2c", "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			method, _, _ := strings.Cut(tt.req, " ")
			// Well under the 5s ReadHeaderTimeout: net/http answers these
			// at once, and so must the lane.
			ctx, cancel := context.WithTimeout(testCtx(t), 3*time.Second)
			defer cancel()
			do := func(addr string) (*http.Response, string) {
				rc := dialRaw(t, ctx, addr)
				rc.send(tt.req)
				return rc.response(method)
			}
			want, wantBody := do(ref.Listener.Addr().String())
			got, gotBody := do(ls.addr)
			if got.StatusCode != want.StatusCode || gotBody != wantBody || got.Header.Get("X-Describe") != want.Header.Get("X-Describe") {
				t.Errorf("LoopServer answered %d\n%s%s\nnet/http answered %d\n%s%s", got.StatusCode,
					gotBody, got.Header.Get("X-Describe"), want.StatusCode, wantBody, want.Header.Get("X-Describe"))
			}
			if lane := got.Header.Get("X-Lane") == "1"; lane != tt.lane {
				t.Errorf("served by the lane: %t, want %t", lane, tt.lane)
			}
		})
	}
}

func TestLoopH2C(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	for _, tc := range []struct{ method, body, want string }{
		{"GET", "", `GET /h2 proto=2 lane=false body=""`},
		{"POST", "data", `POST /h2 proto=2 lane=false body="data"`},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, ls.url()+"/h2", strings.NewReader(tc.body))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.ProtoMajor != 2 || string(b) != tc.want {
			t.Errorf("%s: %s %q, want HTTP/2.0 %q", tc.method, res.Proto, b, tc.want)
		}
	}
	if n := ls.states.handOffs(); n != 1 {
		t.Errorf("%d hand-offs, want 1 (one HTTP/2 connection)", n)
	}
}

func TestLoopUpgradeHandedOff(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			echoHandler(w, r)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		io.WriteString(conn, "echo:"+line)
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	// A lane request first: the upgrade comes mid-connection.
	rc.send("GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
	if _, body := rc.response("GET"); !strings.Contains(body, "lane=true") {
		t.Fatalf("first request: %q, want it served by the lane", body)
	}
	rc.send("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	res, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v, want 101", res, err)
	}
	rc.send("ping\n")
	line, err := rc.br.ReadString('\n')
	if err != nil || line != "echo:ping\n" {
		t.Errorf("after the upgrade got %q %v, want the echo", line, err)
	}
	if n := ls.states.handOffs(); n != 1 {
		t.Errorf("%d hand-offs, want 1", n)
	}
}

// TestLoopHijackedConnHalfCloses: a connection handed off to net/http and
// hijacked (every upgrade) can still be half-closed, as the proxy's tunnel
// does (upgrade.go closeWrite), and net/http's own CloseWrite on error
// answers works.
func TestLoopHijackedConnHalfCloses(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	got := make(chan string, 1)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := "(handler failed)"
		defer func() { got <- rest }()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\nbye")
		cw, ok := conn.(interface{ CloseWrite() error })
		if !ok {
			t.Errorf("hijacked connection %T cannot half-close", conn)
			return
		}
		if err := cw.CloseWrite(); err != nil {
			t.Errorf("CloseWrite: %v", err)
			return
		}
		b, _ := io.ReadAll(brw) // the client can still send
		rest = string(b)
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /up HTTP/1.1\r\nHost: a\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
	res, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	b, err := io.ReadAll(rc.br)
	if err != nil || string(b) != "bye" {
		t.Fatalf("read %q %v, want \"bye\" then EOF", b, err)
	}
	rc.send("after")
	rc.c.(*net.TCPConn).CloseWrite()
	select {
	case s := <-got:
		if s != "after" {
			t.Errorf("server read %q after its half-close, want \"after\"", s)
		}
	case <-ctx.Done():
		t.Fatal("handler never finished")
	}
}

func TestLoopResponseFraming(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		method    string
		handler   func(t *testing.T, w http.ResponseWriter)
		status    int
		clen      string // the Content-Length field, "" for none
		chunked   bool
		body      string
		trailer   http.Header
		keepAlive bool
	}{
		{name: "Content-Length", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}, status: 200, clen: "5", body: "hello", keepAlive: true},
		{name: "no Content-Length is chunked", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			io.WriteString(w, "hel")
			w.(http.Flusher).Flush()
			io.WriteString(w, "lo")
		}, status: 200, chunked: true, body: "hello", keepAlive: true},
		{name: "nothing written", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {},
			status: 200, clen: "0", keepAlive: true},
		{name: "status only", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.WriteHeader(http.StatusCreated)
		}, status: 201, clen: "0", keepAlive: true},
		{name: "interim status ignored", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusAccepted)
			w.WriteHeader(http.StatusTeapot) // superfluous
			io.WriteString(w, "x")
		}, status: 202, chunked: true, body: "x", keepAlive: true},
		{name: "204", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.WriteHeader(http.StatusNoContent)
			if _, err := io.WriteString(w, "x"); !errors.Is(err, http.ErrBodyNotAllowed) {
				t.Errorf("Write on a 204: %v, want ErrBodyNotAllowed", err)
			}
		}, status: 204, keepAlive: true},
		{name: "304", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		}, status: 304, keepAlive: true},
		{name: "HEAD keeps Content-Length", method: "HEAD", handler: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Content-Length", "5")
			if n, err := io.WriteString(w, "hello"); n != 5 || err != nil {
				t.Errorf("Write on HEAD: %d %v, want 5 nil", n, err)
			}
		}, status: 200, clen: "5", keepAlive: true},
		{name: "HEAD without Content-Length", method: "HEAD", handler: func(t *testing.T, w http.ResponseWriter) {
			io.WriteString(w, "hello")
		}, status: 200, keepAlive: true},
		{name: "announced trailers", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Trailer", "X-Sum, X-Count")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "abc")
			w.Header().Set("X-Count", "1")
		}, status: 200, chunked: true, body: "body", trailer: http.Header{"X-Sum": {"abc"}, "X-Count": {"1"}}, keepAlive: true},
		{name: "TrailerPrefix trailers", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			io.WriteString(w, "body")
			w.Header().Set(http.TrailerPrefix+"X-Late", "v")
		}, status: 200, chunked: true, body: "body", trailer: http.Header{"X-Late": {"v"}}, keepAlive: true},
		{name: "handler says Connection close", method: "GET", handler: func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Connection", "close")
			w.Header().Set("Content-Length", "2")
			io.WriteString(w, "ok")
		}, status: 200, clen: "2", body: "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/next" {
					io.WriteString(w, "next")
					return
				}
				tt.handler(t, w)
			}), nil)
			rc := dialRaw(t, ctx, ls.addr)
			// The next request is pipelined: its answer must start right
			// where this one's framing says it ends.
			rc.send(tt.method + " /t HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
			res, body := rc.response(tt.method)
			if res.StatusCode != tt.status || body != tt.body {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, body, tt.status, tt.body)
			}
			if got := res.Header.Get("Content-Length"); got != tt.clen {
				t.Errorf("Content-Length %q, want %q", got, tt.clen)
			}
			if chunked := slices.Equal(res.TransferEncoding, []string{"chunked"}); chunked != tt.chunked {
				t.Errorf("Transfer-Encoding %q, want chunked %t", res.TransferEncoding, tt.chunked)
			}
			if tt.trailer != nil && !maps.EqualFunc(res.Trailer, tt.trailer, slices.Equal) {
				t.Errorf("trailers %v, want %v", res.Trailer, tt.trailer)
			}
			if tt.keepAlive {
				if res.Close {
					t.Errorf("Connection: close on a keep-alive answer")
				}
				if _, next := rc.response("GET"); next != "next" {
					t.Errorf("pipelined answer %q, want \"next\"", next)
				}
			} else {
				rc.expectClosed(5 * time.Second)
			}
		})
	}
}

func TestLoopTrailersNetHTTPClient(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		io.WriteString(w, "payload")
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"X-Checksum", "42")
	}), nil)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ls.url()+"/", nil)
	res, err := ls.client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || string(b) != "payload" {
		t.Fatalf("body %q %v", b, err)
	}
	want := http.Header{"Grpc-Status": {"0"}, "X-Checksum": {"42"}}
	if !maps.EqualFunc(res.Trailer, want, slices.Equal) {
		t.Errorf("trailers %v, want %v", res.Trailer, want)
	}
}

func TestLoopHeaderValueNewlines(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Inject", "a\r\nSet-Cookie: evil=1")
		io.WriteString(w, "ok")
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	res, body := rc.response("GET")
	if body != "ok" || res.Header.Get("Set-Cookie") != "" || res.Header.Get("X-Inject") != "a  Set-Cookie: evil=1" {
		t.Errorf("header %v body %q: a CR or LF in a value must become a space", res.Header, body)
	}
}

// TestLoopDropsInvalidHeaderNames: net/http drops response fields whose
// name is not a token rather than let them split the head.
func TestLoopDropsInvalidHeaderNames(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Evil\r\nSet-Cookie"] = []string{"pwned=1"}
		w.Header()["Bad Name"] = []string{"v"}
		io.WriteString(w, "ok")
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	head := rc.head()
	if strings.Contains(head, "\r\nSet-Cookie:") || strings.Contains(head, "Bad Name") || strings.Contains(head, "X-Evil") {
		t.Errorf("fields with invalid names reached the client:\n%s", head)
	}
}

func TestLoopConnectionClose(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n")
	res, body := rc.response("GET")
	if !res.Close || !strings.Contains(body, "lane=true") { // res.Close: the response said Connection: close
		t.Errorf("got Close=%t %q, want Connection: close from the lane", res.Close, body)
	}
	rc.expectClosed(5 * time.Second)
}

func TestLoopHandlerPanics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(w http.ResponseWriter)
		logged  bool
	}{
		{name: "abort after a flushed chunk", handler: func(w http.ResponseWriter) {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}},
		{name: "abort inside a declared length", handler: func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}},
		{name: "abort before anything was flushed", handler: func(w http.ResponseWriter) {
			io.WriteString(w, "partial")
			panic(http.ErrAbortHandler)
		}},
		{name: "other panic is logged", handler: func(w http.ResponseWriter) {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic("boom")
		}, logged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tt.handler(w)
			}), nil)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ls.url()+"/", nil)
			res, err := ls.client(t).Do(req)
			if err == nil {
				b, rerr := io.ReadAll(res.Body)
				res.Body.Close()
				if rerr == nil {
					t.Fatalf("client read a clean body %q after the handler panicked", b)
				}
			}
			if got := strings.Contains(ls.logs.String(), "panic serving"); got != tt.logged {
				t.Errorf("panic logged: %t, want %t; log:\n%s", got, tt.logged, ls.logs.String())
			}
		})
	}
}

func TestLoopShortBodyClosesConnection(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "short")
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	res, body, err := readRawResponse(rc.br, "GET")
	if !errors.Is(err, io.ErrUnexpectedEOF) || body != "short" || res.StatusCode != 200 {
		t.Errorf("got %v %q %v, want the 5 bytes then an unexpected EOF", res, body, err)
	}
}

// TestLoopLongBodyClosesConnection: a handler writing past its
// Content-Length gets ErrContentLength, and the connection is not used
// again (its next request is never answered).
func TestLoopLongBodyClosesConnection(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		if _, err := io.WriteString(w, "hello"); !errors.Is(err, http.ErrContentLength) {
			t.Errorf("Write past Content-Length: %v, want ErrContentLength", err)
		}
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	if res, body, err := readRawResponse(rc.br, "GET"); err == nil && body != "hel" {
		t.Errorf("got %d %q, want at most the 3 declared bytes", res.StatusCode, body)
	}
	rc.expectClosed(5 * time.Second)
}

func TestLoopIdleTimeout(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), func(srv *http.Server) { srv.IdleTimeout = 200 * time.Millisecond })
	rc := dialRaw(t, ctx, ls.addr)
	for range 2 {
		rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		rc.response("GET")
	}
	start := time.Now()
	rc.expectClosed(5 * time.Second)
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("idle connection closed after %v, before the 200ms idle timeout", d)
	}
	waitFor(t, ctx, "StateClosed", func() bool { return hasState(ls.states.events(), http.StateClosed) })
}

// TestLoopReadHeaderTimeout: a connection that sends no request, or only
// part of a head, is closed after ReadHeaderTimeout as net/http alone
// closes it. Both servers run at once so that a loaded machine slows both.
func TestLoopReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	const rht = time.Second
	tests := []struct{ name, send string }{
		{"nothing sent", ""},
		{"partial head", "GET / HTTP/1.1\r\nHost: a\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			handled := make(chan struct{}, 2)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handled <- struct{}{} })
			ls := startLoop(t, h, func(srv *http.Server) { srv.ReadHeaderTimeout = rht })
			ref := httptest.NewUnstartedServer(h)
			ref.Config.ReadHeaderTimeout = rht
			ref.Start()
			t.Cleanup(ref.Close)
			closedAfter := func(addr string) <-chan time.Duration {
				rc := dialRaw(t, ctx, addr)
				start := time.Now()
				if tt.send != "" {
					rc.send(tt.send)
				}
				ch := make(chan time.Duration, 1)
				go func() {
					_, err := rc.br.ReadByte()
					if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
						ch <- -1
						return
					}
					ch <- time.Since(start)
				}()
				return ch
			}
			laneC, refC := closedAfter(ls.addr), closedAfter(ref.Listener.Addr().String())
			lane, ref2 := <-laneC, <-refC
			if lane < 0 || ref2 < 0 {
				t.Fatalf("a connection was answered or never closed (lane %v, net/http %v)", lane, ref2)
			}
			if lane < rht*3/4 || lane > ref2+rht/2 {
				t.Errorf("LoopServer closed the connection after %v, net/http alone after %v (ReadHeaderTimeout %v)", lane, ref2, rht)
			}
			if len(handled) != 0 {
				t.Errorf("a handler ran")
			}
		})
	}
}

func TestLoopConnStateSequence(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	rc := dialRaw(t, ctx, ls.addr)
	for range 3 {
		rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		rc.response("GET")
	}
	rc.c.Close()
	waitFor(t, ctx, "StateClosed", func() bool { return hasState(ls.states.events(), http.StateClosed) })
	ev := ls.states.events()
	var got []http.ConnState
	for _, e := range ev {
		got = append(got, e.state)
		if e.conn != ev[0].conn {
			t.Errorf("ConnState called with %T %p and %T %p: want one connection", ev[0].conn, ev[0].conn, e.conn, e.conn)
		}
	}
	want := []http.ConnState{http.StateNew, http.StateIdle, http.StateIdle, http.StateIdle, http.StateClosed}
	if !slices.Equal(got, want) {
		t.Errorf("ConnState sequence %v, want %v", got, want)
	}
}

// blockingLane serves echoHandler, except /slow, which waits for release
// (or the test's end) after signaling arrived.
func blockingLane(t *testing.T, ctx context.Context) (ls *laneServer, arrived <-chan struct{}, release func()) {
	arr := make(chan struct{}, 1)
	rel := make(chan struct{})
	var once sync.Once
	ls = startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arr <- struct{}{}
			select {
			case <-rel:
			case <-ctx.Done():
			}
		}
		echoHandler(w, r)
	}), nil)
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release) // runs before startLoop's Shutdown
	return ls, arr, release
}

// startShutdown sends a slow request, waits for it to reach the handler,
// then starts Shutdown and waits for Serve to return.
func startShutdown(t *testing.T, ctx context.Context, ls *laneServer, arrived <-chan struct{}) (busy *rawClient, shut <-chan error) {
	t.Helper()
	busy = dialRaw(t, ctx, ls.addr)
	busy.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("request never reached the handler")
	}
	ch := make(chan error, 1)
	go func() { ch <- ls.f.Shutdown(ctx) }()
	select {
	case <-ls.served: // Shutdown closed the listener: it is shutting down
	case <-ctx.Done():
		t.Fatal("Serve did not return")
	}
	if !errors.Is(ls.serveErr, http.ErrServerClosed) {
		t.Errorf("Serve returned %v, want http.ErrServerClosed", ls.serveErr)
	}
	return busy, ch
}

// TestLoopConnStateHandOff: after a hand-off net/http reports the
// connection's states on the *replayConn it got, which unwraps (NetConn)
// to the connection the lane reported StateNew for, and ends it with
// StateClosed.
func TestLoopConnStateHandOff(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	rc.response("GET")
	rc.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
	rc.response("POST")
	rc.c.Close()
	waitFor(t, ctx, "StateClosed from the fallback", func() bool {
		for _, e := range ls.states.events() {
			if _, ok := e.conn.(*replayConn); ok && e.state == http.StateClosed {
				return true
			}
		}
		return false
	})
	ev := ls.states.events()
	raw := ev[0].conn
	var lane, fallback []http.ConnState
	for _, e := range ev {
		switch c := e.conn.(type) {
		case *replayConn:
			// A dup of the loop's descriptor: the same socket.
			if c.NetConn().RemoteAddr().String() != raw.RemoteAddr().String() {
				t.Errorf("fallback reported a connection from %v, want %v", c.NetConn().RemoteAddr(), raw.RemoteAddr())
			}
			fallback = append(fallback, e.state)
		default:
			if c != raw {
				t.Errorf("states of two connections for one client")
			}
			lane = append(lane, e.state)
		}
	}
	// The lane's account ends (Closed) where net/http's begins (New).
	if want := []http.ConnState{http.StateNew, http.StateIdle, http.StateClosed}; !slices.Equal(lane, want) {
		t.Errorf("lane states %v, want %v", lane, want)
	}
	if want := []http.ConnState{http.StateNew, http.StateActive, http.StateIdle, http.StateClosed}; !slices.Equal(fallback, want) {
		t.Errorf("fallback states %v, want %v", fallback, want)
	}
}

func TestLoopShutdown(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls, arrived, release := blockingLane(t, ctx)
	idle := dialRaw(t, ctx, ls.addr)
	idle.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	idle.response("GET")

	busy, shut := startShutdown(t, ctx, ls, arrived)
	// An idle connection closes at once, long before the 1 minute
	// IdleTimeout, though a request is still in flight.
	if err := idle.closedWithin(2 * time.Second); err != nil {
		t.Errorf("idle lane connection: %v", err)
	}
	if c, err := net.DialTimeout("tcp", ls.addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial after Shutdown succeeded")
	}
	select {
	case err := <-shut:
		t.Errorf("Shutdown returned %v while a request was in flight", err)
	default:
	}
	release()
	res, body := busy.response("GET")
	if res.StatusCode != 200 || !strings.Contains(body, "lane=true") || !res.Close {
		t.Errorf("in-flight request got %d Close=%t %q, want 200 with Connection: close", res.StatusCode, res.Close, body)
	}
	busy.expectClosed(2 * time.Second)
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown did not return")
	}
}

// TestLoopShutdownClosesHandedOffIdleConns: a connection LoopServer gave
// to net/http and idle there is closed at Shutdown as net/http alone would
// close it, not only once the lane's own requests are done.
func TestLoopShutdownClosesHandedOffIdleConns(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ls, arrived, release := blockingLane(t, ctx)
	idle := dialRaw(t, ctx, ls.addr) // idle in net/http after a POST
	idle.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
	idle.response("POST")

	busy, shut := startShutdown(t, ctx, ls, arrived)
	if err := idle.closedWithin(2 * time.Second); err != nil {
		t.Errorf("idle handed-off connection during Shutdown: %v", err)
	}
	release()
	busy.response("GET")
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown did not return")
	}
}

func TestLoopShutdownDeadline(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	arrived := make(chan struct{})
	release := make(chan struct{})
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-release:
		case <-ctx.Done():
		}
	}), nil)
	t.Cleanup(func() { close(release) }) // before startLoop's cleanup
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	<-arrived
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := ls.f.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stuck handler: %v, want context.DeadlineExceeded", err)
	}
}

func TestLoopShutdownNeverServed(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	f := NewLoopServer(&http.Server{Handler: http.HandlerFunc(echoHandler)}, LoopOptions{})
	if err := f.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown of a server never served: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := f.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v, want http.ErrServerClosed", err)
	}
}

// TestLoopProxy runs the proxy behind a LoopServer, as cmd/agent does: the
// lane carries GET and HEAD, the fallback the rest.
func TestLoopProxy(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	up := newUpstream(t, "up", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Length", fmt.Sprint(len(r.Method)+len(b)+len(r.URL.RequestURI())))
		io.WriteString(w, r.Method+r.URL.RequestURI()+string(b))
	})
	p, err := New(Config{}, []Route{{Balancer: newBalancer(t, "web", up.instance())}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	ls := startLoop(t, p, nil)
	client := ls.client(t)
	for _, tc := range []struct{ method, path, body, want string }{
		{"GET", "/a%20b?x=1", "", "GET/a%20b?x=1"},
		{"HEAD", "/h", "", ""},
		{"POST", "/p", "data", "POST/pdata"},
		{"GET", "/again", "", "GET/again"},
	} {
		req, _ := http.NewRequestWithContext(ctx, tc.method, ls.url()+tc.path, strings.NewReader(tc.body))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != 200 || string(b) != tc.want {
			t.Errorf("%s %s: %d %q %v, want 200 %q", tc.method, tc.path, res.StatusCode, b, err, tc.want)
		}
		if tc.method == "HEAD" && res.ContentLength != int64(len("HEAD/h")) {
			t.Errorf("HEAD Content-Length %d, want %d", res.ContentLength, len("HEAD/h"))
		}
	}
	if n := ls.states.handOffs(); n != 1 {
		t.Errorf("%d hand-offs, want 1 (at the POST)", n)
	}
}

func hasState(ev []connEvent, st http.ConnState) bool {
	return slices.ContainsFunc(ev, func(e connEvent) bool { return e.state == st })
}
