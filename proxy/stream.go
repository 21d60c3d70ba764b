package proxy

import (
	"io"
	"net/http"
	"strings"
	"sync"
)

// copyBufSize is the size of the pooled buffers response bodies are copied
// through.
const copyBufSize = 32 << 10

var copyBufPool = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

// writeResponse forwards res to the client: headers without the hop-by-hop
// ones, the body streamed, then the trailers. It returns the error that cut
// the upstream body short, if any; a client that went away is not an error
// of the upstream's.
func (x *exchange) writeResponse(res *http.Response) error {
	removeHopByHop(res.Header)
	h := x.w.Header()
	for k, vv := range res.Header {
		h[k] = vv
	}
	if _, ok := res.Header["Content-Type"]; !ok {
		// Present but nil: net/http then neither sniffs nor sends one.
		h["Content-Type"] = nil
	}
	x.setTraceResponse(h)
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	x.w.WriteHeader(res.StatusCode)

	// Like httputil.ReverseProxy with FlushInterval -1: event streams and
	// bodies of unknown length reach the client as they come.
	flush := res.ContentLength == -1 || isEventStream(res.Header)
	rc := http.NewResponseController(x.w)
	if flush {
		rc.Flush() // headers now, even if the first event is late
	}
	readErr := x.copyBody(rc, res.Body, flush)
	res.Body.Close() // populates res.Trailer

	if len(res.Trailer) > 0 {
		// Flushing forces chunking, so net/http does not compute a
		// Content-Length for a short body and drop the trailers.
		rc.Flush()
		if len(res.Trailer) == announced {
			for k, vv := range res.Trailer {
				h[k] = vv
			}
		} else {
			for k, vv := range res.Trailer {
				h[http.TrailerPrefix+k] = vv
			}
		}
	}
	return readErr
}

// copyBody copies the response body to the client through a pooled buffer,
// flushing after every write when flush is set. It returns the upstream's
// read error; a failed client write just ends the copy.
func (x *exchange) copyBody(rc *http.ResponseController, src io.Reader, flush bool) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			nw, werr := x.w.Write(buf[:n])
			x.written += int64(nw)
			if werr != nil {
				return nil
			}
			if flush {
				if err := rc.Flush(); err != nil {
					return nil
				}
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// isEventStream reports whether the Content-Type is text/event-stream.
func isEventStream(h http.Header) bool {
	v := h["Content-Type"]
	if len(v) == 0 {
		return false
	}
	ct := v[0]
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
}
