package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestStreamingFlush(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
	}{
		{"server-sent events", "text/event-stream; charset=utf-8"},
		{"unknown length", "application/octet-stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			release := make(chan struct{})
			up := newUpstream(t, "stream", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				io.WriteString(w, "data: one\n\n")
				http.NewResponseController(w).Flush()
				// The second event waits for the client to have read
				// the first: without flushing, this deadlocks.
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: two\n\n")
			})
			f := newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", up.instance())})
			req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/events", nil)
			res, err := f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			br := bufio.NewReader(res.Body)
			line, err := br.ReadString('\n')
			if err != nil || line != "data: one\n" {
				t.Fatalf("first line %q, %v", line, err)
			}
			close(release)
			rest, err := io.ReadAll(br)
			if err != nil || string(rest) != "\ndata: two\n\n" {
				t.Fatalf("rest %q, %v", rest, err)
			}
		})
	}
}

func TestTrailersForwarded(t *testing.T) {
	ctx := testCtx(t)
	up := newUpstream(t, "trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.Header().Set("X-Checksum", "abc")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	})
	f := newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", up.instance())})
	res, body := f.do(t, ctx, "GET", "/", nil, nil)
	if body != "body" {
		t.Errorf("body %q", body)
	}
	if got := res.Trailer.Get("X-Checksum"); got != "abc" {
		t.Errorf("trailer X-Checksum %q, want abc (trailers %v)", got, res.Trailer)
	}
	if got := res.Trailer.Get("X-Late"); got != "late" {
		t.Errorf("trailer X-Late %q, want late (trailers %v)", got, res.Trailer)
	}
}

func TestUpstreamDiesMidBody(t *testing.T) {
	tests := []struct {
		name    string
		length  string // Content-Length the upstream announces, "" for chunked
		headers bool   // the client must have had the headers (streamed)
	}{
		{name: "known length", length: "100"},
		{name: "chunked", headers: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			up := newUpstream(t, "dies", func(w http.ResponseWriter, r *http.Request) {
				if tt.length != "" {
					w.Header().Set("Content-Length", tt.length)
				}
				io.WriteString(w, "partial")
				http.NewResponseController(w).Flush()
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
			})
			bal := newBalancer(t, "web", up.instance())
			f := newFrontend(t, Config{}, Route{Balancer: bal})
			req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/", nil)
			// The client must see a broken response, never a complete one;
			// when the proxy had not sent the headers yet, a cut connection.
			res, err := f.client.Do(req)
			switch {
			case err == nil:
				b, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err == nil {
					t.Errorf("client read a cut body %q as complete", b)
				}
			case tt.headers:
				t.Errorf("streamed response lost its headers: %v", err)
			}
			if n := bal.Pool().Instances[0].Stats.Failures.Load(); n != 1 {
				t.Errorf("instance failures %d, want 1", n)
			}
		})
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	ctx := testCtx(t)
	up := newUpstream(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" || !hasToken(r.Header["Connection"], "upgrade") {
			http.Error(w, "not an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: test\r\n\r\n")
		brw.Flush()
		// Echo lines until the client closes.
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo " + line)
			brw.Flush()
		}
	})
	bal := newBalancer(t, "web", up.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal})

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", f.url().Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols || res.Header.Get("Upgrade") != "websocket" || res.Header.Get("Sec-WebSocket-Accept") != "test" {
		t.Fatalf("handshake: %d %v", res.StatusCode, res.Header)
	}
	for _, msg := range []string{"hello\n", "world\n"} {
		io.WriteString(conn, msg)
		got, err := br.ReadString('\n')
		if err != nil || got != "echo "+msg {
			t.Fatalf("echo: %q, %v", got, err)
		}
	}
	if n := bal.Pool().Instances[0].Stats.InFlight.Load(); n != 1 {
		t.Errorf("in flight during the tunnel: %d, want 1", n)
	}
	conn.Close()
	// The attempt ends when the tunnel closes.
	for bal.Pool().Instances[0].Stats.InFlight.Load() != 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the tunnel's attempt never ended")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestIsEventStream(t *testing.T) {
	tests := []struct {
		ct   string
		want bool
	}{
		{"text/event-stream", true},
		{"Text/Event-Stream; charset=utf-8", true},
		{" text/event-stream ;", true},
		{"text/event-streams", false},
		{"text/plain", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.ct, func(t *testing.T) {
			h := http.Header{}
			if tt.ct != "" {
				h.Set("Content-Type", tt.ct)
			}
			if got := isEventStream(h); got != tt.want {
				t.Errorf("isEventStream(%q) = %v", tt.ct, got)
			}
		})
	}
}
