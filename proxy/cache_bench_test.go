package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

// BenchmarkCacheHit measures a GET answered from the cache, ServeHTTP
// called directly: the cost of the hit path alone.
func BenchmarkCacheHit(b *testing.B) {
	addr := cannedUpstream(b, []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=600\r\nContent-Length: 27\r\n\r\nHello from Process Id = 42\n"))
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		b.Fatal(err)
	}
	bal.Update([]lb.Instance{instanceAt("canned", addr)})
	c, err := httpcache.New(httpcache.Config{MaxSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(Config{}, []Route{{Balancer: bal, Cache: c}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.CloseIdleConnections)
	req := httptest.NewRequestWithContext(context.Background(), "GET", "http://app.example.com/cached", nil)
	req.Header.Set("User-Agent", "bench")
	w := &discardWriter{h: http.Header{}}
	p.ServeHTTP(w, req) // the miss that stores it
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		p.ServeHTTP(w, req)
		if w.status != http.StatusOK || w.h.Get("Age") == "" {
			b.Fatalf("status %d, fields %v", w.status, w.h)
		}
	}
}
