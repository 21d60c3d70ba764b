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
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/meshlb/meshlb/lb"
)

// cannedUpstream is a minimal HTTP/1.1 keep-alive server answering every
// bodiless request with the same bytes, so the benchmark measures the proxy
// rather than an upstream server.
func cannedUpstream(tb testing.TB, resp []byte) string {
	tb.Helper()
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
					// Read up to the blank line ending the headers.
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

// discardWriter is a reusable ResponseWriter for the handler benchmark.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }

// BenchmarkProxy measures a small GET through the proxy to a loopback
// upstream over keep-alive connections.
//
// handler: ServeHTTP called directly, so allocs/op are the proxy's own
// (net/http's upstream transport included). loopback: a keep-alive Go client
// through a real listener, so allocs/op add the client and net/http's server.
func BenchmarkProxy(b *testing.B) {
	addr := cannedUpstream(b, []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n\r\nHello from Process Id = 42\n"))
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		b.Fatal(err)
	}
	bal.Update([]lb.Instance{instanceAt("canned", addr)})
	p, err := New(Config{}, []Route{{Balancer: bal}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.CloseIdleConnections)

	b.Run("handler", func(b *testing.B) {
		req := httptest.NewRequestWithContext(context.Background(), "GET", "http://app.example.com/", nil)
		req.Header.Set("User-Agent", "bench")
		w := &discardWriter{h: http.Header{}}
		b.ReportAllocs()
		for b.Loop() {
			clear(w.h)
			p.ServeHTTP(w, req)
			if w.status != http.StatusOK {
				b.Fatalf("status %d", w.status)
			}
		}
	})

	// With a Recorder, as the agent's default --recent ring (which
	// keeps the records it is given: here they are dropped).
	pr, err := New(Config{Recorder: dropRecorder{}}, []Route{{Balancer: bal}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pr.CloseIdleConnections)
	for _, name := range []string{"loop", "loop-exchange", "loop-exchange-recorder"} {
		// loop: every request through the handler on a goroutine;
		// loop-exchange: served on the loop itself (loopexchange.go).
		var lp *Proxy
		p := p
		switch name {
		case "loop-exchange":
			lp = p
		case "loop-exchange-recorder":
			p, lp = pr, pr
		}
		b.Run(name, func(b *testing.B) {
			// LoopServer, as the agent serves cleartext listeners, and a raw
			// keep-alive client that allocates nothing: allocs/op are the
			// agent's whole request path.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			fs := NewLoopServer(NewServer("", p, ServerConfig{}, nil), LoopOptions{Proxy: lp})
			go fs.Serve(ln)
			defer fs.Shutdown(context.Background())
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			reqBytes := []byte("GET / HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\n\r\n")
			br := bufio.NewReader(c)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(reqBytes); err != nil {
					b.Fatal(err)
				}
				if err := readBenchResponse(br); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	b.Run("loopback", func(b *testing.B) {
		srv := httptest.NewServer(p)
		defer srv.Close()
		tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		b.ReportAllocs()
		for b.Loop() {
			res, err := tr.RoundTrip(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				b.Fatalf("status %d", res.StatusCode)
			}
		}
	})
}

// dropRecorder drops the records it is given.
type dropRecorder struct{}

func (dropRecorder) Record(*Record) {}

// readBenchResponse reads one 200 response framed by Content-Length from br
// without allocating.
func readBenchResponse(br *bufio.Reader) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("status line %q", line)
	}
	n := -1
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			n = 0
			for _, c := range bytes.TrimSpace(v) {
				n = n*10 + int(c-'0')
			}
		}
	}
	if n < 0 {
		return errors.New("no Content-Length")
	}
	_, err = br.Discard(n)
	return err
}
