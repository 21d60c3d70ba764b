package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoopNothingWrittenAfterShutdown: gnet closes its pollers'
// descriptors when the loops stop. A call into gnet from another goroutine
// after that (a drain check's timer, the sweeper, a ConnState hook closing
// its connection, a handler's last write) must not reach a poller: its
// eventfd number belongs to the next descriptor opened, here one of the
// socket pairs, which would receive 8 bytes no one sent.
func TestLoopNothingWrittenAfterShutdown(t *testing.T) {
	ctx := testCtx(t)
	ls := startLoop(t, http.HandlerFunc(echoHandler), nil)
	rc := dialRaw(t, ctx, ls.addr)
	rc.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	rc.response("GET")
	var lc *loopConn
	ls.f.mu.Lock()
	for c := range ls.f.conns {
		lc = c
	}
	ls.f.mu.Unlock()
	if lc == nil || lc.conn() == nil {
		t.Fatal("no connection on the loop")
	}
	c := lc.conn()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ls.f.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// The lowest free descriptor numbers, the pollers' among them, go to
	// these pairs.
	var pairs [][2]int
	for range 64 {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, p)
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	}
	if err := lc.Close(); err == nil {
		t.Error("closing a connection of stopped loops succeeded")
	}
	if err := ls.f.gate.wake(c, nil); err == nil {
		t.Error("waking a connection of stopped loops succeeded")
	}
	if err := ls.f.gate.asyncWrite(c, []byte("x"), nil); err == nil {
		t.Error("writing to a connection of stopped loops succeeded")
	}
	ls.f.pruneUpstreams(0)
	buf := make([]byte, 64)
	for _, p := range pairs {
		for _, fd := range p {
			if n, _ := unix.Read(fd, buf); n > 0 {
				t.Errorf("descriptor %d received %d bytes after Shutdown: %q", fd, n, buf[:n])
			}
		}
	}
	// A second Shutdown (startLoop's cleanup makes one more) stops
	// nothing: gnet's Stop would close the pollers' numbers again, now
	// another's descriptors (in the parallel tests, a live loop's eventfd,
	// whose Stop then waited for ever).
	if err := ls.f.Shutdown(sctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	for _, p := range pairs {
		for _, fd := range p {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
				t.Errorf("descriptor %d closed by a second Shutdown: %v", fd, err)
			}
		}
	}
}
