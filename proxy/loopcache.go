package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/meshlb/meshlb/proxy/httpcache"
)

// Fresh cache hits are answered on the event loop (when LoopOptions.Proxy
// is set): a request its route's cache can answer without the origin is
// served where its head was parsed, with no goroutine, no context and no
// hand-over through AsyncWrite. Everything else (a miss, a stale entry, a
// revalidation, only-if-cached without an entry, a route without a cache)
// runs the handler as before.
//
// A hit served on the loop goes through the same hooks as one served by
// Proxy.ServeHTTP: the server span (and traceresponse), the request
// record, the access log line and the cache's counters; LoopOptions.Observe
// stands in for the handler's wrappers (the agent's request metrics).

const (
	// maxLoopHits bounds the pipelined requests answered from the cache
	// on the loop one after another (each one reads the next through
	// loopConn.finished, a recursion): the next takes the goroutine path,
	// whose answer comes back on a fresh stack.
	maxLoopHits = 64
	// maxLoopHitBody is the largest body a plain hit writes on the loop:
	// what a slow client cannot take stays in the connection's outbound
	// buffer, so a larger body goes the goroutine path, whose writer
	// holds back (loopHighWater).
	maxLoopHitBody = loopHighWater
	// maxLoopHitOther bounds the stored size of an entry served on the
	// loop through the generic writer (conditional requests, a range,
	// other statuses): its answer must fit the writer's buffer, which on
	// the loop can never be handed over half-way.
	maxLoopHitOther = loopFlushSize / 2
	// loopCopyBody is the largest body copied after the head for one
	// write; a larger one goes out with writev, uncopied.
	loopCopyBody = 4 << 10
)

// loopHit is the state of one hit served on a loop: pooled, as it lives
// only while the loop serves it.
type loopHit struct {
	x  exchange
	cs cacheState
	hw hitWriter
}

var hitPool = sync.Pool{New: func() any { return &loopHit{hw: hitWriter{h: make(http.Header, 2)}} }}

// serveFromCache answers req on the loop when its route's cache holds a
// response it may use without the origin (fresh, or stale within the
// client's max-stale) and returns true; false leaves req to the handler.
// It runs after the head was consumed, with lc busy; a true return has
// finished the request (lc.finished), the next pipelined one included.
func (lc *loopConn) serveFromCache(c gnet.Conn, req *http.Request) bool {
	p := lc.s.opts.Proxy
	if p == nil || lc.loopHits >= maxLoopHits {
		return false
	}
	if c.OutboundBuffered() > loopHighWater {
		// The client reads slower than it asks (pipelining): the
		// goroutine path waits for it before the next answer.
		return false
	}
	// The loop parses only GET and HEAD with no body, upgrade or gRPC
	// content type: cacheBefore's own preconditions hold.
	rt := p.routes.Load()
	if !rt.caching {
		return false
	}
	route := rt.match(req.Host, req.URL.Path)
	if route == nil || route.cache == nil {
		return false
	}
	cache := route.cache
	key := httpcache.Key(req.Host, req.RequestURI)
	e, _ := cache.Lookup(key, req.Header)
	if e == nil {
		return false
	}
	reqCC := httpcache.RequestDirectives(req.Header)
	start := time.Now()
	if v, _ := httpcache.Decide(e, &reqCC, start); v != httpcache.Fresh && v != httpcache.Stale {
		return false
	}
	wire, _ := e.Wire()
	plain := e.Status == http.StatusOK && wire != nil && !conditionalOrRange(req.Header)
	if plain && len(e.Body) > maxLoopHitBody ||
		!plain && (e.Size() > maxLoopHitOther || strings.Contains(req.Header.Get("Range"), ",")) {
		return false
	}
	lh := hitPool.Get().(*loopHit)
	lh.x = exchange{p: p, r: req, ctx: req.Context(), route: route, start: start}
	lh.cs = cacheState{c: cache, key: key, reqCC: reqCC, entry: e}
	lh.cs.status.Hit = true
	lh.x.cache = &lh.cs
	keep, ok := lc.answerHit(c, lh, lc.s.opts.Observe, plain)
	if !ok {
		c.Close() // as net/http cuts the connection of a handler that panicked
		return true
	}
	lc.loopHits++
	lc.finished(c, keep)
	lc.loopHits--
	return true
}

// answerHit writes the answer to lh's request from its entry and runs the
// hooks of a request's end; keep says whether the connection may carry
// another request, ok is false when it panicked (logged; the connection
// must close).
func (lc *loopConn) answerHit(c gnet.Conn, lh *loopHit, observe func(int, time.Duration), plain bool) (keep, ok bool) {
	defer func() {
		if v := recover(); v != nil {
			keep, ok = false, false
			if l := lc.s.srv.ErrorLog; l != nil {
				l.Printf("http: panic serving %s from the cache: %v", lc.remote, v)
			}
		}
	}()
	x, p, req, e := &lh.x, lh.x.p, lh.x.r, lh.cs.entry
	keep = !req.Close && !lc.s.shutting.Load()
	var lr *loopResponse
	if plain {
		hw := &lh.hw
		hw.close = !keep
		x.w = hw
	} else {
		// A precondition, a range or another status: the loop's
		// response writer, whose buffer holds the whole answer.
		lr = respPool.Get().(*loopResponse)
		lr.reset(lc, c)
		lr.req, lr.ctx = req, x.ctx
		lr.out = outPool.Get().(*[]byte)
		x.w = lr
	}
	if p.tracer != nil {
		x.startServerSpan()
	}
	if p.cfg.Recorder != nil {
		x.startRecord()
	}
	x.serveEntry(e, x.start)
	if lr != nil {
		keep = lr.finish() && keep
	}
	// As Proxy.ServeHTTP ends a request, before its last bytes leave: a
	// client that has the answer finds it counted.
	x.cacheEnd()
	if x.span != nil {
		x.endServerSpan()
	}
	if p.cfg.AccessLog {
		x.logAccess()
	}
	if x.rec != nil {
		x.endRecord()
	}
	if observe != nil {
		observe(x.status, time.Since(x.start))
	}
	if lr != nil {
		c.Write(*lr.out)
		putOut(lr.out)
		clear(lr.header)
		lr.lc, lr.c, lr.req, lr.ctx, lr.out = nil, nil, nil, nil, nil
		respPool.Put(lr)
	} else {
		hw := &lh.hw
		if len(hw.body) > loopCopyBody {
			hw.iov = [2][]byte{hw.out, hw.body}
			c.Writev(hw.iov[:])
		} else {
			hw.out = append(hw.out, hw.body...) // one write; copying is cheaper than an iovec
			c.Write(hw.out)
		}
	}
	lc.s.noteOutbound(c.OutboundBuffered())
	lh.release()
	return keep, true
}

// release returns lh to the pool, holding nothing of the request.
func (lh *loopHit) release() {
	lh.x = exchange{}
	lh.cs = cacheState{}
	hw := &lh.hw
	clear(hw.h)
	hw.body, hw.iov = nil, [2][]byte{}
	if cap(hw.out) > loopFlushSize {
		hw.out = nil
	}
	hw.out = hw.out[:0]
	hitPool.Put(lh)
}

// hitWriter is the ResponseWriter of a plain hit on a loop: serveEntry
// sees it and calls writeStored, which lays the response out for one
// write. Its header map only takes what the hooks set before (the
// traceresponse, also kept in the exchange).
type hitWriter struct {
	h     http.Header
	out   []byte // the head
	body  []byte // the stored body, written after the head
	iov   [2][]byte
	close bool // the connection closes after this answer
}

func (w *hitWriter) Header() http.Header         { return w.h }
func (w *hitWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *hitWriter) WriteHeader(int)             {}

// writeStored lays out the answer to x from e, a stored 200, served at
// age: e's wire head (built when it was stored), then the fields of this
// answer, as serveEntry's generic path sets them.
func (w *hitWriter) writeStored(x *exchange, e *httpcache.Entry, age time.Duration) {
	cs := x.cache
	head, hasDate := e.Wire()
	b := append(w.out[:0], head...)
	b = append(b, "Age: "...)
	b = strconv.AppendInt(b, int64(age/time.Second), 10)
	b = append(b, "\r\nCache-Status: "...)
	b = appendCacheStatus(b, cs.status, e.Header["Cache-Status"])
	b = append(b, '\r', '\n')
	if tr := x.traceResp[0]; tr != "" {
		b = append(b, "Traceresponse: "...)
		b = append(b, tr...)
		b = append(b, '\r', '\n')
	}
	if !hasDate {
		b = append(b, "Date: "...)
		b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
		b = append(b, '\r', '\n')
	}
	if w.close {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, '\r', '\n')
	w.out = b
	x.status = http.StatusOK
	if x.r.Method != http.MethodHead {
		w.body = e.Body
		x.written = int64(len(e.Body))
	}
}
