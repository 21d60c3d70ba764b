package httpcache

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/meshlb/meshlb/internal/h1"
	"golang.org/x/net/http/httpguts"
)

// The wire head of a stored 200: what a hit on an event loop writes before
// the fields that change per request (Age, Cache-Status, Date when the
// response had none, traceresponse, Connection: close). It is built once,
// when the entry is stored, so a plain hit copies bytes instead of
// building a field map and serializing it.

// prepareWire builds e's wire head, once, before e is published; only a
// 200 gets one (other statuses are served through the generic path).
func (e *Entry) prepareWire() {
	if e.Status != http.StatusOK || e.wire != nil {
		return
	}
	keys := make([]string, 0, len(e.Header))
	for k := range e.Header {
		switch k {
		case "Age", "Cache-Status", "Content-Length", "Transfer-Encoding", "Connection":
			// Per request, or the framing, which is ours.
			continue
		case "Date":
			e.wireDate = true
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := make([]byte, 0, e.size-len(e.Body))
	b = append(b, "HTTP/1.1 200 OK\r\n"...)
	for _, k := range keys {
		for _, v := range e.Header[k] {
			b = append(b, k...)
			b = append(b, ':', ' ')
			b = h1.AppendFieldValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(e.Body)), 10)
	b = append(b, '\r', '\n')
	e.wire = b
	e.size += len(b) // held too: the store's weight counts it
}

// Wire returns the wire head of a stored 200 (status line and fields, each
// line ending in CRLF, without the blank line), and whether it holds a
// Date; nil for other entries. The caller must not change it.
func (e *Entry) Wire() (head []byte, hasDate bool) { return e.wire, e.wireDate }
