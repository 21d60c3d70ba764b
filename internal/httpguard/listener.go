package httpguard

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// DefaultMaxHeaderBytes is the head size limit when Options leaves it 0.
const DefaultMaxHeaderBytes = 64 << 10

const (
	// lingerTime bounds how long a refused connection is read (and the
	// bytes dropped) after the answer, so that closing it with unread
	// data does not reset the connection before the client reads the
	// answer. net/http uses the same 500ms (rstAvoidanceDelay).
	lingerTime = 500 * time.Millisecond
	// lingerBytes bounds what is read while lingering.
	lingerBytes = 256 << 10
	// maxLingering bounds the goroutines lingering on refused
	// over-the-limit connections; beyond it they are closed at once.
	maxLingering = 256
	// writeTimeout bounds the write of a refusal.
	writeTimeout = time.Second
)

// Options configures Listen. The zero value guards with the defaults and
// no connection limit.
type Options struct {
	// MaxHeaderBytes limits a request head (request line, fields and the
	// empty line) and a trailer section; a larger head is answered 431.
	// 0 or less means DefaultMaxHeaderBytes. Set it no higher than the
	// http.Server's MaxHeaderBytes.
	MaxHeaderBytes int
	// MaxConns caps the live connections; 0 or less means no cap. Over
	// the cap a new connection is answered 503 with Retry-After: 1 and
	// closed, without blocking Accept. (Under TLS the client cannot read
	// that answer; it sees the handshake fail.)
	MaxConns int
	// Logger gets a debug line per refusal (reason, status, peer; never
	// the head). It is named "httpguard". Nil means no logging.
	Logger hclog.Logger
	// OnReject, if set, is called with a short constant reason for each
	// refused request or connection, e.g. for a metrics counter. The
	// reasons: "content-length with transfer-encoding", "multiple
	// content-length", "invalid content-length", "multiple
	// transfer-encoding", "invalid transfer-encoding", "unsupported
	// transfer-encoding", "transfer-encoding in http/1.0", "obs-fold",
	// "bare lf", "invalid header value", "invalid header name",
	// "malformed request line", "unsupported http version", "head too
	// large", "malformed chunked body", "malformed trailer", "data before
	// switching protocols", "too many connections". It runs on the
	// connection's goroutine (the accept loop's for "too many
	// connections"): keep it quick.
	OnReject func(reason string)
}

// Listen wraps ln: the connections it accepts refuse request smuggling
// vectors in their Read, and over Options.MaxConns connections are refused
// with 503.
func Listen(ln net.Listener, o Options) net.Listener {
	l := &listener{
		Listener: ln,
		maxHead:  o.MaxHeaderBytes,
		maxConns: int64(max(o.MaxConns, 0)),
		onReject: o.OnReject,
	}
	if l.maxHead <= 0 {
		l.maxHead = DefaultMaxHeaderBytes
	}
	if o.Logger != nil {
		l.log = o.Logger.Named("httpguard")
	} else {
		l.log = hclog.NewNullLogger()
	}
	return l
}

type listener struct {
	net.Listener
	maxHead   int
	maxConns  int64
	live      atomic.Int64
	lingering atomic.Int64
	log       hclog.Logger
	onReject  func(string)
}

// Accept returns the next connection within the limit. Connections over
// the limit are answered and closed here without waiting on them, so the
// accept loop never stalls.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.maxConns > 0 && l.live.Add(1) > l.maxConns {
			l.live.Add(-1)
			l.refuse(c)
			continue
		}
		return &conn{Conn: c, l: l, p: parser{maxHead: l.maxHead}}, nil
	}
}

// ConnState lets the guard follow what the server does with a connection;
// set it as http.Server.ConnState (or call it from yours, for every
// state). With it, after an Upgrade or CONNECT request the guard holds the
// bytes that follow until the server either hijacks the connection (they
// pass through, unexamined, to the new owner) or finishes that request
// and goes on (they are checked as the next request). Without it, the rest
// of such a connection passes through unexamined, so a client could
// declare an upgrade that the backend declines and send anything after it.
// Connections not from Listen are ignored; wrappers are looked through
// when they have a NetConn() net.Conn method.
func ConnState(nc net.Conn, s http.ConnState) {
	c := unwrap(nc)
	if c == nil {
		return
	}
	switch s {
	case http.StateNew:
		c.hooked.Store(true)
	case http.StateIdle:
		c.idles.Add(1)
	case http.StateHijacked:
		c.hijacked.Store(true)
	}
}

func unwrap(nc net.Conn) *conn {
	for range 8 {
		switch c := nc.(type) {
		case *conn:
			return c
		case interface{ NetConn() net.Conn }:
			nc = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

var resp503 = response(503, "too many connections", "Retry-After: 1\r\n")

// refuse answers a connection over the limit with 503 and closes it,
// lingering in a goroutine (a bounded number of them) so that the client
// can read the answer.
func (l *listener) refuse(c net.Conn) {
	l.report("too many connections", 503, c)
	if l.lingering.Add(1) > maxLingering {
		l.lingering.Add(-1)
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
		_, _ = c.Write(resp503)
		_ = c.Close()
		return
	}
	go func() {
		defer l.lingering.Add(-1)
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(resp503); err == nil {
			closeWrite(c)
			linger(c)
		}
		_ = c.Close()
	}()
}

// report logs a refusal at debug level and calls OnReject. Status 0: no
// response was written (a violation inside a body).
func (l *listener) report(reason string, status int, c net.Conn) {
	if l.log.IsDebug() {
		l.log.Debug("refused request", "reason", reason, "status", status, "peer", c.RemoteAddr().String())
	}
	if l.onReject != nil {
		l.onReject(reason)
	}
}

// response builds a complete minimal response that closes the connection.
func response(status int, reason, extra string) []byte {
	body := reason + "\n"
	return []byte("HTTP/1.1 " + strconv.Itoa(status) + " " + statusText(status) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Connection: close\r\n" + extra +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

func statusText(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 503:
		return "Service Unavailable"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Error"
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// linger reads and drops what the client still sends, for a bounded time
// and amount, so that closing the connection does not reset it before the
// client has read the answer (see net/http's closeWriteAndWait).
func linger(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, c, lingerBytes)
}

// Detach is for a server that takes the descriptor of a connection from
// Listen elsewhere (an event loop: proxy.LoopServer) and drops nc, which it
// will then never Read or Close: it returns the function that gives the
// connection's place under MaxConns back, to call once when the
// connection ends. Later calls of nc.Close do not count again. For a
// connection not from Listen it returns nil.
func Detach(nc net.Conn) (release func()) {
	c := unwrap(nc)
	if c == nil || !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	l := c.l
	if l.maxConns <= 0 {
		return func() {}
	}
	return func() { l.live.Add(-1) }
}
