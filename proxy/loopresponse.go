package proxy

import (
	"context"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshlb/meshlb/internal/h1"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/net/http/httpguts"
)

var crlf = []byte("\r\n")

// loopResponse is LoopServer's http.ResponseWriter, used on the request's
// goroutine: the head goes out with the first body bytes (or at the end),
// framed by the Content-Length the handler set, else chunked. Bytes gather
// in a pooled buffer and go to the loop (AsyncWrite) every loopFlushSize
// bytes, on Flush and at the end; a write waits while the connection's
// outbound buffer is over loopHighWater (backpressure).
type loopResponse struct {
	lc       *loopConn
	c        gnet.Conn
	req      *http.Request
	ctx      context.Context // the request's: ends when the client goes
	header   http.Header
	status   int
	headSent bool
	noBody   bool  // HEAD, 1xx, 204 and 304 answers carry no body
	chunked  bool  // the body goes out chunked
	clen     int64 // declared Content-Length, -1 if none
	written  int64
	close    bool // Connection: close was sent
	err      error
	out      *[]byte    // pending bytes, from outPool
	wrote    chan error // the loop took a buffer (and the client keeps up)
	onWrite  gnet.AsyncCallback
	onFinal  gnet.AsyncCallback
	final_   *[]byte // the last buffer, until the loop took it
	keep     bool    // the connection may carry another request
}

// outPool holds the response buffers; a connection holds one only while
// it writes a response.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// respPool holds the response writers: an idle connection holds none.
var respPool = sync.Pool{New: func() any { return new(loopResponse) }}

// reset readies w for a response on lc (on the loop).
func (w *loopResponse) reset(lc *loopConn, c gnet.Conn) {
	h, wrote, onWrite, onFinal := w.header, w.wrote, w.onWrite, w.onFinal
	if h == nil {
		h, wrote = make(http.Header, 8), make(chan error, 1)
		onWrite, onFinal = w.tookBuffer, w.tookFinal
	} else {
		clear(h)
	}
	*w = loopResponse{lc: lc, c: c, header: h, clen: -1, wrote: wrote, onWrite: onWrite, onFinal: onFinal}
}

// serve runs the handler for req on the request's goroutine and hands the
// connection back to the loop.
func (w *loopResponse) serve(ctx context.Context, req *http.Request) {
	w.req = req.WithContext(ctx)
	w.out = outPool.Get().(*[]byte)
	keep := w.run()
	w.final(keep)
}

func (w *loopResponse) run() (keep bool) {
	srv := w.lc.s.srv
	defer func() {
		if v := recover(); v != nil {
			keep = false
			*w.out = (*w.out)[:0] // net/http cuts the connection without the rest
			if v != http.ErrAbortHandler && srv.ErrorLog != nil {
				srv.ErrorLog.Printf("http: panic serving %s: %v", w.lc.remote, v)
			}
		}
	}()
	srv.Handler.ServeHTTP(w, w.req)
	return w.finish() && !w.req.Close && !w.lc.s.shutting.Load()
}

// final gives the last bytes to the loop, which then reads the next
// request or closes.
func (w *loopResponse) final(keep bool) {
	out := w.out
	w.out = nil
	w.final_, w.keep = out, keep && w.err == nil
	if err := w.lc.s.gate.asyncWrite(w.c, *out, w.onFinal); err != nil {
		putOut(out) // the loops are stopping: the connection is closed with them
	}
	// From here on w is the loop's again.
}

// tookFinal runs on the loop once it took the last buffer of a response.
func (w *loopResponse) tookFinal(c gnet.Conn, err error) error {
	putOut(w.final_)
	lc, keep := w.lc, w.keep
	clear(w.header)
	w.lc, w.c, w.req, w.ctx, w.final_, w.err = nil, nil, nil, nil, nil, nil // an idle connection keeps nothing alive
	respPool.Put(w)
	if err == nil {
		lc.s.noteOutbound(c.OutboundBuffered())
		lc.finished(c, keep)
	}
	return nil
}

func putOut(b *[]byte) {
	if cap(*b) > 4*loopFlushSize {
		return
	}
	*b = (*b)[:0]
	outPool.Put(b)
}

// send gives the pending bytes to the loop and waits until it took them
// and the client keeps up.
func (w *loopResponse) send() error {
	if w.err != nil {
		return w.err
	}
	if len(*w.out) == 0 {
		return nil
	}
	if err := w.lc.s.gate.asyncWrite(w.c, *w.out, w.onWrite); err != nil {
		w.err = err
		return err
	}
	select {
	case err := <-w.wrote:
		if err != nil {
			w.err = err
			w.out = new([]byte) // the loop is done with the old one; keep it out of the pool
			return err
		}
	case <-w.ctx.Done():
		w.err = errLoopClosed
		w.out = new([]byte)
		return w.err
	}
	*w.out = (*w.out)[:0]
	return nil
}

// tookBuffer runs on the loop once it took a buffer: it lets the writer go on
// at once, or once the client has read enough.
func (w *loopResponse) tookBuffer(c gnet.Conn, err error) error {
	if err != nil {
		w.wrote <- err
		return nil
	}
	ob := c.OutboundBuffered()
	w.lc.s.noteOutbound(ob)
	if ob > loopHighWater {
		w.lc.waitDrain(c, loopLowWater, func(gnet.Conn) { w.wrote <- nil })
		return nil
	}
	w.wrote <- nil
	return nil
}

// write appends p to the pending bytes, sending them when enough gathered.
func (w *loopResponse) write(p []byte) error {
	for {
		room := loopFlushSize - len(*w.out)
		if len(p) < room {
			*w.out = append(*w.out, p...)
			return nil
		}
		*w.out = append(*w.out, p[:room]...)
		p = p[room:]
		if err := w.send(); err != nil {
			return err
		}
	}
}

// Header returns the response header map.
func (w *loopResponse) Header() http.Header { return w.header }

// WriteHeader sets the status; 1xx answers are not forwarded.
func (w *loopResponse) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return
	}
	if code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	w.status = code
}

// Write sends body bytes, the head first.
func (w *loopResponse) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		p = p[:w.clen-w.written]
		err := w.write(p)
		n := len(p)
		w.written += int64(n)
		if err == nil {
			err = http.ErrContentLength
		}
		w.err = err
		return n, err
	}
	n := len(p)
	if w.chunked {
		if n == 0 {
			return 0, nil
		}
		var size [18]byte
		err := w.write(append(strconv.AppendInt(size[:0], int64(n), 16), '\r', '\n'))
		if err == nil {
			err = w.write(p)
		}
		p = crlf
		if err != nil {
			w.err = err
			return 0, err
		}
	}
	err := w.write(p)
	w.written += int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// FlushError sends what is buffered (the head included) to the client.
func (w *loopResponse) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(false)
	}
	if w.err != nil {
		return w.err
	}
	return w.send()
}

// Flush is FlushError without the error.
func (w *loopResponse) Flush() { _ = w.FlushError() }

// sendHead writes the status line and header fields. final says the
// handler is done, so a body never written has length 0.
func (w *loopResponse) sendHead(final bool) {
	w.headSent = true
	h := w.header
	code := w.status
	w.noBody = w.req.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	if cl, ok := h["Content-Length"]; ok && len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.clen = n
		} else {
			delete(h, "Content-Length")
		}
	} else if ok {
		delete(h, "Content-Length")
	}
	b := *w.out
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(code)...)
	b = append(b, '\r', '\n')
	hasDate, hasClose := false, false
	for k, vv := range h {
		if vv == nil || strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue // net/http drops invalid names too
		}
		switch k {
		case "Date":
			hasDate = true
		case "Connection":
			hasClose = hasToken(vv, "close")
		case "Transfer-Encoding":
			continue // the framing is this writer's
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ':', ' ')
			b = h1.AppendFieldValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	if !hasDate {
		b = append(b, "Date: "...)
		b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
		b = append(b, '\r', '\n')
	}
	if !w.noBody && w.clen < 0 {
		if final {
			w.clen = 0
			b = append(b, "Content-Length: 0\r\n"...)
		} else {
			w.chunked = true
			b = append(b, "Transfer-Encoding: chunked\r\n"...)
		}
	}
	if w.req.Close || w.lc.s.shutting.Load() {
		if !hasClose {
			b = append(b, "Connection: close\r\n"...)
		}
		hasClose = true
	}
	w.close = hasClose
	b = append(b, '\r', '\n')
	*w.out = b
}

// finish ends the response after the handler returned; false means the
// connection cannot carry another request.
func (w *loopResponse) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headSent {
		w.sendHead(true)
	}
	if w.chunked && w.err == nil {
		b := append(*w.out, "0\r\n"...)
		b = w.appendTrailers(b)
		b = append(b, '\r', '\n')
		*w.out = b
	}
	if w.err != nil {
		return false
	}
	if !w.noBody && w.clen >= 0 && w.written != w.clen {
		return false // a short body: the client cannot find the next answer
	}
	return !w.close
}

// appendTrailers appends the trailer fields: those announced in the
// Trailer header and those set with http.TrailerPrefix.
func (w *loopResponse) appendTrailers(b []byte) []byte {
	h := w.header
	for _, list := range h["Trailer"] {
		for list != "" {
			var k string
			k, list, _ = strings.Cut(list, ",")
			k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k))
			if !httpguts.ValidHeaderFieldName(k) {
				continue
			}
			for _, v := range h[k] {
				b = append(b, k...)
				b = append(b, ':', ' ')
				b = h1.AppendFieldValue(b, v)
				b = append(b, '\r', '\n')
			}
		}
	}
	for k, vv := range h {
		if !strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k[len(http.TrailerPrefix):]) {
			continue
		}
		for _, v := range vv {
			b = append(b, k[len(http.TrailerPrefix):]...)
			b = append(b, ':', ' ')
			b = h1.AppendFieldValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	return b
}
