// Package httpguard wraps the edge's net.Listener so that HTTP/1.x requests
// that different parsers could read in different ways (request smuggling
// vectors) are refused before net/http parses them, and so that the number
// of live connections can be capped without stalling the accept loop.
//
// The wrapped connection follows the byte stream as HTTP/1.x requests: it
// holds back each request head until it is complete and valid, then
// releases it unchanged, then counts the body through as the head frames
// it (Content-Length, or chunked with its chunk lines and trailer section
// checked), then the next pipelined head. Refused: Content-Length together
// with Transfer-Encoding, several Content-Length fields or an invalid one,
// Transfer-Encoding other than one "chunked" (501 when it is a well-formed
// coding list net/http does not implement, else 400), Transfer-Encoding in
// HTTP/1.0, obs-fold (a line starting with SP or HTAB), lines ending in a
// bare LF, CR or NUL or other controls in field values, invalid field
// names, a malformed request line, HTTP versions other than 1.0 and 1.1
// (505), and a head larger than MaxHeaderBytes (431).
//
// Whatever it releases, net/http frames the same way: its rules are a
// subset of what net/http accepts (it mirrors net/http's skipping of up to
// four CR/LF bytes after a POST, its 16-digit and 4096-byte limits of chunk
// lines and its refusal of whitespace between chunk-size and ';').
//
// Pipelining: a response for a refused head is written directly only when
// that head is the first request on the connection; nothing else can be
// pending then. When earlier requests were released, their responses may
// still be on the way, so the guard releases a fixed malformed request line
// in place of the refused head: net/http answers it with its own "400 Bad
// Request" after the earlier responses, in order, and closes. A violation
// inside a chunked body (the head was already handed to a handler) makes
// Read fail, so the handler sees a broken body and the connection closes;
// no response is injected. Either way the refused request never reaches a
// handler.
//
// The package must not change, reorder or buffer request bodies, and must
// not look into what is not HTTP/1 requests: after an Upgrade request (with
// "upgrade" in Connection), a CONNECT, the HTTP/2 prior-knowledge preface
// at the start of a connection, or a TLS record at the start, it passes the
// rest of the connection through unexamined. It therefore has to wrap the
// plaintext listener: under tls.NewListener it sees only TLS records and
// does nothing but MaxConns, and above it the server would lose the
// *tls.Conn it needs for ALPN and Request.TLS.
package httpguard

import (
	"io"
	"net"
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
	// closed, without blocking Accept.
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
	// large", "malformed chunked body", "malformed trailer", "too many
	// connections". It runs on the connection's goroutine: keep it quick.
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
