package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/panjf2000/gnet/v2"
)

// LoopServer serves the HTTP/1.1 clients of a cleartext listener on event
// loops (gnet v2: epoll, one loop per core by default), and hands every
// connection it should not serve itself, with the bytes it read, to a
// net/http Server.
//
// A connection costs no goroutine and no buffer while it idles: its socket
// sits in a loop's epoll set and its state is a small struct; bytes are
// buffered only while they are pending (gnet's buffers come from pools). On
// the loop are the reading and parsing of request heads (parseRequestHead),
// the idle and header timeouts, the response bytes and their backpressure,
// and noticing a client that goes away: its request's context is cancelled
// at once.
//
// A request the loop parses is served on the loop itself when
// LoopOptions.Proxy is set and the request is one loopexchange.go takes (a
// route without cache, instances in cleartext HTTP/1.1):
// no goroutine, the upstream connection on the same loop. Any other runs
// the server's handler (the agent's proxy.Proxy behind its metrics and
// body limit: the same exchange, so policies, retries, passive health,
// tracing, access log and metrics live once) on a goroutine started for
// that request; the response comes back to the loop through AsyncWrite. The loop serves GET and HEAD over HTTP/1.1
// with no body, no upgrade and no Expect. Anything else (a request body,
// HTTP/1.0, Expect: 100-continue, an upgrade, HTTP/2 with prior knowledge,
// a head over 8 KiB or one it would have to refuse) makes it hand the
// connection (a dup of its descriptor, net.FileConn) with the unanswered
// bytes to the fallback server, which serves it from then on: that request
// is served, or refused, exactly as net/http alone would.
type LoopServer struct {
	srv  *http.Server // the fallback, whose Handler, timeouts and ConnState are used
	opts LoopOptions
	log  hclog.Logger
	cli  *gnet.Client
	ho   *handoffListener

	mu       sync.Mutex
	conns    map[*loopConn]struct{}
	ln       net.Listener
	shutting atomic.Bool
	drained  chan struct{} // closed when shutting and the last connection closed
	started  bool

	maxOutbound atomic.Int64 // largest outbound buffer seen on one connection (tests)

	states   sync.Map // gnet.EventLoop → *loopState: upstream connections per loop
	gate     loopGate // goroutines off the loops call into gnet through it
	stopOnce sync.Once

	onLoop, offLoop atomic.Int64 // requests served on the loop; bodies it gave a goroutine (tests)
	logs            accessQueue  // access log lines of the requests served on the loops
}

// LoopOptions tunes a LoopServer.
type LoopOptions struct {
	// Loops is the number of event loops (default GOMAXPROCS).
	Loops int
	// WrapHandoff, if set, wraps the listener the fallback server accepts
	// handed-off connections from (the agent puts httpguard there).
	WrapHandoff func(net.Listener) net.Listener
	// Detach, if set, is called with each accepted connection before its
	// descriptor moves to a loop and it is dropped; the function it
	// returns (if not nil) runs once when the connection ends. The agent
	// passes httpguard.Detach, which keeps --max-conns right without the
	// loop holding the accepted wrapper for the connection's life.
	Detach func(net.Conn) func()
	// Logger receives the loop engine's own logs; nil discards them.
	Logger hclog.Logger
	// Proxy, if set, is the srv's proxy (behind the agent's wrappers):
	// the loop then serves the requests it can with no goroutine (GETs
	// in loopexchange.go, fresh cache hits in loopcache.go), and the rest
	// through srv's handler.
	Proxy *Proxy
	// Observe, if set, is told the status and duration of every request
	// the loop serves without srv's handler (the agent's metrics).
	Observe func(status int, d time.Duration)
}

// loopBufSize is the largest request head the loop parses; a larger one
// goes to the fallback.
const loopBufSize = 8 << 10

// Backpressure: a handler writing a response waits while more than
// loopHighWater bytes of it sit in the connection's outbound buffer (the
// client reads slower than the instance sends), until that falls to
// loopLowWater. A connection holds at most loopHighWater + loopFlushSize
// bytes of a response in user space.
const (
	loopFlushSize = 16 << 10
	loopHighWater = 64 << 10
	loopLowWater  = 16 << 10
	// loopMaxPending bounds the bytes a client may send ahead while its
	// request is served (pipelined requests): beyond it the connection
	// closes.
	loopMaxPending = 1 << 20
)

// NewLoopServer returns a LoopServer for srv's handler, limits and
// ConnState hook. Serve it instead of srv; Shutdown shuts srv down too.
func NewLoopServer(srv *http.Server, opts LoopOptions) *LoopServer {
	if opts.Loops <= 0 {
		opts.Loops = runtime.GOMAXPROCS(0)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	s := &LoopServer{srv: srv, opts: opts, log: opts.Logger, conns: make(map[*loopConn]struct{}), drained: make(chan struct{})}
	if opts.Proxy != nil {
		loopServers.Store(opts.Proxy, s)
	}
	return s
}

// Serve accepts connections on ln until it is closed or Shutdown is called,
// and gives each to an event loop. ln must yield *net.TCPConn, directly or
// behind wrappers with a NetConn method (httpguard's); a wrapper's Close is
// called when the connection ends, so a cap it keeps stays right.
func (s *LoopServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutting.Load() || s.started {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.started = true
	s.ln = ln
	if p := s.opts.Proxy; p != nil && p.cfg.AccessLog {
		s.logs.start(p.log)
	}
	var hl net.Listener = &handoffListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	s.ho = hl.(*handoffListener)
	if s.opts.WrapHandoff != nil {
		hl = s.opts.WrapHandoff(hl)
	}
	cli, err := gnet.NewClient(&loopEvents{s: s},
		gnet.WithNumEventLoop(s.opts.Loops),
		gnet.WithLogger(gnetLogger{s.log}),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithReadBufferCap(64<<10))
	if err == nil {
		err = cli.Start()
	}
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start event loops: %w", err)
	}
	s.cli = cli
	s.mu.Unlock()

	srvErr := make(chan error, 1)
	go func() { srvErr <- s.srv.Serve(hl) }()
	stopSweep := make(chan struct{})
	defer close(stopSweep)
	go s.sweep(stopSweep)
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return http.ErrServerClosed
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				// Out of file descriptors and the like: back off as
				// net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			s.ho.close()
			<-srvErr
			return err
		}
		delay = 0
		s.enroll(c)
	}
}

// enroll registers c with an event loop.
func (s *LoopServer) enroll(c net.Conn) {
	tc := tcpConn(c)
	if tc == nil {
		s.log.Error("not a TCP connection: closed", "type", fmt.Sprintf("%T", c))
		c.Close()
		return
	}
	lc := &loopConn{s: s, remote: c.RemoteAddr().String(), local: c.LocalAddr().String()}
	if s.opts.Detach != nil {
		lc.release = s.opts.Detach(c)
	}
	s.mu.Lock()
	if s.shutting.Load() {
		s.mu.Unlock()
		c.Close()
		if lc.release != nil {
			lc.release()
		}
		return
	}
	s.conns[lc] = struct{}{}
	s.mu.Unlock()
	if d := s.srv.ReadHeaderTimeout; d > 0 {
		lc.deadline.Store(time.Now().Add(d).UnixNano())
	}
	if cs := s.srv.ConnState; cs != nil {
		cs(lc, http.StateNew)
	}
	// EnrollContext dups the descriptor into the loop and closes tc; it
	// waits for the loop to take it, so it runs inside the gate.
	if err := s.gate.do(func() error { _, err := s.cli.EnrollContext(tc, lc); return err }); err != nil {
		tc.Close()
		s.log.Debug("cannot enroll connection", "peer", lc.remote, "error", err)
		lc.gone()
	}
}

// tcpConn finds the *net.TCPConn under c's wrappers.
func tcpConn(c net.Conn) *net.TCPConn {
	for {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
}

// sweep closes the connections whose deadline passed (idle, header and
// write timeouts): 20 times per shortest timeout, at most every 250 ms
// (gnet has no deadlines, and a timer per connection would cost memory
// on every idle one).
func (s *LoopServer) sweep(stop <-chan struct{}) {
	every := 250 * time.Millisecond
	for _, d := range []time.Duration{s.srv.ReadHeaderTimeout, s.srv.IdleTimeout, s.srv.WriteTimeout} {
		if d > 0 {
			every = min(every, d/20)
		}
	}
	every = max(every, 5*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var late []*loopConn
	var lastPrune time.Time
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if p := s.opts.Proxy; p != nil && now.Sub(lastPrune) >= time.Second {
				lastPrune = now
				s.pruneUpstreams(p.cfg.IdleConnTimeout)
			}
			n := now.UnixNano()
			s.mu.Lock()
			for lc := range s.conns {
				if d := lc.deadline.Load(); d != 0 && n > d {
					late = append(late, lc)
				}
			}
			s.mu.Unlock()
			for _, lc := range late {
				if c := lc.conn(); c != nil {
					s.gate.do(c.Close)
				}
			}
			clear(late)
			late = late[:0]
		}
	}
}

// Shutdown stops accepting, closes idle connections, lets the requests
// being served finish (their connections then close), shuts the fallback
// server down and stops the loops, all bounded by ctx.
func (s *LoopServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting.Store(true)
	if s.ln != nil {
		s.ln.Close()
	}
	if len(s.conns) == 0 {
		s.closeDrained()
	}
	for lc := range s.conns {
		if c := lc.conn(); c != nil {
			// On the loop: close it unless a request is being served.
			c.Wake(func(c gnet.Conn, _ error) error { lc.closeIfIdle(c); return nil })
		}
	}
	cli := s.cli
	s.mu.Unlock()
	srvErr := make(chan error, 1)
	go func() { srvErr <- s.srv.Shutdown(ctx) }()
	var err error
	select {
	case <-s.drained:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if serr := <-srvErr; err == nil {
		err = serr
	}
	if cli != nil {
		// Once: a second Stop closes the pollers' descriptor numbers
		// again, by then another's (in the parallel tests, a live loop's
		// eventfd: that loop never woke for its own Stop, and a socket
		// that took the number received a stray 8-byte wake-up).
		s.stopOnce.Do(func() {
			s.gate.close() // no goroutine calls into gnet from here on
			cli.Stop()     // closes what is left
		})
	}
	s.logs.stop() // the loops are stopped: no line comes after
	return err
}

// closeDrained closes s.drained once; s.mu is held.
func (s *LoopServer) closeDrained() {
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

// remove forgets lc.
func (s *LoopServer) remove(lc *loopConn) {
	s.mu.Lock()
	delete(s.conns, lc)
	if s.shutting.Load() && len(s.conns) == 0 {
		s.closeDrained()
	}
	s.mu.Unlock()
}

// loopEvents is the gnet event handler.
type loopEvents struct {
	gnet.BuiltinEventEngine
	s *LoopServer
}

func (e *loopEvents) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if uc, ok := c.Context().(*upConn); ok {
		return nil, uc.opened(c)
	}
	lc, ok := c.Context().(*loopConn)
	if !ok {
		return nil, gnet.Close
	}
	lc.gc.Store(&c)
	if e.s.shutting.Load() {
		return nil, gnet.Close // Shutdown may have looked before the connection was known
	}
	return nil, gnet.None
}

func (e *loopEvents) OnTraffic(c gnet.Conn) gnet.Action {
	lc, ok := c.Context().(*loopConn)
	if !ok {
		if uc, ok := c.Context().(*upConn); ok {
			return uc.traffic()
		}
		return gnet.Close
	}
	return lc.process(c)
}

func (e *loopEvents) OnClose(c gnet.Conn, _ error) gnet.Action {
	switch v := c.Context().(type) {
	case *loopConn:
		v.onClose()
	case *upConn:
		v.closed()
	}
	return gnet.None
}

// loopConn is one client connection on a loop. Fields without a comment
// saying otherwise are touched on the loop only.
type loopConn struct {
	s       *LoopServer
	release func() // gives the listener's count back (LoopOptions.Detach)
	remote  string
	local   string
	gc      atomic.Pointer[gnet.Conn] // set once opened

	deadline atomic.Int64 // UnixNano after which the sweeper closes it; 0: none

	busy      bool // a request is being served: further bytes wait
	handing   bool // waiting for the outbound buffer to drain before a hand-off
	closing   bool // closes once the outbound buffer drained
	served    bool // a request was answered
	armed     bool // the header timeout runs for a partial head
	closed    bool
	handedOff bool
	cancel    context.CancelFunc // ends the context of the request being served
	fx        *loopExchange      // the request the loop serves itself, if any

	drainFn    func(gnet.Conn) // waiting for the outbound buffer to drain
	drainLow   int
	drainDelay time.Duration

	loopHits int // cache hits being answered on the loop, nested (loopcache.go)
}

func (lc *loopConn) conn() gnet.Conn {
	if p := lc.gc.Load(); p != nil {
		return *p
	}
	return nil
}

// process reads what the client sent: the next request head, if no
// request is being served.
func (lc *loopConn) process(c gnet.Conn) gnet.Action {
	if lc.closed || lc.handedOff {
		return gnet.None
	}
	n := c.InboundBuffered()
	if lc.busy || lc.handing || lc.closing {
		if n > loopMaxPending {
			return gnet.Close
		}
		return gnet.None
	}
	if n == 0 {
		return gnet.None
	}
	s := lc.s
	if s.shutting.Load() {
		return gnet.Close
	}
	buf, _ := c.Peek(n)
	if c0 := buf[0]; c0 != 'G' && c0 != 'H' {
		return lc.handOff(c) // not GET/HEAD: h2c preface, a body, or junk
	}
	end := bytes.Index(buf, crlfcrlf)
	if end < 0 {
		if n >= lc.maxHead() || bytes.Contains(buf, []byte("\n\n")) || bytes.Contains(buf, []byte("\n\r\n")) {
			return lc.handOff(c) // too large or lines ending in a bare LF
		}
		if !lc.armed {
			// The head did not come in one piece: bound the rest.
			lc.armed = true
			if d := s.srv.ReadHeaderTimeout; d > 0 {
				lc.deadline.Store(time.Now().Add(d).UnixNano())
			} else {
				lc.deadline.Store(0)
			}
		}
		return gnet.None
	}
	if end+4 > lc.maxHead() {
		return lc.handOff(c)
	}
	var req *http.Request
	fx := lc.prepareOnLoop(c, buf[:end+4]) // nil unless the loop serves it itself
	if fx == nil {
		var ok bool
		if req, ok = parseRequestHead(buf[:end+4], lc.remote); !ok {
			return lc.handOff(c)
		}
	}
	c.Discard(end + 4)
	lc.armed = false
	lc.busy = true
	if d := s.srv.WriteTimeout; d > 0 {
		lc.deadline.Store(time.Now().Add(d).UnixNano())
	} else {
		lc.deadline.Store(0)
	}
	if fx != nil {
		fx.serve()
		return gnet.None
	}
	if lc.serveFromCache(c, req) {
		return gnet.None
	}
	w := respPool.Get().(*loopResponse) // back in the pool once the loop took the last bytes
	w.reset(lc, c)
	// A context per request, cancelled when it is answered or the client
	// goes: an idle connection holds none.
	ctx, cancel := context.WithCancel(context.Background())
	lc.cancel = cancel
	w.ctx = ctx
	go w.serve(ctx, req)
	return gnet.None
}

// maxHead is the largest head the loop reads: its limit, or the server's
// MaxHeaderBytes when smaller, so that net/http refuses what it would.
func (lc *loopConn) maxHead() int {
	if m := lc.s.srv.MaxHeaderBytes; m > 0 && m < loopBufSize {
		return m
	}
	return loopBufSize
}

// finished runs on the loop once a response is written: the next request,
// or the close.
func (lc *loopConn) finished(c gnet.Conn, keep bool) {
	if lc.closed {
		return
	}
	lc.busy = false
	lc.served = true
	if lc.cancel != nil {
		lc.cancel()
		lc.cancel = nil
	}
	s := lc.s
	if !keep || s.shutting.Load() {
		lc.closeAfterDrain(c)
		return
	}
	if cs := s.srv.ConnState; cs != nil {
		cs(lc, http.StateIdle)
	}
	wait := s.srv.IdleTimeout
	if wait <= 0 {
		wait = s.srv.ReadHeaderTimeout
	}
	if wait > 0 {
		lc.deadline.Store(time.Now().Add(wait).UnixNano())
	} else {
		lc.deadline.Store(0)
	}
	if c.InboundBuffered() > 0 {
		// Pipelined: the next request is here already.
		if lc.process(c) == gnet.Close {
			c.Close()
		}
	}
}

// closeIfIdle closes the connection unless a request is being served
// (Shutdown).
func (lc *loopConn) closeIfIdle(c gnet.Conn) {
	if !lc.closed && !lc.busy && !lc.handing && !lc.handedOff {
		lc.closeAfterDrain(c)
	}
}

// closeAfterDrain closes the connection once what it has to send is sent.
func (lc *loopConn) closeAfterDrain(c gnet.Conn) {
	lc.closing = true
	// A client that stops reading must not hold the connection forever:
	// the kernel would drop unsent bytes of a closed socket after a while
	// too.
	wait := lc.s.srv.IdleTimeout
	if wait <= 0 {
		wait = DefaultIdleTimeout
	}
	lc.deadline.Store(time.Now().Add(wait).UnixNano())
	lc.waitDrain(c, 0, func(c gnet.Conn) { c.Close() })
}

// waitDrain calls fn on the loop once the outbound buffer holds at most
// low bytes. gnet has no writable event for its users: the loop is asked
// again after a short, growing delay.
func (lc *loopConn) waitDrain(c gnet.Conn, low int, fn func(gnet.Conn)) {
	if c.OutboundBuffered() <= low {
		fn(c)
		return
	}
	lc.drainFn, lc.drainLow, lc.drainDelay = fn, low, 0
	lc.scheduleDrainCheck(c)
}

func (lc *loopConn) scheduleDrainCheck(c gnet.Conn) {
	lc.drainDelay = min(max(2*lc.drainDelay, 500*time.Microsecond), 20*time.Millisecond)
	time.AfterFunc(lc.drainDelay, func() {
		// On a closed connection the callback sees lc.closed.
		lc.s.gate.wake(c, func(c gnet.Conn, err error) error {
			if err != nil || lc.closed || lc.drainFn == nil {
				return nil
			}
			if c.OutboundBuffered() > lc.drainLow {
				lc.scheduleDrainCheck(c)
				return nil
			}
			fn := lc.drainFn
			lc.drainFn = nil
			fn(c)
			return nil
		})
	})
}

// handOff gives the connection and its unread bytes to the fallback
// server, once every response already written has left.
func (lc *loopConn) handOff(c gnet.Conn) gnet.Action {
	if c.OutboundBuffered() > 0 {
		lc.handing = true
		lc.waitDrain(c, 0, func(c gnet.Conn) {
			lc.handing = false
			if lc.doHandOff(c) == gnet.Close {
				c.Close()
			}
		})
		return gnet.None
	}
	return lc.doHandOff(c)
}

func (lc *loopConn) doHandOff(c gnet.Conn) gnet.Action {
	var pending []byte
	if n := c.InboundBuffered(); n > 0 {
		b, _ := c.Peek(n)
		pending = bytes.Clone(b)
	}
	fd, err := c.Dup()
	if err != nil {
		lc.s.log.Debug("cannot hand connection off", "peer", lc.remote, "error", err)
		return gnet.Close
	}
	f := os.NewFile(uintptr(fd), "handoff")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		lc.s.log.Debug("cannot hand connection off", "peer", lc.remote, "error", err)
		return gnet.Close
	}
	lc.handedOff = true
	lc.deadline.Store(0)
	// net/http reports the connection from here on, as a new one (its
	// wrapper): the loop's account of it ends first, so that hooks
	// counting New against Closed stay balanced.
	if cs := lc.s.srv.ConnState; cs != nil {
		cs(lc, http.StateClosed)
	}
	rc := &replayConn{Conn: nc, pending: pending, release: lc.release}
	go func() {
		if !lc.s.ho.give(rc) {
			rc.Close()
		}
	}()
	return gnet.Close // closes the loop's descriptor; the dup lives on
}

// onClose runs on the loop when the connection ended.
func (lc *loopConn) onClose() {
	if lc.closed {
		return
	}
	lc.closed = true
	if lc.fx != nil {
		lc.fx.clientGone() // before the cancel: the attempts end here, not on their watch
		lc.fx = nil
	}
	if lc.cancel != nil {
		lc.cancel() // the client is gone: the request being served stops now
		lc.cancel = nil
	}
	lc.deadline.Store(0)
	if !lc.handedOff {
		lc.gone()
		return
	}
	lc.s.remove(lc)
}

// gone reports the end of a connection the loop served to the end.
func (lc *loopConn) gone() {
	if lc.release != nil {
		lc.release()
	}
	if cs := lc.s.srv.ConnState; cs != nil {
		cs(lc, http.StateClosed)
	}
	lc.s.remove(lc)
}

// A loopConn is the net.Conn the server's ConnState hook sees for a
// connection on a loop: a stable key with its addresses. Its bytes are the
// loop's: Read and Write fail.
func (lc *loopConn) Read([]byte) (int, error)  { return 0, errLoopConnIO }
func (lc *loopConn) Write([]byte) (int, error) { return 0, errLoopConnIO }

// Close closes the connection.
func (lc *loopConn) Close() error {
	if c := lc.conn(); c != nil {
		return lc.s.gate.do(c.Close)
	}
	return nil
}
func (lc *loopConn) LocalAddr() net.Addr              { return tcpAddr(lc.local) }
func (lc *loopConn) RemoteAddr() net.Addr             { return tcpAddr(lc.remote) }
func (lc *loopConn) SetDeadline(time.Time) error      { return errLoopConnIO }
func (lc *loopConn) SetReadDeadline(time.Time) error  { return errLoopConnIO }
func (lc *loopConn) SetWriteDeadline(time.Time) error { return errLoopConnIO }

var errLoopConnIO = errors.New("proxy: a connection on an event loop is read and written by the loop")

func tcpAddr(s string) net.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(ap)
}

// gnetLogger sends gnet's logs to hclog at debug level (errors at error).
type gnetLogger struct{ l hclog.Logger }

func (g gnetLogger) Debugf(format string, args ...any) {
	if g.l.IsDebug() {
		g.l.Debug(fmt.Sprintf(format, args...))
	}
}
func (g gnetLogger) Infof(format string, args ...any) { g.Debugf(format, args...) }
func (g gnetLogger) Warnf(format string, args ...any) { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Errorf(format string, args ...any) {
	g.l.Error(fmt.Sprintf(format, args...))
}
func (g gnetLogger) Fatalf(format string, args ...any) {
	g.l.Error(fmt.Sprintf(format, args...))
}

// errLoopClosed is what a handler's write gets once the client is gone.
var errLoopClosed = errors.New("proxy: client connection closed")

// noteOutbound records n, a connection's outbound buffer, if it is the
// largest seen.
func (s *LoopServer) noteOutbound(n int) {
	for {
		cur := s.maxOutbound.Load()
		if int64(n) <= cur || s.maxOutbound.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// pruneUpstreams closes, on each loop, the upstream connections idle
// longer than idle.
func (s *LoopServer) pruneUpstreams(idle time.Duration) {
	s.states.Range(func(_, v any) bool {
		ls := v.(*loopState)
		s.gate.execute(ls.el, func() { ls.prune(idle) })
		return true
	})
}

// loopGate lets goroutines that are not a loop hand the loops work only
// while they run. gnet does not check for a stopped client: a task queued
// after Stop is never run (EnrollContext and an Enroll's worker would wait
// for it for ever) and the poller it goes to has closed its descriptors.
// Calls made on a loop need no gate: the loops run until Stop returns.
type loopGate struct {
	mu   sync.RWMutex
	down bool
}

// errLoopsDown is what a call through a closed gate returns.
var errLoopsDown = errors.New("proxy: the event loops have stopped")

// do runs fn, a call into gnet, unless the loops are stopping. A call
// that waits for a loop (EnrollContext) is fine: the loops run until
// close, which waits for every call under way. do never waits itself
// (TryRLock: a close waiting for the lock means the loops are stopping),
// so that a call made on a loop cannot block the loop a call under way
// waits for.
func (g *loopGate) do(fn func() error) error {
	if !g.mu.TryRLock() {
		return errLoopsDown
	}
	defer g.mu.RUnlock()
	if g.down {
		return errLoopsDown
	}
	return fn()
}

// execute runs fn on el, unless the loops are stopping.
func (g *loopGate) execute(el gnet.EventLoop, fn func()) error {
	return g.do(func() error {
		return el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
			fn()
			return nil
		}))
	})
}

// wake calls cb on c's loop, unless the loops are stopping.
func (g *loopGate) wake(c gnet.Conn, cb gnet.AsyncCallback) error {
	return g.do(func() error { return c.Wake(cb) })
}

// asyncWrite queues b on c's loop, unless the loops are stopping.
func (g *loopGate) asyncWrite(c gnet.Conn, b []byte, cb gnet.AsyncCallback) error {
	return g.do(func() error { return c.AsyncWrite(b, cb) })
}

// close marks the loops as stopping once no call is under way.
func (g *loopGate) close() {
	g.mu.Lock()
	g.down = true
	g.mu.Unlock()
}
