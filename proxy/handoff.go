package proxy

import (
	"net"
	"sync"
)

// handoffListener feeds the connections LoopServer hands off to the
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
	release func() // run with the connection's Close, once (see LoopOptions.Detach)
	once    sync.Once
}

// Close closes the connection and releases what was accepted with it.
func (c *replayConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.release != nil {
			c.release()
		}
	})
	return err
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
