package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// TestLoopBackpressure: a client that does not read a 20 MiB proxied
// response makes the writer wait: the bytes the loop buffers for the
// connection stay under a bound (high-water mark plus one flush), whatever
// the instance sends; the whole body then arrives intact.
func TestLoopBackpressure(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const size = 20 << 20
	chunk := []byte(strings.Repeat("0123456789abcdef", 2048)) // 32 KiB
	up := newUpstream(t, "big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	p, err := New(Config{}, []Route{{Balancer: newBalancer(t, "web", up.instance())}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	ls := startLoop(t, p, nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
	// The client reads nothing until the loop's buffer for it passed the
	// high-water mark: the writer must be waiting by then.
	waitFor(t, ctx, "the outbound buffer to fill", func() bool { return ls.f.maxOutbound.Load() > loopHighWater })
	res, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, res.Body)
	if err != nil || n != size {
		t.Fatalf("body: %d bytes, %v; want %d", n, err, size)
	}
	if ls.f.onLoop.Load() != 1 || ls.f.offLoop.Load() != 1 {
		t.Errorf("served on the loop %d, body given to a goroutine %d; want 1 and 1", ls.f.onLoop.Load(), ls.f.offLoop.Load())
	}
	// One flush may land on a buffer just under the high-water mark.
	if got, bound := ls.f.maxOutbound.Load(), int64(loopHighWater+loopFlushSize+64); got > bound {
		t.Errorf("the loop buffered up to %d bytes for one slow client, want at most %d", got, bound)
	}
}

// TestLoopClientGone: a client that closes its connection while its
// request waits on an instance is noticed at once: the exchange is
// cancelled, which the instance sees as its own request's end (the
// upstream connection is cut, not reused).
func TestLoopClientGone(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	arrived := make(chan struct{}, 1)
	upGone := make(chan struct{}, 1)
	up := newUpstream(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done() // only the proxy cutting the connection ends it
		upGone <- struct{}{}
	})
	p, err := New(Config{}, []Route{{Balancer: newBalancer(t, "web", up.instance())}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	ls := startLoop(t, p, nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("the request never reached the instance")
	}
	rc.c.Close()
	select {
	case <-upGone:
	case <-ctx.Done():
		t.Fatal("the instance's request was not cancelled after the client left")
	}
}

// TestLoopPipelinedInOrder: pipelined requests are served one at a time,
// in order, even when an earlier one is slower than the later ones.
func TestLoopPipelinedInOrder(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var running, most atomic.Int32
	release := make(chan struct{})
	ls := startLoop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if r.URL.Path == "/0" {
			<-release // the first waits until every request was sent
		}
		fmt.Fprintf(w, "answer to %s", r.URL.Path)
	}), nil)
	rc := dialRaw(t, ctx, ls.addr)
	const n = 20
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
	}
	rc.send(b.String())
	close(release)
	for i := range n {
		res, body := rc.response("GET")
		if want := fmt.Sprintf("answer to /%d", i); res.StatusCode != 200 || body != want {
			t.Fatalf("response %d: %d %q, want 200 %q", i, res.StatusCode, body, want)
		}
	}
	if m := most.Load(); m != 1 {
		t.Errorf("%d pipelined requests of one connection ran at once, want 1", m)
	}
	if h := ls.states.handOffs(); h != 0 {
		t.Errorf("%d hand-offs, want 0", h)
	}
}

// TestLoopProxyUpgrade: a WebSocket upgrade through the proxy behind the
// loop is spliced both ways.
func TestLoopProxyUpgrade(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	up := newUpstream(t, "ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo:" + line)
			brw.Flush()
		}
	})
	p, err := New(Config{}, []Route{{Balancer: newBalancer(t, "web", up.instance())}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	ls := startLoop(t, p, nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	res, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v, want 101", res, err)
	}
	for i := range 3 {
		msg := fmt.Sprintf("ping %d\n", i)
		rc.send(msg)
		line, err := rc.br.ReadString('\n')
		if err != nil || line != "echo:"+msg {
			t.Fatalf("after the upgrade got %q %v, want %q", line, err, "echo:"+msg)
		}
	}
}
