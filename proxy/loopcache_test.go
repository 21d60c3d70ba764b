package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/proxy/httpcache"
)

// hitServer is a caching proxy behind a LoopServer that answers cache
// hits on its loop, with counters on every way a request can go: the
// upstream, the handler (the goroutine path) and the loop's Observe.
type hitServer struct {
	up       *upstream
	p        *Proxy
	cache    *httpcache.Cache
	addr     string
	handled  atomic.Int64 // requests that reached the handler
	observed atomic.Int64 // requests answered on the loop
	codes    sync.Map     // status -> *atomic.Int64, from Observe
	records  *recordList
	logs     *syncBuffer
}

type recordList struct {
	mu    sync.Mutex
	recs  []*Record
	panic atomic.Bool // Record panics (a bug in a hook)
}

func (l *recordList) Record(r *Record) {
	if l.panic.Load() {
		panic("recorder bug")
	}
	l.mu.Lock()
	l.recs = append(l.recs, copyRecord(r))
	l.mu.Unlock()
}

func (l *recordList) all() []*Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Record(nil), l.recs...)
}

// startHitServer serves a route caching the answers of an upstream that
// says "body of URI" with max-age=600 and an ETag.
func startHitServer(t *testing.T, cfg Config) *hitServer {
	t.Helper()
	hs := &hitServer{records: &recordList{}, logs: &syncBuffer{}}
	hs.up = newUpstream(t, "up", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Etag", `"v1"`)
		w.Header().Set("Content-Type", "text/plain")
		if n, _ := strconv.Atoi(r.URL.Query().Get("size")); n > 0 {
			io.WriteString(w, strings.Repeat("x", n))
			return
		}
		io.WriteString(w, "body of "+r.URL.RequestURI())
	})
	c, err := httpcache.New(httpcache.Config{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	hs.cache = c
	cfg.Recorder = hs.records
	cfg.AccessLog = true
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: hs.logs, Level: hclog.Info})
	p, err := New(cfg, []Route{{Balancer: newBalancer(t, "web", hs.up.instance()), Cache: c}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	hs.p = p
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.handled.Add(1)
		p.ServeHTTP(w, r)
	})
	srv := NewServer("127.0.0.1:0", h, ServerConfig{ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs.addr = ln.Addr().String()
	ls := NewLoopServer(srv, LoopOptions{Proxy: p, Observe: func(status int, _ time.Duration) {
		n, _ := hs.codes.LoadOrStore(status, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		hs.observed.Add(1)
	}})
	served := make(chan error, 1)
	go func() { served <- ls.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ls.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return hs
}

// counts checks the upstream, handler and loop counters. A hit is
// counted before its answer is written.
func (hs *hitServer) counts(t *testing.T, what string, upstream, handled, observed int64) {
	t.Helper()
	if u, h, o := hs.up.hits.Load(), hs.handled.Load(), hs.observed.Load(); u != upstream || h != handled || o != observed {
		t.Fatalf("%s: upstream %d, handler %d, on the loop %d; want %d, %d, %d", what, u, h, o, upstream, handled, observed)
	}
}

func get(path string, extra ...string) string {
	s := "GET " + path + " HTTP/1.1\r\nHost: app.example.com\r\n"
	for _, f := range extra {
		s += f + "\r\n"
	}
	return s + "\r\n"
}

// checkHit checks an answer from the cache: status, body, Age and
// Cache-Status.
func checkHit(t *testing.T, res *http.Response, body string, status int, wantBody string) {
	t.Helper()
	if res.StatusCode != status || body != wantBody {
		t.Fatalf("got %d %q, want %d %q", res.StatusCode, body, status, wantBody)
	}
	if age := res.Header.Get("Age"); age == "" {
		t.Errorf("no Age field: %v", res.Header)
	} else if n, err := strconv.Atoi(age); err != nil || n < 0 || n > 600 {
		t.Errorf("Age %q", age)
	}
	if cs := res.Header.Get("Cache-Status"); !strings.HasPrefix(cs, "meshlb; hit; ttl=") {
		t.Errorf("Cache-Status %q, want a hit with its ttl", cs)
	}
	if len(res.Header["Date"]) != 1 {
		t.Errorf("Date fields %q, want one", res.Header["Date"])
	}
}

func TestLoopCacheHits(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	hs := startHitServer(t, Config{})
	rc := dialRaw(t, ctx, hs.addr)

	rc.send(get("/a"))
	res, body := rc.response("GET")
	if res.StatusCode != 200 || body != "body of /a" || !strings.Contains(res.Header.Get("Cache-Status"), "fwd=uri-miss; stored") {
		t.Fatalf("first GET: %d %q %q", res.StatusCode, body, res.Header.Get("Cache-Status"))
	}
	hs.counts(t, "miss", 1, 1, 0)

	rc.send(get("/a"))
	res, body = rc.response("GET")
	checkHit(t, res, body, 200, "body of /a")
	if res.ContentLength != int64(len("body of /a")) || res.Header.Get("Etag") != `"v1"` || res.Header.Get("Content-Type") != "text/plain" ||
		res.Header.Get("Cache-Control") != "max-age=600" {
		t.Errorf("hit's fields: %v (Content-Length %d)", res.Header, res.ContentLength)
	}
	hs.counts(t, "hit", 1, 1, 1)

	t.Run("HEAD", func(t *testing.T) {
		rc.send("HEAD /a HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
		res, body := rc.response("HEAD")
		checkHit(t, res, body, 200, "")
		if res.ContentLength != int64(len("body of /a")) {
			t.Errorf("HEAD Content-Length %d", res.ContentLength)
		}
		hs.counts(t, "HEAD hit", 1, 1, 2)
	})
	t.Run("conditional", func(t *testing.T) {
		rc.send(get("/a", `If-None-Match: "v1"`))
		res, body := rc.response("GET")
		checkHit(t, res, body, 304, "")
		if res.Header.Get("Etag") != `"v1"` {
			t.Errorf("304 without the ETag: %v", res.Header)
		}
		rc.send(get("/a", `If-None-Match: "v0"`))
		res, body = rc.response("GET")
		checkHit(t, res, body, 200, "body of /a")
		hs.counts(t, "conditional hits", 1, 1, 4)
	})
	t.Run("Range", func(t *testing.T) {
		rc.send(get("/a", "Range: bytes=0-3"))
		res, body := rc.response("GET")
		checkHit(t, res, body, 206, "body")
		if cr := res.Header.Get("Content-Range"); cr != "bytes 0-3/10" {
			t.Errorf("Content-Range %q", cr)
		}
		hs.counts(t, "range hit", 1, 1, 5)
	})
	t.Run("pipelined", func(t *testing.T) {
		// Hits answered in order, a miss between them, hits after it.
		rc.send(get("/a") + get("/a") + get("/b") + get("/a") + "HEAD /a HTTP/1.1\r\nHost: app.example.com\r\n\r\n" + get("/b"))
		for i, want := range []string{"/a", "/a", "/b", "/a", "HEAD", "/b"} {
			method := "GET"
			if want == "HEAD" {
				method = "HEAD"
			}
			res, body := rc.response(method)
			wantBody := "body of " + want
			if method == "HEAD" {
				wantBody = ""
			}
			if res.StatusCode != 200 || body != wantBody {
				t.Fatalf("answer %d: %d %q, want %q", i, res.StatusCode, body, wantBody)
			}
			hit := strings.HasPrefix(res.Header.Get("Cache-Status"), "meshlb; hit")
			if wantHit := i != 2; hit != wantHit {
				t.Errorf("answer %d: Cache-Status %q", i, res.Header.Get("Cache-Status"))
			}
		}
		// Only the first /b reached the upstream, through the handler.
		hs.counts(t, "pipelined", 2, 2, 10)
	})
	t.Run("Connection close", func(t *testing.T) {
		rc.send(get("/a", "Connection: close"))
		res, body := rc.response("GET")
		checkHit(t, res, body, 200, "body of /a")
		if !res.Close {
			t.Errorf("no Connection: close on the answer: %v", res.Header)
		}
		rc.expectClosed(5 * time.Second)
		hs.counts(t, "close", 2, 2, 11)
	})

	// Every hit shows in the records with its cache status and no
	// attempt, in the access log, in the metrics and the cache's counts.
	recs := hs.records.all()
	if len(recs) != 13 {
		t.Fatalf("%d records, want 13", len(recs))
	}
	hits := 0
	for _, r := range recs {
		if strings.HasPrefix(r.CacheStatus, "meshlb; hit") {
			hits++
			if len(r.Attempts) != 0 || r.Service != "web" || r.Status < 200 || !r.TraceID.IsValid() {
				t.Errorf("hit record %+v", r)
			}
		}
	}
	if hits != 11 {
		t.Errorf("%d hit records, want 11", hits)
	}
	if n := strings.Count(hs.logs.String(), "cache=\"meshlb; hit"); n != 11 {
		t.Errorf("%d access log lines of hits, want 11:\n%s", n, hs.logs.String())
	}
	for code, want := range map[int]int64{200: 9, 304: 1, 206: 1} {
		n, _ := hs.codes.Load(code)
		if n == nil || n.(*atomic.Int64).Load() != want {
			t.Errorf("observed %d: %v, want %d", code, n, want)
		}
	}
	if s := hs.cache.Stats(); s.Hits != 11 || s.Misses != 2 {
		t.Errorf("cache stats %+v, want 11 hits and 2 misses", s)
	}
}

// TestLoopCacheNotFresh: what the cache cannot answer alone leaves the
// loop: a request's no-cache, only-if-cached without an entry, a stale
// entry.
func TestLoopCacheNotFresh(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	hs := startHitServer(t, Config{})
	rc := dialRaw(t, ctx, hs.addr)
	rc.send(get("/x", "Cache-Control: only-if-cached"))
	if res, _ := rc.response("GET"); res.StatusCode != 504 {
		t.Fatalf("only-if-cached without an entry: %d, want 504", res.StatusCode)
	}
	hs.counts(t, "only-if-cached", 0, 1, 0)
	rc.send(get("/x"))
	rc.response("GET")
	rc.send(get("/x", "Cache-Control: no-cache"))
	res, body := rc.response("GET")
	if body != "body of /x" || !strings.Contains(res.Header.Get("Cache-Status"), "fwd=request") {
		t.Errorf("no-cache: %q %q", body, res.Header.Get("Cache-Status"))
	}
	hs.counts(t, "no-cache", 2, 3, 0)
	rc.send(get("/x", "Cache-Control: max-age=0"))
	rc.response("GET")
	hs.counts(t, "max-age=0", 3, 4, 0)
	rc.send(get("/x", "Cache-Control: only-if-cached"))
	res, body = rc.response("GET")
	checkHit(t, res, body, 200, "body of /x")
	hs.counts(t, "only-if-cached hit", 3, 4, 1)
}

// TestLoopCacheHitTracing: a hit on the loop starts the server span and
// answers traceresponse when sampled, and propagates the client's
// unsampled trace without recording a span.
func TestLoopCacheHitTracing(t *testing.T) {
	ctx := testCtx(t)
	sr := withRecorder(t)
	hs := startHitServer(t, Config{Tracing: true})
	rc := dialRaw(t, ctx, hs.addr)
	rc.send(get("/t"))
	rc.response("GET")
	waitServerSpans(t, ctx, sr, 1)

	rc.send(get("/t"))
	res, body := rc.response("GET")
	checkHit(t, res, body, 200, "body of /t")
	spans := waitServerSpans(t, ctx, sr, 2)
	last := spans[len(spans)-1]
	if last.SpanKind() != trace.SpanKindServer || !strings.Contains(res.Header.Get("Traceresponse"), last.SpanContext().TraceID().String()) {
		t.Errorf("traceresponse %q, span %v", res.Header.Get("Traceresponse"), last.SpanContext().TraceID())
	}

	const tid = "4bf92f3577b34da6a3ce929d0e0e4736"
	rc.send(get("/t", "Traceparent: 00-"+tid+"-00f067aa0ba902b7-00"))
	res, body = rc.response("GET")
	checkHit(t, res, body, 200, "body of /t")
	if tr := res.Header.Get("Traceresponse"); !strings.HasPrefix(tr, "00-"+tid+"-") || !strings.HasSuffix(tr, "-00") {
		t.Errorf("unsampled traceresponse %q", tr)
	}
	hs.counts(t, "traced hits", 1, 1, 2)
	if n := len(sr.Ended()); n != 3 { // the miss's server and client spans, the sampled hit's
		t.Errorf("%d spans ended, want 3", n)
	}
	if s := fmt.Sprint(hs.records.all()[2].TraceID); s != tid {
		t.Errorf("record's trace id %s, want %s", s, tid)
	}
}

// TestLoopCacheDeepPipeline: more pipelined hits than the loop answers in
// a row (maxLoopHits) are all answered, in order, none reaching the
// upstream: past the bound they take the goroutine path.
func TestLoopCacheDeepPipeline(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	hs := startHitServer(t, Config{})
	rc := dialRaw(t, ctx, hs.addr)
	rc.send(get("/p"))
	rc.response("GET")
	const n = 3*maxLoopHits + 5
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "GET /p HTTP/1.1\r\nHost: app.example.com\r\nX-N: %d\r\n\r\n", i)
	}
	rc.send(b.String())
	for i := range n {
		res, body := rc.response("GET")
		if res.StatusCode != 200 || body != "body of /p" || !strings.HasPrefix(res.Header.Get("Cache-Status"), "meshlb; hit") {
			t.Fatalf("answer %d: %d %q %q", i, res.StatusCode, body, res.Header.Get("Cache-Status"))
		}
	}
	if u := hs.up.hits.Load(); u != 1 {
		t.Errorf("upstream saw %d requests, want 1", u)
	}
	if h, o := hs.handled.Load(), hs.observed.Load(); h+o != n+1 || o < maxLoopHits {
		t.Errorf("handler %d + loop %d, want %d with at least %d on the loop", h, o, n+1, maxLoopHits)
	}
	if s := hs.cache.Stats(); s.Hits != n {
		t.Errorf("%d hits counted, want %d", s.Hits, n)
	}
}

// TestLoopCacheHitPanics: a panic while a hit is answered on the loop
// (here in the request recorder) cuts that connection, as net/http does
// for a handler, and leaves the loop serving the others.
func TestLoopCacheHitPanics(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	hs := startHitServer(t, Config{})
	rc := dialRaw(t, ctx, hs.addr)
	rc.send(get("/k"))
	rc.response("GET")
	hs.records.panic.Store(true)
	rc.send(get("/k"))
	rc.expectClosed(5 * time.Second)
	hs.records.panic.Store(false)
	rc2 := dialRaw(t, ctx, hs.addr)
	rc2.send(get("/k"))
	res, body := rc2.response("GET")
	checkHit(t, res, body, 200, "body of /k")
	hs.counts(t, "after the panic", 1, 1, 1)
}
