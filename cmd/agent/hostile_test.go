package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawRequest writes raw bytes to the agent and returns the status line of
// its answer.
func rawRequest(t *testing.T, addr string, raw []byte) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = c.Write(raw) }() // may block on a huge head the server stops reading
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestHostileClients(t *testing.T) {
	c := newCluster(t, "hostile", 1, "--max-body-size", "1k")
	serving := func(t *testing.T) {
		t.Helper()
		if code, pid, err := c.get("/"); err != nil || code != 200 || pid == 0 {
			t.Fatalf("agent no longer serving: %d %v", code, err)
		}
	}
	for _, tc := range []struct {
		name string
		raw  string
		want string
	}{
		{"2 MB header", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n", "431"},
		{"garbage", "\x16\x03\x01\x02\x00garbage\r\n\r\n", "400"},
		{"double content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "400"},
		{"content-length with transfer-encoding", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "400"},
		{"body over --max-body-size", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n" + strings.Repeat("b", 2048), "413"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawRequest(t, c.addr, []byte(tc.raw)); !strings.Contains(got, " "+tc.want+" ") {
				t.Errorf("answer %q, want %s", got, tc.want)
			}
			serving(t)
		})
	}

	t.Run("300 stalled connections do not delay a normal request", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		conns := make(chan net.Conn, 300)
		for range 300 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var d net.Dialer
				cn, err := d.DialContext(ctx, "tcp", c.addr)
				if err != nil {
					return
				}
				_, _ = io.WriteString(cn, "GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ") // never finished
				conns <- cn
			}()
		}
		wg.Wait()
		close(conns)
		n := 0
		for cn := range conns {
			defer cn.Close()
			n++
		}
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+"/", nil)
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err != nil {
			t.Fatalf("normal request with %d stalled connections open: %v", n, err)
		}
		resp.Body.Close()
		t.Logf("MEASURE normal request with %d stalled connections open: %v", n, time.Since(start))
		if n != 300 || resp.StatusCode != 200 {
			t.Fatalf("opened %d stalled connections, request status %d", n, resp.StatusCode)
		}
	})
}
