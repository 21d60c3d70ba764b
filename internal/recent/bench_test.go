package recent_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/recent"
	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy"
)

// BenchmarkRecent measures what the ring of recent requests costs a
// proxied GET: the proxy's handler called directly (as proxy's
// BenchmarkProxy/handler) to a canned keep-alive upstream, with the ring
// off (no Recorder) and on (the agent's default 1000), with and without a
// client traceparent (without one the proxy makes a trace id and sets
// traceresponse). Compare the sub-benchmarks of one run.
func BenchmarkRecent(b *testing.B) {
	addr := cannedUpstream(b)
	for _, tc := range []struct {
		name   string
		ring   bool
		parent bool
	}{
		{"off", false, false},
		{"on", true, false},
		{"off-traceparent", false, true},
		{"on-traceparent", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bal, err := lb.NewBalancer("web", lb.Config{})
			if err != nil {
				b.Fatal(err)
			}
			host, port, _ := net.SplitHostPort(addr)
			p := 0
			for _, c := range port {
				p = p*10 + int(c-'0')
			}
			bal.Update([]lb.Instance{{ID: "canned", Service: "web", Address: host, Port: p, Weight: 1,
				Meta: map[string]string{"pid": "4242", "host": "bench"}}})
			cfg := proxy.Config{}
			var ring *recent.Ring
			if tc.ring {
				ring = recent.New(recent.DefaultSize)
				cfg.Recorder = ring
			}
			px, err := proxy.New(cfg, []proxy.Route{{Balancer: bal}})
			if err != nil {
				b.Fatal(err)
			}
			defer px.CloseIdleConnections()
			req := httptest.NewRequestWithContext(context.Background(), "GET", "http://app.example.com/", nil)
			req.Header.Set("User-Agent", "bench")
			if tc.parent {
				req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			}
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				px.ServeHTTP(w, req)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
			if ring != nil && ring.Stats().Recorded == 0 {
				b.Fatal("nothing recorded")
			}
		})
	}
}

// BenchmarkRingRecord is the ring's own cost per record, from as many
// goroutines as GOMAXPROCS (the proxy records from every request's).
func BenchmarkRingRecord(b *testing.B) {
	ring := recent.New(recent.DefaultSize)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			ring.Record(&proxy.Record{Status: 200, Latency: time.Duration(i%5000) * time.Microsecond})
		}
	})
}

type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }

// cannedUpstream answers every bodiless request on a keep-alive connection
// with the same small response.
func cannedUpstream(tb testing.TB) string {
	tb.Helper()
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n\r\nHello from Process Id = 42\n")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			})
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
