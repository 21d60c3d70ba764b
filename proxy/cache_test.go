package proxy

import (
	"net/http"
	"net/http/httptest"
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
