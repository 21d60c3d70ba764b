package httpguard

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// BenchmarkGuard measures keep-alive GETs over loopback against a real
// http.Server, unguarded and guarded (Listen plus the ConnState hook); the
// difference is the guard's cost per request.
func BenchmarkGuard(b *testing.B) {
	for _, guarded := range []bool{false, true} {
		name := "unguarded"
		if guarded {
			name = "guarded"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.WriteString(w, "ok")
				}),
				ReadHeaderTimeout: time.Minute,
			}
			var sl net.Listener = ln
			if guarded {
				sl = Listen(ln, Options{})
				srv.ConnState = ConnState
			}
			go func() { _ = srv.Serve(sl) }()
			defer srv.Close()

			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req := []byte("GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench/1.0\r\n" +
				"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n")
			// Learn the (constant) response size from a first exchange.
			cr := &countReader{r: c}
			br := bufio.NewReader(cr)
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			size := cr.n - br.Buffered()
			resp := make([]byte, size)

			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParse measures the parser alone on a browser-sized head.
func BenchmarkParse(b *testing.B) {
	head := []byte("GET /static/app.js?v=20250101 HTTP/1.1\r\nHost: www.example.com\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n" +
		"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n" +
		"Connection: keep-alive\r\nCookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n" +
		"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n" +
		"If-None-Match: \"5f2b-1a2b3c4d\"\r\nCache-Control: max-age=0\r\n\r\n")
	p := parser{maxHead: DefaultMaxHeaderBytes}
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		if n, v := p.feed(head); n != len(head) || v != nil {
			b.Fatalf("released %d of %d, %v", n, len(head), v)
		}
	}
}
