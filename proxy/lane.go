package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// FastServer serves the plain HTTP/1.1 requests of a cleartext listener on
// one goroutine per connection, with nothing else on the request path, and
// hands every connection that asks for more to a net/http Server, which
// serves it from then on.
//
// net/http's server starts a goroutine per request to watch the connection
// while the handler runs, parses into several allocations, and arms and
// disarms deadlines around each request; on a 2-core machine that is most
// of what a proxied request costs (bench/README.md). FastServer takes the
// requests that need none of it: GET and HEAD over HTTP/1.1, with no body,
// no upgrade and no Expect. The first request that is anything else
// (a body, an upgrade, HTTP/2 with prior knowledge, HTTP/1.0, a head over
// 8 KiB or that it would have to refuse) makes it give the connection, with
// the bytes it read and did not answer, to the fallback server: that
// request is then served, or refused, exactly as net/http alone would.
//
// What it gives up: a client that closes its connection while its request
// waits on an instance is noticed when the answer is written, not at once.
type FastServer struct {
	srv *http.Server // the fallback, whose Handler, timeouts and ConnState are used
	ho  *handoffListener

	mu       sync.Mutex
	conns    map[*laneConn]struct{}
	ln       net.Listener
	shutting atomic.Bool
	wg       sync.WaitGroup
}

// NewFastServer returns a FastServer for srv's handler, limits and
// ConnState hook. Serve it instead of srv; Shutdown shuts srv down too.
func NewFastServer(srv *http.Server) *FastServer {
	return &FastServer{srv: srv, conns: make(map[*laneConn]struct{})}
}

// laneBufSize is the read buffer of a connection: a head that does not fit
// goes to the fallback.
const laneBufSize = 8 << 10

// Serve accepts connections on ln until it is closed or Shutdown is called.
func (f *FastServer) Serve(ln net.Listener) error {
	f.mu.Lock()
	if f.shutting.Load() {
		f.mu.Unlock()
		return http.ErrServerClosed
	}
	f.ln = ln
	f.ho = &handoffListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	f.mu.Unlock()
	srvErr := make(chan error, 1)
	go func() { srvErr <- f.srv.Serve(f.ho) }()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.shutting.Load() {
				return http.ErrServerClosed
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				// Out of file descriptors and the like: back off as
				// net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			f.ho.close()
			<-srvErr
			return err
		}
		delay = 0
		lc := &laneConn{f: f, conn: c}
		f.mu.Lock()
		if f.shutting.Load() {
			f.mu.Unlock()
			c.Close()
			return http.ErrServerClosed
		}
		f.conns[lc] = struct{}{}
		f.wg.Add(1)
		f.mu.Unlock()
		go lc.serve()
	}
}

// Shutdown stops accepting, closes idle connections, lets the requests
// being served finish (their connections then close), and shuts the
// fallback server down, all bounded by ctx.
func (f *FastServer) Shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.shutting.Store(true)
	if f.ln != nil {
		f.ln.Close()
	}
	for lc := range f.conns {
		if lc.idle.Load() {
			lc.conn.SetReadDeadline(time.Unix(1, 0)) // wakes it: it sees shutting and closes
		}
	}
	f.mu.Unlock()
	// The fallback closes its idle connections and waits for its busy ones
	// meanwhile (it closes the hand-off listener: no more hand-offs).
	srvErr := make(chan error, 1)
	go func() { srvErr <- f.srv.Shutdown(ctx) }()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if serr := <-srvErr; err == nil {
		err = serr
	}
	return err
}

// handoffListener feeds the connections FastServer gives up to the
// fallback server.
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error { l.close(); return nil }
func (l *handoffListener) close()       { l.once.Do(func() { close(l.done) }) }
func (l *handoffListener) Addr() net.Addr {
	return l.addr
}

// give hands c to the fallback server; false if it is shut down.
func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

// replayConn is a connection whose first bytes were already read: Read
// returns them first.
type replayConn struct {
	net.Conn
	pending []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes the connection underneath when it can, so that
// net/http's answer to a request it refuses reaches the client before the
// close (without it, unread input makes the close a reset).
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn returns the connection underneath, for hooks that look through
// wrappers (httpguard.ConnState).
func (c *replayConn) NetConn() net.Conn { return c.Conn }

// laneConn is one client connection served by FastServer.
type laneConn struct {
	f      *FastServer
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	remote string
	idle   atomic.Bool // waiting for a request: Shutdown may wake it
	w      laneResponse

	// Reused from request to request (see parse).
	req       http.Request
	url       url.URL
	reqHeader http.Header
	vals      []string
}

func (lc *laneConn) serve() {
	f := lc.f
	handedOff, reported := false, false
	defer func() {
		if !handedOff {
			lc.conn.Close()
			if cs := f.srv.ConnState; cs != nil && !reported {
				cs(lc.conn, http.StateClosed)
			}
		}
		f.mu.Lock()
		delete(f.conns, lc)
		f.mu.Unlock()
		f.wg.Done()
	}()
	if cs := f.srv.ConnState; cs != nil {
		cs(lc.conn, http.StateNew)
	}
	lc.br = bufio.NewReaderSize(lc.conn, laneBufSize)
	lc.bw = bufio.NewWriterSize(lc.conn, 4<<10)
	lc.remote = lc.conn.RemoteAddr().String()
	lc.w.header = make(http.Header, 8)
	first := true
	for {
		req, ok, err := lc.readRequest(first)
		if err != nil {
			return
		}
		if !ok {
			// net/http reports the connection from here on, as a new one
			// (its wrapper): the lane's account of it ends first, so that
			// hooks counting New against Closed stay balanced.
			reported = true
			if cs := f.srv.ConnState; cs != nil {
				cs(lc.conn, http.StateClosed)
			}
			handedOff = lc.handOff()
			return
		}
		first = false
		if !lc.serveRequest(req) {
			return
		}
		if cs := f.srv.ConnState; cs != nil {
			cs(lc.conn, http.StateIdle)
		}
	}
}

// handOff gives the connection and its unread bytes to the fallback.
func (lc *laneConn) handOff() bool {
	lc.conn.SetReadDeadline(time.Time{})
	var pending []byte
	if n := lc.br.Buffered(); n > 0 {
		b, _ := lc.br.Peek(n)
		pending = bytes.Clone(b)
	}
	return lc.f.ho.give(&replayConn{Conn: lc.conn, pending: pending})
}

// readRequest waits for the next request head and parses it. ok is false
// when the request is not one FastServer serves: the connection then goes
// to the fallback. err ends the connection (closed, timed out, shutting
// down).
func (lc *laneConn) readRequest(first bool) (*http.Request, bool, error) {
	srv := lc.f.srv
	if lc.br.Buffered() == 0 {
		lc.idle.Store(true)
		wait := srv.IdleTimeout
		if first || wait <= 0 {
			wait = srv.ReadHeaderTimeout
		}
		if wait > 0 {
			lc.conn.SetReadDeadline(time.Now().Add(wait))
		} else {
			lc.conn.SetReadDeadline(time.Time{})
		}
		// After the deadline is set: Shutdown, which sets shutting before
		// it cuts idle connections' deadlines, cannot be missed.
		if lc.f.shutting.Load() {
			return nil, false, http.ErrServerClosed
		}
		_, err := lc.br.Peek(1)
		lc.idle.Store(false)
		if err != nil {
			return nil, false, err
		}
		if lc.f.shutting.Load() {
			return nil, false, http.ErrServerClosed
		}
	}
	end := -1
	armed := false
	for {
		buf, _ := lc.br.Peek(lc.br.Buffered())
		if end = bytes.Index(buf, crlfcrlf); end >= 0 {
			break
		}
		if len(buf) >= lc.maxHead() || (len(buf) > 0 && buf[0] != 'G' && buf[0] != 'H') ||
			bytes.Contains(buf, []byte("\n\n")) || bytes.Contains(buf, []byte("\n\r\n")) {
			// Too large, not GET/HEAD, or lines ending in a bare LF: the
			// fallback's.
			return nil, false, nil
		}
		if !armed && srv.ReadHeaderTimeout > 0 {
			// The head did not come in one piece: bound the rest.
			lc.conn.SetReadDeadline(time.Now().Add(srv.ReadHeaderTimeout))
			armed = true
		}
		if _, err := lc.br.Peek(len(buf) + 1); err != nil {
			// A partial head then EOF or the header timeout: net/http
			// closes such a connection without an answer too.
			return nil, false, err
		}
	}
	if end+4 > lc.maxHead() {
		return nil, false, nil
	}
	raw, _ := lc.br.Peek(end + 4)
	req, ok := lc.parse(raw)
	if !ok {
		return nil, false, nil
	}
	lc.br.Discard(end + 4)
	return req, true, nil
}

var crlfcrlf = []byte("\r\n\r\n")

// maxHead is the largest head the lane reads: its buffer, or the server's
// MaxHeaderBytes when smaller, so that net/http refuses what it would.
func (lc *laneConn) maxHead() int {
	if m := lc.f.srv.MaxHeaderBytes; m > 0 && m < laneBufSize {
		return m
	}
	return laneBufSize
}

// parse builds the request from its raw head (up to and with the blank
// line); ok is false for anything FastServer leaves to the fallback.
func (lc *laneConn) parse(raw []byte) (*http.Request, bool) {
	if !cleanHead(raw) {
		return nil, false
	}
	head := string(raw[:len(raw)-2]) // one allocation holds every name and value
	// The header map, its values' backing, the request and its URL are the
	// connection's, reused: the handler is done with the previous request.
	eol := strings.IndexByte(head, '\n')
	line := head[:eol-1]
	var method string
	switch {
	case strings.HasPrefix(line, "GET "):
		method, line = http.MethodGet, line[4:]
	case strings.HasPrefix(line, "HEAD "):
		method, line = http.MethodHead, line[5:]
	default:
		return nil, false
	}
	target, ok := strings.CutSuffix(line, " HTTP/1.1")
	if !ok || target == "" || target[0] != '/' || strings.IndexByte(target, ' ') >= 0 {
		return nil, false
	}
	s := head[eol+1:] // the fields, each ending with CRLF
	n := strings.Count(s, "\r\n")
	h := lc.reqHeader
	if h == nil || n > 32 {
		h = make(http.Header, n)
		if n <= 32 {
			lc.reqHeader = h
		}
	} else {
		clear(h)
	}
	if cap(lc.vals) < n {
		lc.vals = make([]string, max(n, 16))
	}
	vals := lc.vals[:n] // the values' backing, as net/http does
	clear(vals)
	var host string
	hosts := 0
	closeConn := false
	for s != "" {
		key, v, rest, ok := nextField(s)
		if !ok {
			return nil, false
		}
		s = rest
		switch key {
		case "Host":
			host = v
			hosts++
			continue // net/http keeps it in Request.Host only
		case "Content-Length":
			if v != "0" {
				return nil, false
			}
		case "Transfer-Encoding", "Upgrade", "Expect", "Http2-Settings":
			return nil, false
		case "Connection":
			if hasToken([]string{v}, "upgrade") {
				return nil, false
			}
			if hasToken([]string{v}, "close") {
				closeConn = true
			}
		case "Content-Type":
			if strings.HasPrefix(v, "application/grpc") {
				return nil, false
			}
		}
		vals = addValue(h, vals, key, v)
	}
	if hosts != 1 || !validHost(host) {
		return nil, false
	}
	u, err := parseTarget(target, &lc.url)
	if err != nil {
		return nil, false
	}
	r := &lc.req
	*r = http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Body:       http.NoBody,
		Host:       host,
		RemoteAddr: lc.remote,
		RequestURI: target,
		Close:      closeConn,
	}
	return r, true
}

// nextField cuts the first field line off s, a head's fields each ending
// in CRLF (cleanHead has vouched for the bytes), and returns its canonical
// name, its trimmed value and the rest; ok is false for a line that is not
// a valid field.
func nextField(s string) (key, value, rest string, ok bool) {
	i := strings.Index(s, "\r\n")
	f, rest := s[:i], s[i+2:]
	colon := strings.IndexByte(f, ':')
	if colon <= 0 || !httpguts.ValidHeaderFieldName(f[:colon]) {
		return "", "", "", false
	}
	return textproto.CanonicalMIMEHeaderKey(f[:colon]), textproto.TrimString(f[colon+1:]), rest, true
}

// addValue appends v to h[key]. A key's first value takes its one-element
// slice from vals, a backing array for every value of the head (net/http's
// way: one allocation for all); it returns what is left of vals.
func addValue(h http.Header, vals []string, key, v string) []string {
	if vv, ok := h[key]; ok {
		h[key] = append(vv, v)
		return vals
	}
	vals[0] = v
	h[key] = vals[:1:1]
	return vals[1:]
}

// cleanHead reports whether every line of raw ends with CRLF, no CR or LF
// stands alone, no other control byte but tab appears, and no field is
// folded: the heads net/http would read the same way.
func cleanHead(raw []byte) bool {
	for i, c := range raw {
		switch {
		case c == '\r':
			if i+1 >= len(raw) || raw[i+1] != '\n' {
				return false
			}
		case c == '\n':
			if i == 0 || raw[i-1] != '\r' {
				return false
			}
			if i+1 < len(raw) && (raw[i+1] == ' ' || raw[i+1] == '\t') {
				return false // obs-fold
			}
		case c < 0x20 && c != '\t', c == 0x7f:
			return false
		}
	}
	return true
}

// parseTarget parses an origin-form request target; plain ones without
// escapes take no parser.
// u is where a plain target's URL is stored.
func parseTarget(t string, u *url.URL) (*url.URL, error) {
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case c == '?':
			if i == len(t)-1 || strings.ContainsAny(t[i+1:], "#") {
				// "/?" has ForceQuery; a fragment is net/url's to split.
				return url.ParseRequestURI(t)
			}
			*u = url.URL{Path: t[:i], RawQuery: t[i+1:]}
			return u, nil
		case !plainPath[c]:
			// Escapes and characters net/url would escape: it keeps
			// RawPath so the target goes upstream as it came.
			return url.ParseRequestURI(t)
		}
	}
	*u = url.URL{Path: t}
	return u, nil
}

// plainPath holds the bytes a path may have for url.URL{Path: p} to give
// back p itself as its EscapedPath: those net/url does not escape in a
// path.
var plainPath = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~/$&+,:;=@" {
		t[c] = true
	}
	return t
}()

// validHost reports whether h is a host[:port] made of the characters a
// Host header may hold; anything else is the fallback's to refuse.
func validHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~:[]!$&'()*+,;=%", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// serveRequest runs the handler for req and finishes the response; false
// means the connection must close.
func (lc *laneConn) serveRequest(req *http.Request) (keep bool) {
	srv := lc.f.srv
	w := &lc.w
	w.reset(lc, req)
	if srv.WriteTimeout > 0 {
		lc.conn.SetWriteDeadline(time.Now().Add(srv.WriteTimeout))
	}
	defer func() {
		if v := recover(); v != nil {
			keep = false
			if v != http.ErrAbortHandler && srv.ErrorLog != nil {
				srv.ErrorLog.Printf("http: panic serving %s: %v", lc.remote, v)
			}
		}
	}()
	srv.Handler.ServeHTTP(w, req)
	return w.finish() && !req.Close && !lc.f.shutting.Load()
}

// laneResponse is FastServer's http.ResponseWriter: the head goes out with
// the first body bytes (or at the end), framed by the Content-Length the
// handler set, else chunked.
type laneResponse struct {
	lc       *laneConn
	req      *http.Request
	header   http.Header
	status   int
	headSent bool
	noBody   bool  // HEAD, 1xx, 204 and 304 answers carry no body
	chunked  bool  // the body goes out chunked
	clen     int64 // declared Content-Length, -1 if none
	written  int64
	close    bool // Connection: close was sent
	err      error
	scratch  []byte
}

func (w *laneResponse) reset(lc *laneConn, req *http.Request) {
	clear(w.header)
	*w = laneResponse{lc: lc, req: req, header: w.header, clen: -1, scratch: w.scratch[:0]}
}

// Header returns the response header map.
func (w *laneResponse) Header() http.Header { return w.header }

// WriteHeader sets the status; 1xx answers are not forwarded.
func (w *laneResponse) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return
	}
	if code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	w.status = code
}

// Write sends body bytes, the head first.
func (w *laneResponse) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		p = p[:w.clen-w.written]
		n, err := w.lc.bw.Write(p)
		w.written += int64(n)
		if err == nil {
			err = http.ErrContentLength
		}
		w.err = err
		return n, err
	}
	if w.chunked {
		if len(p) == 0 {
			return 0, nil
		}
		w.scratch = strconv.AppendInt(w.scratch[:0], int64(len(p)), 16)
		w.scratch = append(w.scratch, '\r', '\n')
		w.lc.bw.Write(w.scratch)
	}
	n, err := w.lc.bw.Write(p)
	w.written += int64(n)
	if w.chunked {
		_, err = w.lc.bw.WriteString("\r\n")
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

// FlushError sends what is buffered (the head included) to the client.
func (w *laneResponse) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.err != nil {
		return w.err
	}
	if err := w.lc.bw.Flush(); err != nil {
		w.err = err
	}
	return w.err
}

// Flush is FlushError without the error.
func (w *laneResponse) Flush() { _ = w.FlushError() }

// sendHead writes the status line and header fields. final says the
// handler is done, so a body never written has length 0.
func (w *laneResponse) sendHead(final bool) {
	w.headSent = true
	h := w.header
	code := w.status
	w.noBody = w.req.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	if cl, ok := h["Content-Length"]; ok && len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.clen = n
		} else {
			delete(h, "Content-Length")
		}
	} else if ok {
		delete(h, "Content-Length")
	}
	b := w.scratch[:0]
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(code)...)
	b = append(b, '\r', '\n')
	hasDate, hasClose := false, false
	for k, vv := range h {
		if vv == nil || strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue // net/http drops invalid names too
		}
		switch k {
		case "Date":
			hasDate = true
		case "Connection":
			hasClose = hasToken(vv, "close")
		case "Transfer-Encoding":
			continue // the framing is this writer's
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ':', ' ')
			b = appendFieldValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	if !hasDate {
		b = append(b, "Date: "...)
		b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
		b = append(b, '\r', '\n')
	}
	if !w.noBody && w.clen < 0 {
		if final {
			w.clen = 0
			b = append(b, "Content-Length: 0\r\n"...)
		} else {
			w.chunked = true
			b = append(b, "Transfer-Encoding: chunked\r\n"...)
		}
	}
	if w.req.Close || w.lc.f.shutting.Load() {
		if !hasClose {
			b = append(b, "Connection: close\r\n"...)
		}
		hasClose = true
	}
	w.close = hasClose
	b = append(b, '\r', '\n')
	if _, err := w.lc.bw.Write(b); err != nil {
		w.err = err
	}
	w.scratch = b[:0]
}

// appendFieldValue appends v with any CR or LF replaced by a space, as
// net/http does.
func appendFieldValue(b []byte, v string) []byte {
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		return append(b, v...)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// finish ends the response after the handler returned; false means the
// connection cannot carry another request.
func (w *laneResponse) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(true)
	}
	bw := w.lc.bw
	if w.chunked && w.err == nil {
		b := append(w.scratch[:0], "0\r\n"...)
		b = w.appendTrailers(b)
		b = append(b, '\r', '\n')
		if _, err := bw.Write(b); err != nil {
			w.err = err
		}
		w.scratch = b[:0]
	}
	if w.err == nil {
		w.err = bw.Flush()
	}
	if w.err != nil {
		return false
	}
	if !w.noBody && w.clen >= 0 && w.written != w.clen {
		return false // a short body: the client cannot find the next answer
	}
	return !w.close
}

// appendTrailers appends the trailer fields: those announced in the
// Trailer header and those set with http.TrailerPrefix.
func (w *laneResponse) appendTrailers(b []byte) []byte {
	h := w.header
	for _, list := range h["Trailer"] {
		for list != "" {
			var k string
			k, list, _ = strings.Cut(list, ",")
			k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k))
			if !httpguts.ValidHeaderFieldName(k) {
				continue
			}
			for _, v := range h[k] {
				b = append(b, k...)
				b = append(b, ':', ' ')
				b = appendFieldValue(b, v)
				b = append(b, '\r', '\n')
			}
		}
	}
	for k, vv := range h {
		if !strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k[len(http.TrailerPrefix):]) {
			continue
		}
		for _, v := range vv {
			b = append(b, k[len(http.TrailerPrefix):]...)
			b = append(b, ':', ' ')
			b = appendFieldValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	return b
}
