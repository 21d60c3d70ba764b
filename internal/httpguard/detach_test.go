package httpguard

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestDetach: a connection detached from the guard keeps its place under
// MaxConns until its release runs (once), and its Close no longer counts.
func TestDetach(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := Listen(raw, Options{MaxConns: 1})
	defer ln.Close()
	ctx := testContext(t, 10*time.Second)
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	first := dial(t, ctx, raw.Addr().String())
	defer first.Close()
	var sc net.Conn
	select {
	case sc = <-accepted:
	case <-ctx.Done():
		t.Fatal("no connection accepted")
	}
	release := Detach(sc)
	if release == nil {
		t.Fatal("Detach of a guarded connection returned nil")
	}
	if Detach(sc) != nil {
		t.Error("a second Detach returned a release: it would count twice")
	}
	sc.Close() // the caller owns the descriptor elsewhere; this must not free the place

	// Still counted: the next connection is refused.
	c := dial(t, ctx, raw.Addr().String())
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	c.Close()
	if err != nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("over the limit while detached: %v %v, want 503", res, err)
	}

	release()
	c = dial(t, ctx, raw.Addr().String())
	defer c.Close()
	select {
	case ac := <-accepted:
		ac.Close()
	case <-ctx.Done():
		t.Fatal("the released place was not given back")
	}
	if Detach(&net.TCPConn{}) != nil {
		t.Error("Detach of a connection not from Listen returned a release")
	}
}
