package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/meshlb/meshlb/lb"
)

// serveUpgrade completes a protocol switch (WebSocket and the like) the way
// httputil.ReverseProxy does: check the upstream switched to the protocol
// asked for, hijack the client connection, write the 101 and copy bytes both
// ways until either side ends. The attempt ends, and the balancer hears of
// it, when the tunnel closes.
func (x *exchange) serveUpgrade(a *attempt) {
	res := a.res
	result := lb.Result{Status: res.StatusCode, Latency: a.latency}
	bad := func(err error) {
		res.Body.Close()
		x.err = err
		result.Err = err
		a.finish(result, res.StatusCode, err)
		x.fail(http.StatusBadGateway, "upstream of service "+x.route.service+" failed to switch protocols")
	}
	resUp := upgradeType(res.Header)
	if x.upgrade == "" || !validUpgrade(resUp) || !strings.EqualFold(resUp, x.upgrade) {
		bad(fmt.Errorf("upstream switched to protocol %q when %q was requested", resUp, x.upgrade))
		return
	}
	backConn, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		bad(errors.New("101 switching protocols response with a non-writable body"))
		return
	}
	conn, brw, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		// Not the upstream's fault: report no error to the balancer.
		res.Body.Close()
		a.finish(lb.Result{Latency: a.latency}, 0, nil)
		x.err = fmt.Errorf("hijack client connection: %w", err)
		x.fail(http.StatusInternalServerError, "cannot switch protocols on this connection")
		return
	}
	defer conn.Close()
	defer backConn.Close()

	h := x.w.Header()
	for k, vv := range res.Header {
		h[k] = vv
	}
	x.setTraceResponse(h)
	res.Header = h
	res.Body = nil // res.Write writes the status line and headers only
	if err := res.Write(brw); err == nil {
		err = brw.Flush()
	}
	if err != nil {
		a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency}, res.StatusCode, nil)
		return
	}

	var toClient atomic.Int64
	errc := make(chan error, 2)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// The request context ending (shutdown, a timeout middleware)
		// ends the tunnel.
		select {
		case <-x.ctx.Done():
			backConn.Close()
			conn.Close()
		case <-stop:
		}
	}()
	go func() {
		n, err := io.Copy(conn, backConn)
		toClient.Add(n)
		if err == nil {
			// The upstream finished sending: pass the half-close on.
			err = closeWrite(conn)
		}
		errc <- err
	}()
	go func() {
		// Read through brw: it may hold bytes the client sent early.
		_, err := io.Copy(backConn, brw)
		if err == nil {
			err = closeWrite(backConn)
		}
		errc <- err
	}()
	// Wait until both directions end, or one fails.
	if err := <-errc; err == nil {
		<-errc
	}
	conn.Close()
	backConn.Close()
	x.written = toClient.Load()
	a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency}, res.StatusCode, nil)
}

// errTunnelDone ends a tunnel direction whose writer cannot half-close.
var errTunnelDone = errors.New("tunnel direction done")

// closeWrite half-closes c when it can, else reports the direction done.
func closeWrite(c any) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errTunnelDone
}
