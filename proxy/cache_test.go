package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

// TestCacheConcurrentRequests sends many concurrent GETs for a few URLs
// through a caching route (run with -race): every answer is whole, and
// the upstream sees one request per URL (collapsing, then hits).
func TestCacheConcurrentRequests(t *testing.T) {
	var upstream atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstream.Add(1)
		time.Sleep(20 * time.Millisecond) // long enough for the others to pile up
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Vary", "Accept-Language")
		w.Write([]byte("body of " + r.URL.RequestURI()))
	}))
	defer up.Close()
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	bal.Update([]lb.Instance{instanceAt("up", up.Listener.Addr().String())})
	c, err := httpcache.New(httpcache.Config{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{}, []Route{{Balancer: bal, Cache: c}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseIdleConnections()
	urls := []string{"/a", "/b?x=1", "/c"}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			u := urls[i%len(urls)]
			r := httptest.NewRequest("GET", "http://app.example.com"+u, nil)
			r.Header.Set("Accept-Language", "en")
			w := httptest.NewRecorder()
			p.ServeHTTP(w, r)
			if w.Code != 200 || w.Body.String() != "body of "+u || w.Header().Get("Cache-Status") == "" {
				t.Errorf("%s: %d %q %q", u, w.Code, w.Body.String(), w.Header().Get("Cache-Status"))
			}
		})
	}
	wg.Wait()
	if n := upstream.Load(); n != int64(len(urls)) {
		t.Errorf("upstream saw %d requests, want %d (one per URL)", n, len(urls))
	}
	if s := c.Stats(); s.Objects != int64(len(urls)) || s.Hits+s.Misses != 60 {
		t.Errorf("stats %+v", s)
	}
}

// TestCacheHeadUpdatesStoredGet: a HEAD forwarded because the stored GET
// response is stale gets a 200 whose fields update that response when its
// validators and Content-Length match (RFC 9111 section 4.3.5), and drop
// it when they do not.
func TestCacheHeadUpdatesStoredGet(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var version atomic.Int64
	up := newUpstream(t, "up", func(w http.ResponseWriter, r *http.Request) {
		body := "the body"
		w.Header().Set("Cache-Control", "max-age=60")
		etag := r.URL.Query().Get("etag")
		if e := r.URL.Query().Get("head_etag"); e != "" && r.Method == http.MethodHead {
			etag = e
		}
		w.Header().Set("Etag", etag)
		w.Header().Set("X-Version", strconv.FormatInt(version.Add(1), 10))
		if a := r.Header.Get("X-Age"); a != "" {
			w.Header().Set("Age", a) // older than max-age: stored stale
		}
		if r.Method == http.MethodHead && r.URL.Query().Get("length") != "" {
			w.Header().Set("Content-Length", r.URL.Query().Get("length"))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	})
	c, err := httpcache.New(httpcache.Config{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f := newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", up.instance()), Cache: c})
	stale := http.Header{"X-Age": {"100"}}
	onlyCached := http.Header{"Cache-Control": {"only-if-cached"}}

	// Matching validators and length: the HEAD's fields update the
	// stored GET, which is fresh again and keeps its body.
	p := "/same?etag=%22v1%22"
	f.do(t, ctx, "GET", p, nil, stale)
	res, _ := f.do(t, ctx, "HEAD", p, nil, nil)
	if res.StatusCode != 200 || res.Header.Get("X-Version") != "2" || !strings.Contains(res.Header.Get("Cache-Status"), "fwd=stale") {
		t.Fatalf("HEAD: %d %v", res.StatusCode, res.Header)
	}
	res, body := f.do(t, ctx, "GET", p, nil, onlyCached)
	if res.StatusCode != 200 || body != "the body" || res.Header.Get("X-Version") != "2" || !strings.HasPrefix(res.Header.Get("Cache-Status"), "meshlb; hit") {
		t.Fatalf("GET after the HEAD: %d %q %v", res.StatusCode, body, res.Header)
	}
	if n := up.hits.Load(); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}

	// Another Content-Length or ETag: the stored GET is dropped.
	for _, p := range []string{"/len?etag=%22v1%22&length=3", "/etag?etag=%22v1%22&head_etag=%22v2%22"} {
		f.do(t, ctx, "GET", p, nil, stale)
		f.do(t, ctx, "HEAD", p, nil, nil)
		res, _ := f.do(t, ctx, "GET", p, nil, onlyCached)
		if res.StatusCode != http.StatusGatewayTimeout {
			t.Errorf("%s: GET after the HEAD: %d %v, want 504 (dropped)", p, res.StatusCode, res.Header)
		}
	}
	if n := up.hits.Load(); n != 6 {
		t.Errorf("upstream saw %d requests, want 6", n)
	}
}
