package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"time"

	"github.com/meshlb/meshlb/proxy/httpcache"
)

// The shared cache (RFC 9111) hooks into an exchange at three points, so
// every data path that runs an exchange caches alike: cacheBefore, before
// forwarding (answer from the store, or prepare a validation and take the
// URL's fill lock); cacheResponse, when an upstream answer is in (merge a
// 304, serve stale in place of an error, invalidate after an unsafe
// method, or tee a storable body); cacheEnd, when the exchange is over
// (store the body, release the lock, count). The HTTP rules themselves are
// pure functions in package httpcache.

// cacheState is an exchange's dealings with its route's cache.
type cacheState struct {
	c      *httpcache.Cache
	key    string // store key; "" when the cache is not involved
	reqCC  httpcache.Directives
	entry  *httpcache.Entry // a stored response found for the request (maybe stale)
	status httpcache.Status
	fill   *httpcache.Fill

	reqHeader  http.Header // the client's fields, before forwarding changes them
	validating bool        // the request carries the entry's validators
	condINM    []string    // the client's own If-None-Match, while validating
	condIMS    []string    // the client's own If-Modified-Since, while validating

	pending *httpcache.Entry // the response being stored, body still arriving
	tee     *teeBody

	sw   servedWriter // for answers from the cache
	vals [2]string    // Age and Cache-Status field values, one allocation
}

// CacheStatus returns the Cache-Status member the exchange answered with
// ("" when its route has no cache or the cache was not involved), for the
// request records.
func (x *exchange) CacheStatus() string {
	if x.cache == nil || x.cache.key == "" {
		return ""
	}
	return x.cache.status.String()
}

// surrogateCapability is the Surrogate-Capability member the cache adds
// to the requests it forwards.
const surrogateCapability = httpcache.SurrogateTarget + `="Surrogate/1.0"`

// backgroundKey marks the context of a stale-while-revalidate refresh; its
// value is the Fill the refresh holds.
type backgroundKey struct{}

// cacheBefore looks the request up in the route's cache. It returns true
// when the request was answered from the cache (or refused with 504 under
// only-if-cached); false when it must be forwarded.
func (x *exchange) cacheBefore(c *httpcache.Cache) (served bool) {
	r := x.r
	if x.grpc || upgradeType(r.Header) != "" {
		return false
	}
	target := r.RequestURI // as the client sent it, like nginx's $request_uri
	if target == "" || target[0] != '/' {
		target = r.URL.RequestURI()
	}
	cs := &cacheState{c: c, key: httpcache.Key(r.Host, target)}
	x.cache = cs
	defer func() {
		if !served {
			// Tell the origin a surrogate is here, so it may target
			// Surrogate-Control directives at it (W3C Edge Architecture).
			r.Header["Surrogate-Capability"] = append(r.Header["Surrogate-Capability"], surrogateCapability)
		}
	}()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		cs.status.Fwd = "method"
		return false
	}
	cs.reqCC = httpcache.RequestDirectives(r.Header)
	_, ranged := r.Header["Range"]
	bg, _ := x.ctx.Value(backgroundKey{}).(*httpcache.Fill)
	e, miss := c.Lookup(cs.key, r.Header)
	cs.entry = e
	if e == nil {
		cs.status.Fwd = miss
	} else if bg != nil {
		cs.status.Fwd = "stale"
	} else {
		now := time.Now()
		v, reason := httpcache.Decide(e, &cs.reqCC, now)
		switch v {
		case httpcache.Fresh, httpcache.Stale:
			cs.status.Hit = true
			x.serveEntry(e, now)
			return true
		case httpcache.StaleRevalidate:
			cs.status.Hit = true
			x.serveEntry(e, now)
			x.revalidateLater()
			return true
		}
		cs.status.Fwd = reason
	}
	if cs.reqCC.OnlyIfCached {
		cs.status.Detail = "only-if-cached"
		x.fail(http.StatusGatewayTimeout, "not in the cache (only-if-cached)")
		return true
	}
	if ranged || r.Method == http.MethodHead {
		// Passed through as asked; the answer is not stored.
		return false
	}
	if bg != nil {
		cs.fill = bg
	} else {
		fill, wait := c.Acquire(cs.key)
		if fill == nil {
			// Another request is fetching this URL: wait for it
			// (bounded), then answer from what it stored if that fits.
			if c.Wait(x.ctx, wait) {
				if e2, _ := c.Lookup(cs.key, r.Header); e2 != nil {
					now := time.Now()
					if v, _ := httpcache.Decide(e2, &cs.reqCC, now); v == httpcache.Fresh || v == httpcache.Stale {
						cs.status.Collapsed = true
						x.serveEntry(e2, now)
						return true
					}
				}
			}
			if x.ctx.Err() != nil {
				x.status = statusClientClosed
				return true
			}
		}
		cs.fill = fill
	}
	cs.reqHeader = r.Header.Clone()
	if e != nil {
		if etag, lm := e.Validators(); etag != "" || lm != "" {
			cs.validating = true
			cs.condINM, cs.condIMS = r.Header["If-None-Match"], r.Header["If-Modified-Since"]
			delete(r.Header, "If-None-Match")
			delete(r.Header, "If-Modified-Since")
			if etag != "" {
				r.Header["If-None-Match"] = []string{etag}
			}
			if lm != "" {
				r.Header["If-Modified-Since"] = []string{lm}
			}
		}
	}
	return false
}

// revalidateLater refreshes the request's stored response in the
// background (stale-while-revalidate), unless a fetch of it is running.
func (x *exchange) revalidateLater() {
	cs := x.cache
	fill, _ := cs.c.Acquire(cs.key)
	if fill == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(x.ctx), x.p.cfg.ResponseHeaderTimeout+x.p.cfg.ConnectTimeout)
	ctx = context.WithValue(ctx, backgroundKey{}, fill)
	req := x.r.Clone(ctx)       // the client's request may be reused once answered
	req.Method = http.MethodGet // a HEAD's refresh stores the GET it answers from
	req.Body, req.ContentLength, req.GetBody = nil, 0, nil
	for _, k := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range"} {
		delete(req.Header, k)
	}
	go func() {
		defer cancel()
		defer fill.Done()
		x.p.ServeHTTP(refreshWriter{h: make(http.Header)}, req)
	}()
}

// refreshWriter is the ResponseWriter of a background refresh.
type refreshWriter struct{ h http.Header }

func (w refreshWriter) Header() http.Header       { return w.h }
func (refreshWriter) Write(b []byte) (int, error) { return len(b), nil }
func (refreshWriter) WriteHeader(int)             {}

// serveEntry answers the request from e: stored fields with Age and
// Cache-Status, the body (ranges and the client's conditionals handled
// for a stored 200), nothing from upstream. It is the one place a served
// head is decided, on every path: a plain hit on an event loop (x.w a
// hitWriter, loopcache.go) writes e's wire head, built when it was
// stored, with the same per-request fields.
func (x *exchange) serveEntry(e *httpcache.Entry, now time.Time) {
	cs := x.cache
	cs.status.TTL, cs.status.HasTTL = e.TTL(now), true
	age := e.Age(now)
	if cs.condINM != nil || cs.condIMS != nil {
		x.r.Header["If-None-Match"], x.r.Header["If-Modified-Since"] = cs.condINM, cs.condIMS
	} else if cs.validating {
		delete(x.r.Header, "If-None-Match")
		delete(x.r.Header, "If-Modified-Since")
	}
	plain := e.Status == http.StatusOK && !conditionalOrRange(x.r.Header)
	if hw, ok := x.w.(*hitWriter); ok && plain {
		hw.writeStored(x, e, age)
		return
	}
	h := x.w.Header()
	for k, vv := range e.Header {
		h[k] = vv
	}
	if _, ok := e.Header["Content-Type"]; !ok {
		h["Content-Type"] = nil // neither sniffed nor defaulted
	}
	cs.vals[0] = httpcache.AgeHeader(age)
	cs.vals[1] = cacheStatusValue(cs.status, e.Header["Cache-Status"])
	h["Age"], h["Cache-Status"] = cs.vals[0:1:1], cs.vals[1:2:2]
	x.setTraceResponse(h)
	cs.sw = servedWriter{ResponseWriter: x.w, x: x}
	sw := &cs.sw
	if plain {
		// The common hit: no precondition or range to evaluate.
		h["Content-Length"] = e.ContentLength()
		sw.WriteHeader(http.StatusOK)
		if x.r.Method != http.MethodHead {
			sw.Write(e.Body)
		}
		return
	}
	if e.Status == http.StatusOK {
		var mod time.Time
		if v := e.Header["Last-Modified"]; len(v) > 0 {
			mod, _ = http.ParseTime(v[0])
		} else if notModifiedSince(x.r.Header, e) {
			// RFC 9111 section 4.3.2: without Last-Modified, the Date
			// (or the time received) stands in for it.
			delete(h, "Content-Type")
			delete(h, "Content-Length")
			sw.WriteHeader(http.StatusNotModified)
			return
		}
		http.ServeContent(sw, x.r, "", mod, bytes.NewReader(e.Body))
		return
	}
	sw.WriteHeader(e.Status)
	if x.r.Method != http.MethodHead {
		sw.Write(e.Body)
	}
}

// conditionalOrRange reports whether the request has a precondition or a
// Range for http.ServeContent to evaluate.
func conditionalOrRange(h http.Header) bool {
	for _, k := range [...]string{"Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// notModifiedSince reports whether an If-Modified-Since request without
// If-None-Match is satisfied by e, which has no Last-Modified: e's Date, or
// the time it was received, is not after the given date.
func notModifiedSince(h http.Header, e *httpcache.Entry) bool {
	if _, ok := h["If-None-Match"]; ok {
		return false
	}
	v := h["If-Modified-Since"]
	if len(v) == 0 {
		return false
	}
	since, err := http.ParseTime(v[0])
	if err != nil {
		return false
	}
	mod := e.ResponseTime
	if d := e.Header["Date"]; len(d) > 0 {
		if t, err := http.ParseTime(d[0]); err == nil {
			mod = t
		}
	}
	return !mod.Truncate(time.Second).After(since)
}

// cacheStatusField prepends ours to the Cache-Status members of the caches
// behind us (RFC 9211 section 2).
func cacheStatusField(s httpcache.Status, upstream []string) []string {
	return []string{cacheStatusValue(s, upstream)}
}

func cacheStatusValue(s httpcache.Status, upstream []string) string {
	return string(appendCacheStatus(make([]byte, 0, 64), s, upstream))
}

// appendCacheStatus appends the Cache-Status field value: ours, then the
// members of the caches behind us.
func appendCacheStatus(b []byte, s httpcache.Status, upstream []string) []byte {
	b = s.Append(b)
	for _, u := range upstream {
		b = append(b, ", "...)
		b = append(b, u...)
	}
	return b
}

// servedWriter records the status and body size of an answer from the
// cache for the access log and the records.
type servedWriter struct {
	http.ResponseWriter
	x *exchange
}

func (w *servedWriter) WriteHeader(code int) {
	w.x.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *servedWriter) Write(b []byte) (int, error) {
	if w.x.status == 0 {
		w.x.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.x.written += int64(n)
	return n, err
}

// cacheResponse handles the upstream answer of attempt a before it is
// forwarded. It returns true when it answered the client itself (a 304
// merged into the stored response, or the stored response in place of an
// error) and finished the attempt.
func (x *exchange) cacheResponse(a *attempt) bool {
	cs := x.cache
	if cs.key == "" {
		return false
	}
	r, res := x.r, a.res
	if httpcache.Invalidates(r.Method, res.StatusCode) {
		cs.c.Invalidate(cs.key)
		for _, t := range httpcache.InvalidationTargets(r.URL, r.Host, res.Header) {
			cs.c.Invalidate(httpcache.Key(r.Host, t))
		}
		return false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	now := time.Now()
	if e := cs.entry; e != nil {
		switch {
		case cs.validating && res.StatusCode == http.StatusNotModified:
			// It answers our conditional request on e's validators, so it
			// freshens e even if it names another ETag: e's ETag is kept
			// (Updated), the client would otherwise get a 304 it did not
			// ask for.
			ne := e.Updated(res.Header, a.start, a.start.Add(a.latency))
			cs.c.Store(cs.key, ne)
			a.discard()
			cs.status.FwdStatus = http.StatusNotModified
			x.serveEntry(ne, now)
			return true
		case httpcache.ErrorStatus(res.StatusCode) && !cs.reqCC.NoCache && httpcache.StaleIfError(e, &cs.reqCC, now):
			a.discard()
			cs.status.FwdStatus = res.StatusCode
			cs.status.Detail = "stale-if-error"
			x.serveEntry(e, now)
			return true
		}
	}
	if cs.reqHeader == nil {
		// A range or a HEAD passed through: nothing to store.
		if r.Method == http.MethodHead && res.StatusCode == http.StatusOK && cs.entry != nil {
			x.headUpdate(a)
		}
		delete(res.Header, "Surrogate-Control")
		res.Header["Cache-Status"] = cacheStatusField(cs.status, res.Header["Cache-Status"])
		return false
	}
	removeHopByHop(res.Header)
	resCC := httpcache.ParseCacheControl(res.Header["Cache-Control"])
	ok, _ := httpcache.Storable(r.Method, cs.reqHeader, &cs.reqCC, res.StatusCode, res.Header, &resCC)
	if ok && res.ContentLength > cs.c.MaxObjectSize() {
		ok = false
	}
	if ok {
		e := httpcache.NewEntry(cs.reqHeader, res.StatusCode, res.Header.Clone(), nil, a.start, a.start.Add(a.latency))
		cs.pending = e
		cs.status.Stored = true
		cs.status.TTL, cs.status.HasTTL = e.TTL(now), true
		capHint := 0
		if res.ContentLength > 0 {
			capHint = int(res.ContentLength)
		}
		cs.tee = &teeBody{ReadCloser: res.Body, max: int(cs.c.MaxObjectSize()), buf: make([]byte, 0, capHint)}
		res.Body = cs.tee
	} else if cs.entry != nil {
		// The stored response is outdated and this one may not replace it.
		cs.c.Invalidate(cs.key)
	}
	delete(res.Header, "Surrogate-Control") // for us, not for the clients
	res.Header["Cache-Status"] = cacheStatusField(cs.status, res.Header["Cache-Status"])
	return false
}

// headUpdate applies the 200 answer to a forwarded HEAD to the stored GET
// response the request selected (RFC 9111 section 4.3.5): when every
// validator the HEAD response carries (ETag, Last-Modified) and its
// Content-Length match the stored response, its fields update it as a
// 304's would; otherwise the stored response is outdated and dropped
// (the RFC says to consider it stale; it was not fresh, or the HEAD
// would not have been forwarded). A response that may not be stored
// drops it too.
func (x *exchange) headUpdate(a *attempt) {
	cs, res, e := x.cache, a.res, x.cache.entry
	etag, lm := e.Validators()
	match := true
	if v := res.Header["Etag"]; len(v) > 0 && v[0] != etag {
		match = false
	}
	if v := res.Header["Last-Modified"]; len(v) > 0 && v[0] != lm {
		match = false
	}
	if v := res.Header["Content-Length"]; len(v) > 0 && v[0] != e.ContentLength()[0] {
		match = false
	}
	h := res.Header.Clone()
	removeHopByHop(h)
	resCC := httpcache.ParseCacheControl(h["Cache-Control"])
	if ok, _ := httpcache.Storable(http.MethodGet, x.r.Header, &cs.reqCC, res.StatusCode, h, &resCC); !ok || !match {
		cs.c.Invalidate(cs.key)
		return
	}
	cs.c.Store(cs.key, e.Updated(h, a.start, a.start.Add(a.latency)))
}

// cacheStale answers with the stored response when the request could not
// be forwarded (no instance, or every attempt failed) and the response may
// be served stale then: disconnected (RFC 9111 section 4.2.4) or
// stale-if-error. It returns false when there is nothing to serve.
func (x *exchange) cacheStale() bool {
	cs := x.cache
	if cs == nil || cs.entry == nil || x.r.Context().Err() != nil || cs.reqCC.NoCache {
		return false
	}
	now := time.Now()
	if !httpcache.Disconnected(cs.entry) && !httpcache.StaleIfError(cs.entry, &cs.reqCC, now) {
		return false
	}
	cs.status.Detail = "stale-if-error"
	x.serveEntry(cs.entry, now)
	return true
}

// cacheEnd stores a completely received body, releases the fill lock and
// counts the outcome.
func (x *exchange) cacheEnd() {
	cs := x.cache
	if cs.key == "" {
		return
	}
	if cs.pending != nil && cs.tee.eof && !cs.tee.over && x.err == nil {
		body := cs.tee.buf
		if cap(body)-len(body) > len(body)/8 {
			// Grown by append (no Content-Length): keep only what is used,
			// so the bytes held match the bytes counted.
			body = append([]byte(nil), body...)
		}
		cs.pending.SetBody(body)
		cs.c.Store(cs.key, cs.pending)
	}
	cs.fill.Done()
	cs.c.Count(&cs.status)
}

// teeBody keeps a copy of the response body while it is forwarded, up to
// max bytes; beyond that it lets go of the copy.
type teeBody struct {
	io.ReadCloser
	max  int
	buf  []byte
	over bool
	eof  bool
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if n > 0 && !t.over {
		if len(t.buf)+n > t.max {
			t.over, t.buf = true, nil
		} else {
			t.buf = append(t.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		t.eof = true
	}
	return n, err
}
