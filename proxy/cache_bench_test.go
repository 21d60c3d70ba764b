package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
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

// BenchmarkLoopCacheHit measures a cached GET through a LoopServer over
// a real connection, one request at a time: answered on the loop
// (LoopOptions.Proxy set) and on a goroutine per request (the path before). The
// client reads into a fixed buffer, so allocs/op are the server's.
func BenchmarkLoopCacheHit(b *testing.B) {
	for _, tc := range []struct {
		name   string
		inline bool
	}{{"loop", true}, {"goroutine", false}} {
		b.Run(tc.name, func(b *testing.B) {
			addr := cannedUpstream(b, []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=600\r\nContent-Length: 27\r\n\r\nHello from Process Id = 42\n"))
			c, err := httpcache.New(httpcache.Config{MaxSize: 64 << 20})
			if err != nil {
				b.Fatal(err)
			}
			p, err := New(Config{}, []Route{{Balancer: newBalancer(b, "web", instanceAt("canned", addr)), Cache: c}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(p.CloseIdleConnections)
			srv := NewServer("127.0.0.1:0", p, ServerConfig{}, nil)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			opts := LoopOptions{Loops: 1}
			if tc.inline {
				opts.Proxy = p
			}
			ls := NewLoopServer(srv, opts)
			go ls.Serve(ln)
			b.Cleanup(func() { ls.Shutdown(context.Background()) })
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			req := []byte("GET /cached HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\n\r\n")
			br := bufio.NewReaderSize(conn, 4096)
			roundTrip := func() {
				if _, err := conn.Write(req); err != nil {
					b.Fatal(err)
				}
				clen := -1
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						b.Fatal(err)
					}
					if len(line) == 2 {
						break
					}
					if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
						clen, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
					}
				}
				if _, err := br.Discard(clen); err != nil || clen != 27 {
					b.Fatalf("body of %d: %v", clen, err)
				}
			}
			roundTrip() // the miss that stores it
			b.ReportAllocs()
			for b.Loop() {
				roundTrip()
			}
			if s := c.Stats(); s.Misses != 1 {
				b.Fatalf("stats %+v: want one miss", s)
			}
		})
	}
}
