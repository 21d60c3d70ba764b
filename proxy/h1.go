package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshlb/meshlb/internal/h1"
	"golang.org/x/net/http/httpguts"
)

// h1Client sends HTTP/1.1 requests to instances on the calling goroutine.
//
// net/http's Transport runs every connection with a reader and a writer
// goroutine and hands each request and response between them and the
// caller: three goroutine switches per request, which on a busy 2-core
// machine cost more than the proxying itself (bench/README.md). h1Client
// writes the request and reads the response head itself, over keep-alive
// connections pooled per instance (last in, first out), and gives the
// connection back when the body has been read to its end.
//
// It carries only what can be resent safely: requests that are idempotent,
// with no body or a body held in memory, no upgrade, to instances reached in
// cleartext. A connection the instance closed while it sat idle is found on
// the first read and the request resent once on a fresh connection, as
// net/http does; every other failure is returned to the caller, which
// decides on retrying elsewhere. Everything else (streamed and
// non-idempotent bodies, upgrades, HTTP/2, TLS) goes through net/http's
// transports.
type h1Client struct {
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	headerTimeout time.Duration
	idleTimeout   time.Duration
	maxIdle       int
	maxHeader     int64

	pools sync.Map // instance host:port → *h1Pool
}

func newH1Client(cfg Config) *h1Client {
	return &h1Client{
		dial:          typedDialer(cfg.ConnectTimeout),
		headerTimeout: cfg.ResponseHeaderTimeout,
		idleTimeout:   cfg.IdleConnTimeout,
		maxIdle:       cfg.MaxIdleConnsPerHost,
		maxHeader:     1 << 20, // as the Transport's MaxResponseHeaderBytes
	}
}

// h1Pool holds one instance's idle connections.
type h1Pool struct {
	c     *h1Client
	addr  string
	mu    sync.Mutex
	idle  []*h1Conn // the most recently used last
	timer *time.Timer
}

// h1Conn is one connection to an instance.
type h1Conn struct {
	pool     *h1Pool
	conn     net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lr       io.LimitedReader // bounds the response head
	idleAt   time.Time
	reused   bool
	poisoned atomic.Bool // the request's context ended: deadlines are in the past
}

// errStaleConn marks a kept-alive connection the instance had closed
// before the request: nothing was answered, so it can be resent.
var errStaleConn = errors.New("proxy: kept-alive upstream connection closed by the instance")

func (c *h1Client) pool(addr string) *h1Pool {
	if p, ok := c.pools.Load(addr); ok {
		return p.(*h1Pool)
	}
	p, _ := c.pools.LoadOrStore(addr, &h1Pool{c: c, addr: addr})
	return p.(*h1Pool)
}

// probeAfter is how long a connection sits idle before it is probed for
// a close or stray bytes from the instance before reuse (see alive).
const probeAfter = time.Second

// get returns an idle connection to addr that has not outlived the idle
// timeout, or dials a new one (always, when fresh is set).
func (p *h1Pool) get(ctx context.Context, fresh bool) (*h1Conn, error) {
	now := time.Now()
	p.mu.Lock()
	for n := len(p.idle); n > 0 && !fresh; n = len(p.idle) {
		pc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		idle := now.Sub(pc.idleAt)
		if idle < p.c.idleTimeout {
			p.mu.Unlock()
			if idle < probeAfter || pc.alive() {
				pc.reused = true
				return pc, nil
			}
			pc.conn.Close()
			p.mu.Lock()
			continue
		}
		pc.conn.Close()
	}
	p.mu.Unlock()
	conn, err := p.c.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	pc := &h1Conn{pool: p, conn: conn, bw: bufio.NewWriterSize(conn, 4<<10)}
	pc.lr.R = conn
	pc.br = bufio.NewReaderSize(&pc.lr, 4<<10)
	return pc, nil
}

// put gives pc back for reuse, or closes it when the pool is full.
func (p *h1Pool) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	p.mu.Lock()
	if len(p.idle) >= p.c.maxIdle {
		p.mu.Unlock()
		pc.conn.Close()
		return
	}
	p.idle = append(p.idle, pc)
	if p.timer == nil {
		p.timer = time.AfterFunc(p.c.idleTimeout, p.prune)
	}
	p.mu.Unlock()
}

// prune closes the connections idle longer than the idle timeout and
// schedules itself for the next one to expire.
func (p *h1Pool) prune() {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	keep := p.idle[:0]
	for _, pc := range p.idle {
		if now.Sub(pc.idleAt) >= p.c.idleTimeout {
			pc.conn.Close()
			continue
		}
		keep = append(keep, pc)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	if len(keep) == 0 {
		p.timer = nil
		return
	}
	// The oldest is first: LIFO use leaves it at the bottom.
	p.timer.Reset(p.c.idleTimeout - now.Sub(keep[0].idleAt))
}

// closeIdle closes every idle connection.
func (c *h1Client) closeIdle() {
	c.pools.Range(func(_, v any) bool {
		p := v.(*h1Pool)
		p.mu.Lock()
		for _, pc := range p.idle {
			pc.conn.Close()
		}
		clear(p.idle)
		p.idle = p.idle[:0]
		p.mu.Unlock()
		return true
	})
}

// roundTrip sends req to addr and returns the response with its head read.
// body is where the returned Response's body wrapper lives (the caller's
// attempt, so it costs no allocation). req.GetBody, if set, must give a
// fresh copy of the body for the resend on a fresh connection.
func (c *h1Client) roundTrip(req *http.Request, addr string, body *h1Body) (*http.Response, error) {
	ctx := req.Context()
	p := c.pool(addr)
	for try := 0; ; try++ {
		pc, err := p.get(ctx, try > 0) // the resend takes a new connection
		if err != nil {
			return nil, err
		}
		res, err := pc.exchange(req, body)
		if err == nil {
			return res, nil
		}
		pc.conn.Close()
		if !errors.Is(err, errStaleConn) || try > 0 || ctx.Err() != nil {
			if errors.Is(err, errStaleConn) {
				err = fmt.Errorf("%w: %w", errStaleConn, io.ErrUnexpectedEOF)
			}
			return nil, err
		}
		if req.GetBody != nil {
			b, gerr := req.GetBody()
			if gerr != nil {
				return nil, gerr
			}
			req.Body = b
		}
	}
}

// exchange writes req on pc and reads the response head. On success the
// response body (a *h1Body) owns pc; on failure the caller closes pc.
func (pc *h1Conn) exchange(req *http.Request, body *h1Body) (*http.Response, error) {
	ctx := req.Context()
	stop := neverStop
	if ctx.Done() != nil { // a context that can end: cut the connection when it does
		stop = context.AfterFunc(ctx, pc.poison)
	}
	fail := func(err error) (*http.Response, error) {
		stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := pc.writeRequest(req); err != nil {
		if pc.reused && !pc.poisoned.Load() {
			return fail(errStaleConn) // nothing the instance could have answered
		}
		return fail(err)
	}
	if err := pc.bw.Flush(); err != nil {
		if pc.reused && !pc.poisoned.Load() {
			return fail(errStaleConn)
		}
		return fail(err)
	}
	if pc.pool.c.headerTimeout > 0 {
		pc.conn.SetReadDeadline(time.Now().Add(pc.pool.c.headerTimeout))
		if ctx.Err() != nil {
			pc.poison() // the context ended before the deadline was set
		}
	}
	var res *http.Response
	for {
		pc.lr.N = pc.pool.c.maxHeader
		r, err := pc.readResponse(req, body)
		if err != nil {
			if pc.reused && isStaleRead(err) && pc.br.Buffered() == 0 && pc.lr.N == pc.pool.c.maxHeader {
				return fail(errStaleConn)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				return fail(errHeaderTimeout)
			}
			if pc.lr.N <= 0 {
				return fail(errors.New("proxy: upstream response head larger than 1 MiB"))
			}
			return fail(err)
		}
		if r.StatusCode == http.StatusRequestTimeout && pc.reused && r.ProtoAtLeast(1, 0) && r.Close {
			// A server may answer 408 on an idle connection it closes; it
			// was not meant for this request.
			r.Body.Close()
			return fail(errStaleConn)
		}
		if r.StatusCode >= 100 && r.StatusCode < 200 {
			if r.StatusCode == http.StatusSwitchingProtocols {
				return fail(errors.New("proxy: upstream switched protocols without an upgrade request"))
			}
			continue // 100 Continue, 103 Early Hints: the final answer follows
		}
		res = r
		break
	}
	pc.lr.N = 1<<63 - 1 // the body is bounded by its own framing
	if pc.pool.c.headerTimeout > 0 {
		pc.conn.SetReadDeadline(time.Time{})
		if ctx.Err() != nil {
			pc.poison() // the context ended while the deadline was cleared
		}
	}
	body.pc, body.stop, body.keep, body.done = pc, stop, !res.Close && !req.Close, false
	if res.Body != body {
		body.rc, body.remain = res.Body, 0 // net/http's reader, or NoBody
	}
	if res.Body == http.NoBody {
		body.release(true)
		return res, nil
	}
	res.Body = body
	return res, nil
}

// neverStop is the stop function for a context that never ends.
func neverStop() bool { return true }

// errHeaderTimeout is the response-header timeout, worded as net/http's.
var errHeaderTimeout = &timeoutError{"proxy: timeout awaiting response headers"}

type timeoutError struct{ msg string }

func (e *timeoutError) Error() string { return e.msg }
func (e *timeoutError) Timeout() bool { return true }

// poison cuts every pending and future read and write on pc: the client
// went away.
func (pc *h1Conn) poison() {
	pc.poisoned.Store(true)
	pc.conn.SetDeadline(time.Unix(1, 0))
}

// isStaleRead reports whether err is what reading a connection the peer
// closed gives.
func isStaleRead(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// h1Body is a response body read from an h1Conn; at its end the connection
// goes back to its pool.
type h1Body struct {
	pc     *h1Conn
	rc     io.ReadCloser // net/http's body reader; nil for a head readResponse parsed
	remain int64         // rc == nil: the bytes of the body still to read
	stop   func() bool
	keep   bool // the connection may be reused once the body is read
	done   bool
}

// readLength reads a body framed by Content-Length straight from the
// connection's buffer.
func (b *h1Body) readLength(p []byte) (int, error) {
	if b.remain == 0 {
		b.release(true)
		return 0, io.EOF
	}
	if int64(len(p)) > b.remain {
		p = p[:b.remain]
	}
	n, err := b.pc.br.Read(p)
	b.remain -= int64(n)
	switch {
	case b.remain == 0:
		b.release(true)
		return n, io.EOF
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
		fallthrough
	case err != nil:
		if b.pc.poisoned.Load() {
			err = context.Canceled
		}
		b.release(false)
	}
	return n, err
}

// Close ends the body; a body not read to its end takes the connection

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	if b.rc == nil {
		return b.readLength(p)
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.release(true)
	} else if err != nil {
		if b.pc.poisoned.Load() {
			err = context.Canceled
		}
		b.release(false)
	}
	return n, err
}

// Close ends the body; a body not read to its end takes the connection
// with it.
func (b *h1Body) Close() error {
	if !b.done {
		b.release(false)
	}
	return nil
}

func (b *h1Body) release(whole bool) {
	b.done = true
	stopped := b.stop()
	// Bytes after the end of the body answer nothing that was asked (a
	// HEAD answered with a body, a body longer than announced): the
	// connection cannot be trusted to frame the next answer.
	if whole && b.keep && stopped && b.pc.br.Buffered() == 0 {
		b.pc.pool.put(b.pc)
		return
	}
	b.pc.conn.Close()
}

// defaultUserAgent is what net/http sends when a request has no
// User-Agent field (the proxy sets it empty to send none).
const defaultUserAgent = "Go-http-client/1.1"

// writeRequest writes req's head and body as Request.Write would, for the
// requests the fast path carries (no body, or one of known length), without
// its allocations.
func (pc *h1Conn) writeRequest(req *http.Request) error {
	bb, buffered := req.Body.(*bufferedBody)
	if req.Body != nil && (!buffered || req.ContentLength < 0) || len(req.TransferEncoding) > 0 || req.Trailer != nil {
		return req.Write(pc.bw)
	}
	head := bufPool.Get().(*[]byte)
	b, err := appendRequestHead((*head)[:0], req, buffered)
	if err == nil {
		_, err = pc.bw.Write(b)
	}
	*head = b[:0]
	bufPool.Put(head)
	if err == nil && buffered {
		_, err = bb.WriteTo(pc.bw)
	}
	return err
}

// bufPool holds the buffers request heads are written into.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}

// appendRequestHead appends req's head as Request.Write would write it,
// for a request with no body or, when buffered, a body held in memory of
// req.ContentLength bytes: h1Client and the event loop's exchange both
// send heads this way.
func appendRequestHead(b []byte, req *http.Request, buffered bool) ([]byte, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return b, fmt.Errorf("proxy: invalid Host header %q", host)
	}
	b = append(b, req.Method...)
	b = append(b, ' ')
	b = appendRequestURI(b, req.URL)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, '\r', '\n')
	ua := defaultUserAgent
	if v, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(v) > 0 {
			ua = v[0]
		}
	}
	if ua != "" {
		b = append(b, "User-Agent: "...)
		b = h1.AppendFieldValue(b, ua)
		b = append(b, '\r', '\n')
	}
	switch {
	case buffered:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.ContentLength, 10)
		b = append(b, '\r', '\n')
	case req.Method == http.MethodPut || req.Method == http.MethodPost || req.Method == http.MethodPatch:
		b = append(b, "Content-Length: 0\r\n"...) // as Request.Write: some servers want it
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			continue // as Request.Write does
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ':', ' ')
			b = h1.AppendFieldValue(b, textproto.TrimString(v))
			b = append(b, '\r', '\n')
		}
	}
	return append(b, '\r', '\n'), nil
}

// appendRequestURI appends u.RequestURI() without building the string
// when the URL is a plain path and query.
func appendRequestURI(b []byte, u *url.URL) []byte {
	if u.Opaque != "" || u.RawPath != "" || u.Fragment != "" || u.ForceQuery || u.Path == "" || u.Path[0] != '/' {
		return append(b, u.RequestURI()...)
	}
	for i := 0; i < len(u.Path); i++ {
		if !plainPath[u.Path[i]] {
			return append(b, u.RequestURI()...)
		}
	}
	b = append(b, u.Path...)
	if u.RawQuery != "" {
		b = append(b, '?')
		b = append(b, u.RawQuery...)
	}
	return b
}

// readResponse reads the next response head. A plain one (HTTP/1.1, a
// final status, framed by one Content-Length, head within the buffer) is
// parsed here and its body read by body.readLength; anything else goes to
// http.ReadResponse, which reads it from the start.
func (pc *h1Conn) readResponse(req *http.Request, body *h1Body) (*http.Response, error) {
	br := pc.br
	end := -1
	for {
		buf, _ := br.Peek(br.Buffered())
		if end = bytes.Index(buf, crlfcrlf); end >= 0 {
			break
		}
		if len(buf) >= br.Size() {
			return http.ReadResponse(br, req)
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if len(buf) == 0 {
				return nil, err
			}
			return http.ReadResponse(br, req)
		}
	}
	raw, _ := br.Peek(end + 4)
	res, clen, ok := parseSimpleResponse(raw, req)
	if !ok {
		return http.ReadResponse(br, req)
	}
	br.Discard(end + 4)
	if clen == 0 || req.Method == http.MethodHead {
		res.Body = http.NoBody
	} else {
		body.rc, body.remain = nil, clen
		res.Body = body // exchange sets the rest of body
	}
	return res, nil
}

// parseSimpleResponse parses raw, a whole response head, when it is plain
// enough to need nothing of net/http's reader; ok is false otherwise.
func parseSimpleResponse(raw []byte, req *http.Request) (res *http.Response, clen int64, ok bool) {
	if !simpleResponseShape(raw) {
		return nil, 0, false
	}
	return parseSimpleResponseInto(string(raw), req, new(respHead))
}

// simpleResponseShape is parseSimpleResponse's first look at raw.
func simpleResponseShape(raw []byte) bool {
	return len(raw) >= 16 && bytes.HasPrefix(raw, []byte("HTTP/1.1 ")) && cleanHead(raw)
}

// respHead is where a parsed response head lives: the Response, its
// header map and the backing array of its values. The event loop keeps
// one per upstream connection and parses into it again and again.
type respHead struct {
	res  http.Response
	h    http.Header
	vals [12]string
}

// parseSimpleResponseInto is parseSimpleResponse on raw as a string (its
// names and values are cut from it), parsed into st.
func parseSimpleResponseInto(raw string, req *http.Request, st *respHead) (res *http.Response, clen int64, ok bool) {
	head := raw[:len(raw)-2]
	eol := strings.IndexByte(head, '\n')
	status := head[9 : eol-1]
	if len(status) < 3 || (len(status) > 3 && status[3] != ' ') {
		return nil, 0, false
	}
	code, err := strconv.Atoi(status[:3])
	if err != nil || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified || code > 599 {
		return nil, 0, false
	}
	s := head[eol+1:]
	n := strings.Count(s, "\r\n")
	h := st.h
	if h == nil {
		h = make(http.Header, n)
		st.h = h
	} else {
		clear(h)
	}
	vals := st.vals[:]
	if n > len(vals) {
		vals = make([]string, n)
	}
	clear(vals)
	clen = -1
	closeConn := false
	for s != "" {
		key, v, rest, ok := nextField(s)
		if !ok {
			return nil, 0, false
		}
		s = rest
		switch key {
		case "Content-Length":
			if clen >= 0 {
				return nil, 0, false
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || v[0] == '+' {
				return nil, 0, false
			}
			clen = n
		case "Transfer-Encoding", "Trailer":
			return nil, 0, false
		case "Connection":
			if hasToken([]string{v}, "close") {
				closeConn = true
			}
		}
		vals = addValue(h, vals, key, v)
	}
	if clen < 0 {
		return nil, 0, false
	}
	if closeConn {
		delete(h, "Connection") // as net/http's reader does
	}
	st.res = http.Response{
		Status:        status,
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: clen,
		Close:         closeConn,
		Request:       req,
	}
	return &st.res, clen, true
}

// alive reports whether the instance has neither closed pc nor sent bytes
// on it while it sat idle, with a non-blocking peek at the socket. It
// costs a system call, so only connections idle for a while are probed;
// the resend on a stale connection covers the others.
func (pc *h1Conn) alive() bool {
	sc, ok := pc.conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		// Nothing to read is the only good answer: 0 bytes is the
		// instance's close, any byte is one it should not have sent.
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true // never wait
	})
	return err == nil && alive
}
