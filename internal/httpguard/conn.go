package httpguard

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// errRefused is what Read returns after a violation inside a request that
// was already released (a chunked body, or data sent before the answer to
// an Upgrade): the handler reading it sees a broken body, and net/http
// closes the connection.
var errRefused = errors.New("httpguard: request stream refused")

// substitute is released in place of a refused head when earlier requests
// on the connection may still be waiting for their responses: net/http
// answers this malformed request line with 400 after them, in order.
const substitute = "REFUSED-BY-HTTPGUARD\r\n\r\n"

// minDirectRead is the smallest read buffer the caller must offer for the
// guard to read a head straight into it (and release it without a copy);
// smaller reads (net/http's 1-byte background read) go through the guard's
// own buffer.
const minDirectRead = 512

// bufSize is the size of the pooled buffers; larger heads grow a private
// one up to MaxHeaderBytes+1.
const bufSize = 4 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// conn guards the Read side of one connection. Read is not safe for
// concurrent use (net/http never reads concurrently); Close, CloseWrite,
// Write and the deadlines may be called from any goroutine.
type conn struct {
	net.Conn
	l *listener
	p parser

	// buf holds bytes read from the connection but not yet delivered:
	// buf[r:lim] are released, buf[lim:w] are an incomplete unit.
	bufp      *[]byte
	buf       []byte
	r, lim, w int
	rerr      error // error of the last read, returned once buf is drained

	reported bool
	sub      int // bytes of substitute delivered
	eof      bool

	linger atomic.Bool // refused: drain a little before closing
	closed atomic.Bool

	// Set by ConnState.
	hooked   atomic.Bool
	hijacked atomic.Bool
	idles    atomic.Int64 // requests the server finished and kept the connection for
}

// Read returns the next released bytes of the stream.
func (c *conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.p.hooked = c.hooked.Load()
	for {
		if c.r < c.lim {
			n := copy(b, c.buf[c.r:c.lim])
			c.r += n
			c.recycle()
			return n, nil
		}
		if c.p.st == stFailed {
			return c.failed(b)
		}
		if c.rerr != nil {
			err := c.rerr
			c.rerr = nil
			return 0, err
		}
		if c.p.st != stPass && c.p.hooked && c.hijacked.Load() {
			// The stream now belongs to the handler that took the
			// connection over: release what is held.
			c.p.st = stPass
			c.lim = c.w
			continue
		}
		if c.p.st == stAwait {
			if int(c.idles.Load()) >= c.p.awaitReq {
				// Answered without a hijack: still HTTP/1.
				c.p.resume()
				if c.lim < c.w {
					rel, _ := c.p.feed(c.buf[c.lim:c.w])
					c.lim += rel
				}
				continue
			}
			if c.w-c.lim > c.p.maxHead {
				c.p.fail(vEarlyData)
				continue
			}
		}
		if c.lim == c.w {
			c.recycle()
			switch c.p.st {
			case stPass:
				return c.Conn.Read(b)
			case stBody, stChunkData:
				// Body bytes go straight into the caller's buffer.
				k := uint64(len(b))
				if k > c.p.rem {
					k = c.p.rem
				}
				n, err := c.Conn.Read(b[:k])
				c.p.consume(n)
				return n, err
			}
			if len(b) >= minDirectRead {
				n, err := c.Conn.Read(b)
				if n == 0 {
					if err != nil {
						return 0, err
					}
					continue
				}
				if c.p.requests == 0 && c.p.st == stHead && !c.p.begun && b[0] == 0x16 {
					// A TLS handshake record: not ours to parse.
					c.p.st = stPass
					return n, err
				}
				rel, v := c.p.feed(b[:n])
				if v == nil && rel < n {
					c.stash(b[rel:n])
				}
				if rel > 0 {
					c.rerr = err
					return rel, nil
				}
				if v == nil && err != nil {
					return 0, err
				}
				continue
			}
		}
		c.fill()
	}
}

// fill reads more after the incomplete unit in buf and feeds it.
func (c *conn) fill() {
	if c.buf == nil {
		c.bufp = bufPool.Get().(*[]byte)
		c.buf = *c.bufp
	}
	if c.w == len(c.buf) {
		if c.r > 0 {
			copy(c.buf, c.buf[c.r:c.w])
			c.lim -= c.r
			c.w -= c.r
			c.r = 0
		}
		if c.w == len(c.buf) {
			c.grow(c.w + 1)
		}
	}
	n, err := c.Conn.Read(c.buf[c.w:])
	if n > 0 {
		first := c.w == 0
		c.w += n
		if first && c.p.requests == 0 && c.p.st == stHead && !c.p.begun && c.buf[0] == 0x16 {
			c.p.st = stPass
		}
		rel, _ := c.p.feed(c.buf[c.lim:c.w])
		c.lim += rel
	}
	c.rerr = err
}

// stash keeps the unreleased tail of a direct read.
func (c *conn) stash(b []byte) {
	if c.buf == nil {
		c.bufp = bufPool.Get().(*[]byte)
		c.buf = *c.bufp
	}
	if len(b) > len(c.buf) {
		c.grow(len(b))
	}
	c.r, c.lim, c.w = 0, 0, copy(c.buf, b)
}

// grow replaces buf by a larger private one holding at least n bytes. An
// incomplete unit never exceeds maxHead+1 bytes: the parser refuses it
// before.
func (c *conn) grow(n int) {
	size := max(2*len(c.buf), n)
	if limit := c.p.maxHead + 1; size > limit {
		size = max(limit, n)
	}
	nb := make([]byte, size)
	copy(nb, c.buf[c.r:c.w])
	c.lim -= c.r
	c.w -= c.r
	c.r = 0
	c.recycleBuf()
	c.buf, c.bufp = nb, nil
}

// recycle gives an empty buffer back to the pool: idle keep-alive
// connections then hold none.
func (c *conn) recycle() {
	if c.buf != nil && c.r == c.w {
		c.r, c.lim, c.w = 0, 0, 0
		c.recycleBuf()
		c.buf = nil
	}
}

func (c *conn) recycleBuf() {
	if c.bufp != nil {
		bufPool.Put(c.bufp)
		c.bufp = nil
	}
}

// failed handles Read after a violation.
func (c *conn) failed(b []byte) (int, error) {
	v := c.p.viol
	if !c.reported {
		c.reported = true
		c.l.report(v.reason, v.status, c.Conn)
		if v.head && c.p.requests == 0 {
			// Nothing released on this connection: no response can
			// be pending, so answer here and let the server see the
			// client go away.
			if v != vNotHTTP {
				_ = c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
				_, _ = c.Conn.Write(response(v.status, v.reason, ""))
				_ = c.Conn.SetWriteDeadline(time.Time{})
			}
			closeWrite(c.Conn)
			c.linger.Store(true)
			c.eof = true
		} else if v.head {
			c.linger.Store(true)
		}
	}
	switch {
	case c.eof:
		return 0, io.EOF
	case v.head:
		if c.sub < len(substitute) {
			n := copy(b, substitute[c.sub:])
			c.sub += n
			return n, nil
		}
		return 0, io.EOF
	default:
		return 0, errRefused
	}
}

// Close closes the connection; after a refusal it first lingers so that
// the client can read the answer. Only the first call counts against
// MaxConns.
func (c *conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		if c.l.maxConns > 0 {
			c.l.live.Add(-1)
		}
		if c.linger.Load() {
			closeWrite(c.Conn)
			linger(c.Conn)
		}
	}
	return c.Conn.Close()
}

// CloseWrite shuts the write side down when the connection supports it,
// as net/http expects of a *net.TCPConn.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom keeps the write side's sendfile/splice path: writes are not
// guarded.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// NetConn returns the wrapped connection.
func (c *conn) NetConn() net.Conn { return c.Conn }
