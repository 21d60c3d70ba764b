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
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"github.com/panjf2000/gnet/v2"

	"github.com/meshlb/meshlb/lb"
)

// The exchange on the event loop. A GET or HEAD without a body that a
// LoopServer parsed, on a route that does not cache, to a service whose
// instances all speak HTTP/1.1 in cleartext, is served with no goroutine:
// the instance is picked as the goroutine exchange picks it (the same
// exchange struct and functions: pick, newAttempt, prepareHeaders,
// drainSignal, retry rules, per-try timeouts and hedges, tracing, the
// recent-requests record, error answers), the request goes out on an
// upstream connection attached to the client's loop (gnet's Enroll), taken
// from a keep-alive pool of that loop keyed by dial address, and the
// response head is parsed and its body framed (Content-Length, chunked or
// until close) as it comes in, straight into the client connection.
//
// A dial never blocks the loop: it runs on a goroutine, and the connection
// is enrolled into the loop once connected. Timers (response-header
// timeout, per-try timeout) fire on the timer goroutine and run their work
// on the loop with EventLoop.Execute.
//
// gnet cannot stop reading a connection, so the loop cannot hold an
// upstream back while a client reads slowly: when the client's outbound
// buffer passes loopHighWater the rest of the body is taken off the loop
// (the upstream descriptor is duplicated into a net.Conn) and streamed by
// a goroutine through the loop's response writer, which waits while the
// client is behind. Memory per exchange stays bounded either way.

// loopState is one event loop's upstream side: its idle keep-alive
// connections by dial address. It is touched on its loop only.
type loopState struct {
	el   gnet.EventLoop
	gate *loopGate // the server's: calls from other goroutines go through it
	idle map[string][]*upConn
	free []*loopExchange // exchanges done, for reuse

	maxIdle int // idle connections kept per address on this loop (Config.MaxIdleConnsPerHost)
}

func (s *LoopServer) loopState(el gnet.EventLoop) *loopState {
	if v, ok := s.states.Load(el); ok {
		return v.(*loopState)
	}
	maxIdle := DefaultMaxIdleConnsPerHost
	if p := s.opts.Proxy; p != nil {
		maxIdle = p.cfg.MaxIdleConnsPerHost
	}
	v, _ := s.states.LoadOrStore(el, &loopState{el: el, gate: &s.gate, idle: make(map[string][]*upConn), maxIdle: maxIdle})
	return v.(*loopState)
}

// upState is where an upstream connection is in its exchange.
type upState uint8

const (
	upDialing upState = iota
	upWaitHead
	upBody
	upHeld // answered 503 draining; the request went on elsewhere
	upIdle
	upClosed
)

// upConn is one upstream connection on a loop.
type upConn struct {
	ls     *loopState
	addr   string
	gc     gnet.Conn // nil while dialing
	state  upState
	reused bool // it carried an earlier request: a close before any byte is stale

	fx      *loopExchange // the exchange it serves, nil when idle
	a       *attempt
	left    func(*attempt) // uc.instanceLeft, made once
	timer   *time.Timer    // response-header timeout
	headDue int64          // UnixNano
	res     *http.Response
	dec     bodyDecoder
	idleAt  time.Time

	raw       []byte   // the last response head (parseResponseHead)
	head      respHead // and what was parsed of it
	inTraffic bool     // in its OnTraffic
	closeNow  bool     // close when OnTraffic returns
}

// loopExchange is one request served on the loop.
type loopExchange struct {
	x  exchange
	s  *LoopServer
	ls *loopState
	lc *loopConn
	c  gnet.Conn
	w  *loopResponse

	tried    []*lb.Instance
	triedBuf [DefaultMaxAttempts + 2]*lb.Instance
	running  []*upConn // attempts waiting on their response head
	runBuf   [DefaultMaxAttempts]*upConn
	held     *upConn
	body     *upConn    // the winner, while its body streams
	resent   []*attempt // attempts resent after a stale kept-alive connection
	resBuf   [DefaultMaxAttempts]*attempt

	tryTimeout time.Duration
	timer      *time.Timer // per-try timeout
	timerDue   int64
	headOut    bool // the response head went (or is pending) to the client
	pending    bool // the head sits in w.out, not yet written
	done       bool
	raw        []byte   // the request head's bytes (prepareOnLoop)
	rh         reqHead  // what was parsed of it
	offUC      *upConn  // the body waiting to go to a goroutine (offLoop)
	offNC      net.Conn // its descriptor
	iov        [4][]byte
	size       [20]byte
	rec        Record // x.rec, with a Recorder (it copies what it keeps)
}

// newExchange returns a loopExchange from the loop's free list, or a new
// one; its timer is kept.
func (ls *loopState) newExchange() *loopExchange {
	if n := len(ls.free); n > 0 {
		fx := ls.free[n-1]
		ls.free[n-1] = nil
		ls.free = ls.free[:n-1]
		timer, raw, h := fx.timer, fx.raw, fx.rh.h
		*fx = loopExchange{timer: timer, raw: raw}
		fx.rh.h = h
		return fx
	}
	return new(loopExchange)
}

// freeExchange keeps fx for another request of this loop. A late timer
// callback of its old request runs on this loop too and finds the
// deadline it checks moved on.
func (ls *loopState) freeExchange(fx *loopExchange) {
	if len(ls.free) < 1024 {
		fx.x = exchange{}
		ls.free = append(ls.free, fx)
	}
}

// loopServable reports whether the loop serves route itself: no cache, no
// h2c, and every instance of its pool in cleartext HTTP/1.1 (checked once
// per pool snapshot).
func loopServable(cr *compiledRoute) bool {
	if cr.cache != nil || cr.h2c {
		return false
	}
	pool := cr.balancer.Pool()
	if pool == nil || cr.loopPool.Load() == pool {
		return true
	}
	for _, in := range pool.Instances {
		if usesTLS(in) || speaksH2C(in) {
			return false
		}
	}
	cr.loopPool.Store(pool)
	return true
}

// prepareOnLoop parses raw, a request head, into an exchange of c's loop
// when the loop serves it itself (see loopServable); nil leaves it to the
// goroutine exchange.
func (lc *loopConn) prepareOnLoop(c gnet.Conn, raw []byte) *loopExchange {
	s := lc.s
	p := s.opts.Proxy
	if p == nil || !cleanHead(raw) {
		return nil
	}
	ls := s.loopState(c.EventLoop())
	fx := ls.newExchange()
	var head string
	if p.tracer == nil && !p.cfg.AccessLog {
		// The names and values are cut from a copy kept in fx, reused
		// only by fx's next request: nothing of this one outlives it
		// (spans and access log lines would: they take a string of
		// their own; a Recorder copies the record it keeps).
		fx.raw = append(fx.raw[:0], raw[:len(raw)-2]...)
		head = unsafe.String(unsafe.SliceData(fx.raw), len(fx.raw))
	} else {
		head = string(raw[:len(raw)-2])
	}
	req, ok := parseRequestHeadInto(head, lc.remote, &fx.rh)
	if !ok {
		ls.freeExchange(fx)
		return nil
	}
	route := p.routes.Load().match(req.Host, req.URL.Path)
	if route == nil || !loopServable(route) {
		ls.freeExchange(fx)
		return nil
	}
	fx.s, fx.ls, fx.lc, fx.c = s, ls, lc, c
	fx.x = exchange{p: p, r: req, ctx: context.Background(), route: route, idempotent: true, onLoop: true}
	return fx
}

// serve starts the exchange prepareOnLoop made.
func (fx *loopExchange) serve() {
	lc, c, x := fx.lc, fx.c, &fx.x
	p := x.p
	fx.s.onLoop.Add(1)
	// No context for the request: the loop ends its attempts itself when
	// the client goes (clientGone); one is made only if the body goes to
	// a goroutine (offLoop).
	w := respPool.Get().(*loopResponse)
	w.reset(lc, c)
	w.req = x.r
	w.out = outPool.Get().(*[]byte)
	fx.w = w
	x.w = w
	x.start = time.Now()
	if p.tracer != nil {
		x.startServerSpan()
	}
	if p.cfg.Recorder != nil {
		x.rec = &fx.rec
		x.startRecord()
	}
	p.prepareHeaders(x.r, "")
	fx.tried = fx.triedBuf[:0]
	fx.running = fx.runBuf[:0]
	fx.resent = fx.resBuf[:0]
	lc.fx = fx
	fx.next()
}

// next picks an instance and sends the request to it, or answers when no
// instance is left (forward's loop, on the loop).
func (fx *loopExchange) next() {
	x := &fx.x
	bal := x.route.balancer
	inst, err := x.pick(bal, fx.tried)
	if err != nil {
		switch {
		case fx.held != nil:
			uc := fx.held
			fx.held = nil
			fx.respond(uc)
		case x.err != nil:
			x.failUpstream()
			fx.answer()
		default:
			x.failPick(err)
			fx.answer()
		}
		return
	}
	if fx.held != nil {
		fx.discardHeld()
	}
	n := x.attempts + 1
	x.attempts = n
	x.inst = inst
	a := x.newAttempt(inst, n)
	h := x.route.hedge
	if h != nil && n == 1 {
		h.budget.request(a.start)
	}
	fx.tryTimeout = 0
	if h != nil && x.attempts < x.p.cfg.MaxAttempts && mayHedge(true, true, false, "") {
		fx.tryTimeout = h.tryTimeout(a.start)
	}
	fx.launch(a, false)
	fx.armTry()
}

// launch sends attempt a on an idle pooled connection, or a new one
// (always when fresh).
func (fx *loopExchange) launch(a *attempt, fresh bool) {
	x := &fx.x
	addr := a.inst.HostPort
	var uc *upConn
	if !fresh {
		uc = fx.ls.take(addr, x.p.cfg.IdleConnTimeout)
	}
	if uc == nil {
		uc = &upConn{ls: fx.ls, addr: addr, state: upDialing}
	}
	uc.fx, uc.a = fx, a
	fx.running = append(fx.running, uc)
	if uc.left == nil {
		uc.left = uc.instanceLeft // one func per connection, not per request
	}
	a.onLeft = uc.left
	x.p.inflight.add(a) // after onLeft is set: InstancesLeft reads it under the set's lock
	if uc.state == upDialing {
		uc.dial(context.Background()) // bounded by ConnectTimeout; a late connection is pooled
		return
	}
	uc.send()
}

// take returns an idle connection to addr that has not outlived idle, or
// nil. Connections the instance closed are gone from the pool already:
// the loop saw their close.
func (ls *loopState) take(addr string, idle time.Duration) *upConn {
	list := ls.idle[addr]
	now := time.Now()
	for n := len(list); n > 0; n = len(list) {
		uc := list[n-1]
		list[n-1] = nil
		list = list[:n-1]
		if now.Sub(uc.idleAt) < idle {
			ls.idle[addr] = list
			uc.reused = true
			return uc
		}
		uc.state = upClosed
		uc.gc.Close()
	}
	ls.idle[addr] = list
	return nil
}

// put keeps uc for another request, or closes it when the pool is full.
func (ls *loopState) put(uc *upConn, max int) {
	uc.fx, uc.a, uc.res = nil, nil, nil
	if len(ls.idle[uc.addr]) >= max {
		uc.close()
		return
	}
	uc.state = upIdle
	uc.idleAt = time.Now()
	ls.idle[uc.addr] = append(ls.idle[uc.addr], uc)
}

// drop removes uc from the idle pool.
func (ls *loopState) drop(uc *upConn) {
	list := ls.idle[uc.addr]
	for i, o := range list {
		if o == uc {
			copy(list[i:], list[i+1:])
			list[len(list)-1] = nil
			ls.idle[uc.addr] = list[:len(list)-1]
			return
		}
	}
}

// closeIdle closes the idle connections to addr ("" for all).
func (ls *loopState) closeIdle(addr string) {
	for a, list := range ls.idle {
		if addr != "" && a != addr {
			continue
		}
		for _, uc := range list {
			uc.state = upClosed
			uc.gc.Close()
		}
		delete(ls.idle, a)
	}
}

// prune closes the connections idle for longer than idle.
func (ls *loopState) prune(idle time.Duration) {
	now := time.Now()
	for addr, list := range ls.idle {
		keep := list[:0]
		for _, uc := range list {
			if now.Sub(uc.idleAt) >= idle {
				uc.state = upClosed
				uc.gc.Close()
				continue
			}
			keep = append(keep, uc)
		}
		clear(list[len(keep):])
		if len(keep) == 0 {
			delete(ls.idle, addr)
		} else {
			ls.idle[addr] = keep
		}
	}
}

// dial connects on a goroutine and enrolls the connection into the loop;
// OnOpen then sends the request. A failed dial is reported on the loop.
func (uc *upConn) dial(ctx context.Context) {
	fx := uc.fx
	dial := fx.x.p.h1.dial
	ls := uc.ls
	go func() {
		conn, err := dial(ctx, "tcp", uc.addr)
		if err == nil {
			// gnet enrolls on a worker goroutine of its own: wait for it
			// inside the gate, so that the loops do not stop under it.
			err = ls.gate.do(func() error {
				res, err := ls.el.Enroll(gnet.NewContext(context.Background(), uc), conn)
				if err == nil {
					err = (<-res).Err // the worker closed conn (its dup lives in the loop)
				}
				return err
			})
			if err != nil {
				conn.Close()
			}
		}
		if err != nil {
			ls.gate.execute(ls.el, func() {
				if uc.state == upDialing {
					uc.state = upClosed
					uc.failed(err)
				}
			})
		}
	}()
}

// opened runs on the loop when a dialled connection joined it.
func (uc *upConn) opened(c gnet.Conn) gnet.Action {
	uc.gc = c
	if uc.state != upDialing {
		return gnet.Close
	}
	if uc.fx == nil {
		// Its attempt ended while it dialled: keep it for the next.
		uc.ls.put(uc, uc.ls.maxIdle)
		if uc.state == upClosed {
			return gnet.Close
		}
		return gnet.None
	}
	uc.send()
	return gnet.None
}

// send writes the attempt's request head and waits for the response head.
func (uc *upConn) send() {
	fx, a := uc.fx, uc.a
	out := bufPool.Get().(*[]byte)
	b, err := appendRequestHead((*out)[:0], &a.req, false)
	if err == nil {
		_, err = uc.gc.Write(b)
	}
	*out = b[:0]
	bufPool.Put(out)
	if err != nil {
		if uc.reused {
			err = errStaleConn
		}
		uc.failed(err)
		return
	}
	uc.state = upWaitHead
	if d := fx.x.p.cfg.ResponseHeaderTimeout; d > 0 {
		uc.headDue = time.Now().Add(d).UnixNano()
		if uc.timer == nil {
			uc.timer = time.AfterFunc(d, uc.headTimerFired)
		} else {
			uc.timer.Reset(d)
		}
	}
}

// headTimerFired runs on the timer goroutine: the check goes to the loop.
func (uc *upConn) headTimerFired() {
	uc.ls.gate.execute(uc.ls.el, func() {
		if uc.state == upWaitHead && uc.fx != nil && time.Now().UnixNano() >= uc.headDue {
			uc.failed(errHeaderTimeout)
		}
	})
}

// instanceLeft is called by InstancesLeft (any goroutine) once it
// cancelled the attempt uc carries: on the loop, the attempt fails with
// errInstanceLeft (and is resent when idempotent) unless it ended.
// Hedge losses and a client gone are handled on the loop directly.
func (uc *upConn) instanceLeft(a *attempt) {
	uc.ls.gate.execute(uc.ls.el, func() {
		if uc.a != a || uc.fx == nil || (uc.state != upWaitHead && uc.state != upDialing) {
			return
		}
		uc.failed(fmt.Errorf("%w: %w", errInstanceLeft, context.Canceled))
	})
}

// traffic runs on the loop when the instance sent bytes.
func (uc *upConn) traffic() gnet.Action {
	uc.inTraffic = true
	defer func() { uc.inTraffic = false }()
	switch uc.state {
	case upWaitHead:
		uc.readHead()
	case upBody:
		uc.fx.feed(uc)
	case upIdle:
		// Bytes nobody asked for: the connection cannot frame an answer.
		uc.ls.drop(uc)
		uc.state = upClosed
		return gnet.Close
	}
	if uc.closeNow {
		uc.closeNow = false
		return gnet.Close
	}
	return gnet.None
}

// closed runs on the loop when the connection ended.
func (uc *upConn) closed() {
	st := uc.state
	uc.state = upClosed
	if uc.timer != nil {
		uc.timer.Stop()
	}
	switch st {
	case upIdle:
		uc.ls.drop(uc)
	case upDialing, upWaitHead:
		if uc.fx != nil {
			err := error(io.ErrUnexpectedEOF)
			if uc.reused {
				err = errStaleConn
			}
			uc.failed(err)
		}
	case upBody:
		if fx := uc.fx; fx != nil {
			if uc.dec.framing == frameClose {
				uc.dec.done = true
				fx.bodyDone(uc, false)
				return
			}
			fx.bodyFailed(uc, io.ErrUnexpectedEOF)
		}
	case upHeld:
		if fx := uc.fx; fx != nil && fx.held == uc {
			fx.held = nil
			uc.a.finish(lb.Result{Status: uc.res.StatusCode, Latency: uc.a.latency}, uc.res.StatusCode, nil)
		}
	}
}

// close closes the connection; it will not be reused.
func (uc *upConn) close() {
	uc.state = upClosed
	if uc.timer != nil {
		uc.timer.Stop()
	}
	if uc.gc != nil {
		uc.gc.Close()
	}
}

// maxResponseHead bounds a response head, as h1Client does.
const maxResponseHead = 1 << 20

// readHead parses the response head once it is all in.
func (uc *upConn) readHead() {
	fx, a := uc.fx, uc.a
	for {
		n := uc.gc.InboundBuffered()
		if n == 0 {
			return
		}
		buf, err := uc.gc.Peek(n)
		if err != nil {
			return
		}
		end := bytes.Index(buf, crlfcrlf)
		if end < 0 {
			if n > maxResponseHead {
				uc.close()
				uc.failed(errors.New("proxy: upstream response head larger than 1 MiB"))
			}
			return
		}
		raw := buf[:end+4]
		res, framing, clen, err := uc.parseResponseHead(raw, &a.req)
		if err != nil {
			uc.close()
			uc.failed(err)
			return
		}
		uc.gc.Discard(end + 4)
		if res.StatusCode == http.StatusRequestTimeout && uc.reused && res.Close {
			uc.close()
			uc.failed(errStaleConn)
			return
		}
		if res.StatusCode < 200 {
			if res.StatusCode == http.StatusSwitchingProtocols {
				uc.close()
				uc.failed(errors.New("proxy: upstream switched protocols without an upgrade request"))
				return
			}
			continue // 100 Continue, 103 Early Hints: the final answer follows
		}
		if uc.timer != nil {
			uc.timer.Stop()
		}
		uc.res = res
		uc.dec.reset(framing, clen)
		fx.gotHead(uc)
		return
	}
}

// parseResponseHead parses a whole response head with the one parser
// (parseSimpleResponse), or net/http's reader for the shapes it leaves
// (chunked, no length, 1xx, 204, 304), and says how the body is framed.
func (uc *upConn) parseResponseHead(raw []byte, req *http.Request) (*http.Response, h1Framing, int64, error) {
	if simpleResponseShape(raw) {
		// The head's names and values are cut from a copy kept in uc,
		// overwritten only by uc's next response, when this exchange
		// (the only reader of the head) has ended.
		uc.raw = append(uc.raw[:0], raw...)
		if res, clen, ok := parseSimpleResponseInto(unsafe.String(unsafe.SliceData(uc.raw), len(uc.raw)), req, &uc.head); ok {
			if req.Method == http.MethodHead || clen == 0 {
				return res, frameNone, 0, nil
			}
			return res, frameLength, clen, nil
		}
	}
	res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), req)
	if err != nil {
		return nil, 0, 0, err
	}
	switch {
	case req.Method == http.MethodHead || res.StatusCode < 200 ||
		res.StatusCode == http.StatusNoContent || res.StatusCode == http.StatusNotModified:
		return res, frameNone, 0, nil
	case len(res.TransferEncoding) > 0:
		return res, frameChunked, 0, nil
	case res.ContentLength >= 0:
		return res, frameLength, res.ContentLength, nil
	}
	res.Close = true
	return res, frameClose, 0, nil
}

// remove takes uc out of the running attempts.
func (fx *loopExchange) remove(uc *upConn) {
	for i, o := range fx.running {
		if o == uc {
			copy(fx.running[i:], fx.running[i+1:])
			fx.running[len(fx.running)-1] = nil
			fx.running = fx.running[:len(fx.running)-1]
			return
		}
	}
}

// endWait ends uc's wait for a head: off the in-flight set, its context
// no longer watched.
func (uc *upConn) endWait() {
	fx := uc.fx
	fx.x.p.inflight.remove(uc.a)
	uc.a.onLeft = nil
	fx.remove(uc)
}

// failed ends uc's attempt with err before any response head: a stale
// kept-alive connection is resent once on a fresh one; otherwise the
// request is retried elsewhere when the rules allow, or answered.
func (uc *upConn) failed(err error) {
	fx, a := uc.fx, uc.a
	if fx == nil || fx.done {
		uc.close()
		return
	}
	uc.endWait()
	uc.close()
	x := &fx.x
	uc.fx, uc.a = nil, nil
	if errors.Is(err, errStaleConn) && !fx.wasResent(a) && x.ctx.Err() == nil {
		// Nothing the instance could have answered: once more on a fresh
		// connection, as h1Client and net/http do; not a new attempt.
		fx.resent = append(fx.resent, a)
		fx.launch(a, true)
		return
	}
	if errors.Is(err, errStaleConn) {
		err = errors.Join(errStaleConn, io.ErrUnexpectedEOF)
	}
	if a.lost {
		return
	}
	if len(fx.running) > 0 {
		// Others still race: the first head wins, this one lost.
		a.lose(nil, err, fx.tryTimeout)
		fx.tried = append(fx.tried, a.inst)
		return
	}
	a.finish(x.failedResult(a, err), 0, err)
	x.err = err
	inst := a.inst
	retry := x.triesLeft(inst, fx.tried) && x.retryable(a, err) && x.retryAllowed(err)
	if x.p.log.IsDebug() {
		x.p.log.Debug("upstream attempt failed", "service", x.route.service,
			"instance", inst.ID, "attempt", a.n, "retry", retry, "error", err)
	}
	fx.stopTry()
	if retry {
		fx.tried = append(fx.tried, inst)
		fx.next()
		return
	}
	x.failUpstream()
	fx.answer()
}

func (fx *loopExchange) wasResent(a *attempt) bool {
	for _, o := range fx.resent {
		if o == a {
			return true
		}
	}
	return false
}

// armTry starts the per-try timeout for the newest attempt.
func (fx *loopExchange) armTry() {
	d := fx.tryTimeout
	if d <= 0 {
		return
	}
	fx.timerDue = time.Now().Add(d).UnixNano()
	if fx.timer == nil {
		fx.timer = time.AfterFunc(d, fx.tryFired)
	} else {
		fx.timer.Reset(d)
	}
}

func (fx *loopExchange) stopTry() {
	if fx.timer != nil {
		fx.timer.Stop()
	}
	fx.timerDue = 0
}

func (fx *loopExchange) tryFired() {
	fx.ls.gate.execute(fx.ls.el, func() {
		if !fx.done && fx.timerDue != 0 && time.Now().UnixNano() >= fx.timerDue {
			fx.timerDue = 0
			fx.hedge()
		}
	})
}

// hedge sends the request to one more instance after a per-try timeout
// passed with no response head (hedgeRace.hedge, on the loop).
func (fx *loopExchange) hedge() {
	x := &fx.x
	if len(fx.running) == 0 || fx.body != nil || x.attempts >= x.p.cfg.MaxAttempts || x.ctx.Err() != nil {
		return
	}
	bud := &x.route.hedge.budget
	if !bud.allows(time.Now()) {
		bud.refused.Add(1)
		return
	}
	exclude := fx.tried
	for _, o := range fx.running {
		exclude = append(exclude, o.a.inst)
	}
	inst, err := x.route.balancer.Pick(x.r, exclude)
	clear(exclude[len(fx.tried):])
	if err != nil {
		return
	}
	if !bud.withdraw(time.Now(), true) {
		x.route.balancer.Done(inst, lb.Result{})
		return
	}
	x.attempts++
	b := x.newAttempt(inst, x.attempts)
	if x.rec != nil {
		x.recordHedge()
	}
	fx.launch(b, false)
	if x.attempts < x.p.cfg.MaxAttempts {
		fx.armTry()
	}
}

// gotHead runs when uc's response head came: it wins the race, the
// others are cancelled and their connections dropped.
func (fx *loopExchange) gotHead(uc *upConn) {
	x, a := &fx.x, uc.a
	uc.endWait()
	fx.stopTry()
	for len(fx.running) > 0 {
		o := fx.running[0]
		o.endWait()
		o.close()
		oa := o.a
		o.fx, o.a = nil, nil
		oa.lose(nil, errHedgeLost, fx.tryTimeout)
		fx.tried = append(fx.tried, oa.inst)
	}
	if h := x.route.hedge; h != nil {
		h.lat.observe(time.Now(), time.Since(a.start))
	}
	a.res = uc.res
	a.latency = time.Since(a.start)
	res := uc.res
	if x.drainSignal(a.inst, res) && res.StatusCode == http.StatusServiceUnavailable &&
		x.triesLeft(a.inst, fx.tried) && x.ctx.Err() == nil {
		// The instance said first-hand it is going away and did not
		// serve: try another one, or pass its 503 on if none is left.
		if fx.held != nil {
			fx.discardHeld()
		}
		uc.state = upHeld
		a.draining = true
		fx.held = uc
		fx.tried = append(fx.tried, a.inst)
		fx.next()
		return
	}
	fx.respond(uc)
}

// discardHeld drops the held draining 503 with its connection.
func (fx *loopExchange) discardHeld() {
	uc := fx.held
	fx.held = nil
	a, res := uc.a, uc.res
	uc.close()
	uc.fx, uc.a = nil, nil
	a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency, RetryAfter: retryAfter(res)}, res.StatusCode, nil)
}

// respond writes uc's response head to the client and streams its body.
func (fx *loopExchange) respond(uc *upConn) {
	x, a, res := &fx.x, uc.a, uc.res
	x.inst = a.inst
	x.status = res.StatusCode
	x.err = nil
	removeHopByHop(res.Header)
	w := fx.w
	h := w.header
	for k, vv := range res.Header {
		h[k] = vv
	}
	if uc.dec.framing == frameChunked || uc.dec.framing == frameClose {
		delete(h, "Content-Length")
	}
	x.setTraceResponse(h)
	w.WriteHeader(res.StatusCode)
	w.sendHead(false)
	fx.headOut, fx.pending = true, true
	fx.body = uc
	uc.state = upBody
	fx.feed(uc)
}

// feed moves body bytes from uc to the client.
func (fx *loopExchange) feed(uc *upConn) {
	w := fx.w
	for !uc.dec.done {
		n := uc.gc.InboundBuffered()
		if n == 0 {
			break
		}
		in, err := uc.gc.Peek(n)
		if err != nil {
			break
		}
		// A flush's worth at a time, so that the client's buffer passes
		// the high-water mark by at most that much.
		data, used, err := uc.dec.next(in[:min(len(in), loopFlushSize)])
		if err != nil {
			fx.bodyFailed(uc, err)
			return
		}
		if len(data) > 0 && !w.noBody {
			if w.clen >= 0 && w.written+int64(len(data)) > w.clen {
				data = data[:w.clen-w.written]
			}
			fx.writeBody(data)
			w.written += int64(len(data))
			fx.x.written = w.written
		}
		uc.gc.Discard(used)
		if used == 0 {
			break
		}
		ob := fx.c.OutboundBuffered()
		fx.s.noteOutbound(ob)
		if !uc.dec.done && ob > loopHighWater {
			fx.offLoop(uc)
			return
		}
	}
	if uc.dec.done {
		fx.bodyDone(uc, uc.gc.InboundBuffered() == 0)
	} else if fx.pending {
		fx.flushHead()
	}
}

// writeBody writes data to the client with the pending head, framed as
// the response is.
func (fx *loopExchange) writeBody(data []byte) {
	iov := fx.iov[:0]
	if fx.pending {
		iov = append(iov, *fx.w.out)
	}
	if fx.w.chunked {
		iov = append(iov, append(strconv.AppendInt(fx.size[:0], int64(len(data)), 16), '\r', '\n'), data, crlf)
	} else {
		iov = append(iov, data)
	}
	fx.c.Writev(iov)
	clear(fx.iov[:])
	if fx.pending {
		fx.pending = false
		*fx.w.out = (*fx.w.out)[:0]
	}
}

// flushHead writes the pending bytes alone.
func (fx *loopExchange) flushHead() {
	if len(*fx.w.out) > 0 {
		fx.c.Write(*fx.w.out)
	}
	*fx.w.out = (*fx.w.out)[:0]
	fx.pending = false
}

// bodyDone ends the body: the chunked end goes out, the attempt is
// reported, the upstream connection goes back to the pool when reusable.
func (fx *loopExchange) bodyDone(uc *upConn, reusable bool) {
	w := fx.w
	fx.appendEnd(uc)
	fx.flushHead()
	a, res := uc.a, uc.res
	a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency, RetryAfter: retryAfter(res)}, res.StatusCode, nil)
	fx.body = nil
	if reusable && !res.Close && uc.dec.framing != frameClose && uc.state == upBody {
		uc.ls.put(uc, uc.ls.maxIdle)
	} else {
		uc.close()
		uc.fx, uc.a = nil, nil
	}
	keep := !w.close && !fx.x.r.Close && !fx.s.shutting.Load()
	if !w.noBody && w.clen >= 0 && w.written != w.clen {
		keep = false
	}
	fx.end(keep)
}

// appendEnd appends the chunked body's end and the upstream's trailers to
// the pending bytes.
func (fx *loopExchange) appendEnd(uc *upConn) {
	w := fx.w
	if !w.chunked {
		return
	}
	b := append(*w.out, "0\r\n"...)
	b = append(b, uc.dec.trailers...)
	b = append(b, '\r', '\n')
	*w.out = b
	fx.pending = true
}

// bodyFailed ends an exchange whose upstream body broke off: the client
// connection is cut so a truncated body is not taken for a whole one.
func (fx *loopExchange) bodyFailed(uc *upConn, err error) {
	x, a, res := &fx.x, uc.a, uc.res
	uc.close()
	uc.fx, uc.a = nil, nil
	fx.body = nil
	result := lb.Result{Status: res.StatusCode, Latency: a.latency, RetryAfter: retryAfter(res)}
	if x.ctx.Err() == nil {
		result.Err = err
		x.err = err
		x.abort = true
	}
	a.finish(result, res.StatusCode, err)
	if fx.pending {
		fx.flushHead()
	}
	fx.end(false)
}

// answer writes the error answer the exchange made (fail) and ends.
func (fx *loopExchange) answer() {
	w := fx.w
	fx.headOut = true
	keep := w.finish() && !fx.x.r.Close && !fx.s.shutting.Load()
	fx.c.Write(*w.out)
	*w.out = (*w.out)[:0]
	fx.end(keep)
}

// report ends the span and the record, and counts the request, as
// ServeHTTP's end and the agent's metrics do.
func (fx *loopExchange) report() {
	x := &fx.x
	if x.span != nil {
		x.endServerSpan()
	}
	if x.rec != nil {
		x.endRecord()
	}
	if f := x.p.cfg.OnFailure; f != nil && x.status >= 500 {
		id := ""
		if x.inst != nil {
			id = x.inst.ID
		}
		f(x.route.service, id, x.traceID(), x.status)
	}
	if o := fx.s.opts.Observe; o != nil {
		o(x.status, time.Since(x.start))
	}
	if x.p.cfg.AccessLog {
		fx.s.logs.add(x.accessArgs())
	}
}

// accessQueue takes the access log lines of the requests served on the
// loops to a goroutine that writes them: a loop never waits on a log
// write. When the writer falls behind by more than accessQueueSize lines,
// lines are dropped and counted, and the count is logged.
type accessQueue struct {
	log     hclog.Logger
	ch      chan []any
	dropped atomic.Int64
	quit    chan struct{}
	done    chan struct{}
	stopped sync.Once
}

const accessQueueSize = 8192

func (q *accessQueue) start(log hclog.Logger) {
	q.log, q.ch = log, make(chan []any, accessQueueSize)
	q.quit, q.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(q.done)
		for {
			select {
			case args := <-q.ch:
				q.write(args)
			case <-q.quit:
				for {
					select {
					case args := <-q.ch:
						q.write(args)
					default:
						return
					}
				}
			}
		}
	}()
}

func (q *accessQueue) write(args []any) {
	q.log.Info("request", args...)
	if n := q.dropped.Swap(0); n > 0 {
		q.log.Warn("access log lines dropped: the log writer fell behind", "lines", n)
	}
}

// add queues a line; it never waits.
func (q *accessQueue) add(args []any) {
	select {
	case q.ch <- args:
	default:
		q.dropped.Add(1)
	}
}

// stop writes what is queued and ends the writer (once; a line added
// later is dropped).
func (q *accessQueue) stop() {
	if q.quit == nil {
		return
	}
	q.stopped.Do(func() {
		close(q.quit)
		<-q.done
	})
}

// end finishes the exchange on the loop: the connection reads the next
// request, or closes.
func (fx *loopExchange) end(keep bool) {
	fx.done = true
	fx.stopTry()
	fx.report()
	lc, c, abort := fx.lc, fx.c, fx.x.abort
	lc.fx = nil
	fx.recycle()
	fx.ls.freeExchange(fx)
	if abort {
		lc.finished(c, false)
		c.Close()
		return
	}
	lc.finished(c, keep)
}

// recycle gives the writer and its buffer back.
func (fx *loopExchange) recycle() {
	w := fx.w
	if w.out != nil {
		putOut(w.out)
		w.out = nil
	}
	clear(w.header)
	w.lc, w.c, w.req, w.ctx, w.final_, w.err = nil, nil, nil, nil, nil, nil
	respPool.Put(w)
	fx.w = nil
}

// clientGone ends the exchange when the client closed: attempts are
// cancelled and their connections closed, never reused.
func (fx *loopExchange) clientGone() {
	if fx.done {
		return
	}
	x := &fx.x
	for len(fx.running) > 0 {
		uc := fx.running[0]
		a := uc.a
		uc.endWait()
		uc.close()
		uc.fx, uc.a = nil, nil
		a.finish(lb.Result{}, 0, context.Canceled) // says nothing of the instance
	}
	if fx.held != nil {
		fx.discardHeld()
	}
	if uc := fx.body; uc != nil {
		a, res := uc.a, uc.res
		uc.close()
		uc.fx, uc.a = nil, nil
		a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency}, res.StatusCode, nil)
		fx.body = nil
	}
	if uc := fx.offUC; uc != nil {
		fx.offNC.Close()
		a, res := uc.a, uc.res
		a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency}, res.StatusCode, nil)
		fx.offUC, fx.offNC = nil, nil
	}
	if !fx.headOut {
		x.status = statusClientClosed
	}
	fx.done = true
	fx.stopTry()
	fx.report()
	fx.recycle()
	fx.ls.freeExchange(fx)
}

// offLoop hands the rest of uc's body to a goroutine that writes it
// through the loop response writer, which waits while the client is
// behind: the client reads slower than the instance sends.
func (fx *loopExchange) offLoop(uc *upConn) {
	if fx.pending {
		fx.flushHead()
	}
	fd, err := uc.gc.Dup()
	var nc net.Conn
	if err == nil {
		f := os.NewFile(uintptr(fd), "upstream")
		nc, err = net.FileConn(f)
		f.Close()
	}
	if err != nil {
		fx.bodyFailed(uc, err)
		return
	}
	var rest []byte
	if n := uc.gc.InboundBuffered(); n > 0 {
		b, _ := uc.gc.Peek(n)
		rest = bytes.Clone(b)
		uc.gc.Discard(n)
	}
	// Its loop descriptor closes now, before the loop reads from it
	// again (Conn.Close would only queue the close); the dup lives on.
	uc.state = upClosed
	if uc.inTraffic {
		uc.closeNow = true // traffic returns gnet.Close
	} else {
		uc.ls.el.Close(uc.gc)
	}
	fx.body = nil
	fx.s.offLoop.Add(1)
	fx.offUC, fx.offNC = uc, nc
	// The goroutine starts once the client caught up, as the writer's
	// every later buffer waits.
	fx.lc.waitDrain(fx.c, loopLowWater, func(gnet.Conn) {
		fx.offUC, fx.offNC = nil, nil
		// From here a context tells the goroutine of the client's close
		// (the writer's wait included); fx is not reused.
		ctx, cancel := context.WithCancel(context.Background())
		fx.lc.cancel = cancel
		fx.w.ctx, fx.x.ctx = ctx, ctx
		fx.lc.fx = nil
		go fx.streamRest(uc, nc, rest)
	})
}

// streamRest runs on a goroutine: the body's rest from nc, then the end.
func (fx *loopExchange) streamRest(uc *upConn, nc net.Conn, rest []byte) {
	defer nc.Close()
	x, w, a, res := &fx.x, fx.w, uc.a, uc.res
	stop := context.AfterFunc(x.ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	var readErr error
	for !uc.dec.done && w.err == nil {
		if len(rest) == 0 {
			n, err := nc.Read(*bp)
			rest = (*bp)[:n]
			if err != nil && n == 0 {
				if err == io.EOF && uc.dec.framing == frameClose {
					uc.dec.done = true
					break
				}
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				readErr = err
				break
			}
		}
		data, used, err := uc.dec.next(rest)
		if err != nil {
			readErr = err
			break
		}
		rest = rest[used:]
		if len(data) > 0 {
			w.Write(data)
			x.written = w.written
		}
	}
	result := lb.Result{Status: res.StatusCode, Latency: a.latency, RetryAfter: retryAfter(res)}
	keep := readErr == nil && w.err == nil
	if readErr != nil && x.ctx.Err() == nil {
		result.Err, x.err = readErr, readErr
	}
	a.finish(result, res.StatusCode, readErr)
	if keep {
		if w.chunked {
			b := append(*w.out, "0\r\n"...)
			b = append(b, uc.dec.trailers...)
			*w.out = append(b, '\r', '\n')
		}
		keep = !w.close && !x.r.Close && !fx.s.shutting.Load() && (w.noBody || w.clen < 0 || w.written == w.clen)
	}
	fx.done = true
	fx.report()
	w.final(keep)
}

// loopStates keeps the servers whose loops hold upstream connections of
// a proxy, for InstancesLeft.
var loopServers sync.Map // *Proxy → *LoopServer

// closeLoopIdle closes the idle loop connections to addr on every loop
// serving p.
func closeLoopIdle(p *Proxy, addr string) {
	v, ok := loopServers.Load(p)
	if !ok {
		return
	}
	v.(*LoopServer).states.Range(func(_, v any) bool {
		ls := v.(*loopState)
		ls.gate.execute(ls.el, func() { ls.closeIdle(addr) })
		return true
	})
}
