package proxy

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// gRPC rides on HTTP/2 (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
// every call is one POST stream, so balancing per request is balancing per
// call even when a client multiplexes all its calls over one connection. The
// proxy recognises a call by its Content-Type, sends it to the instance over
// HTTP/2 cleartext, streams both bodies without buffering, passes the
// trailers (grpc-status, grpc-message) through and answers the failures it
// causes itself the gRPC way, so that a gRPC client can read them.

// gRPC status codes the proxy answers with (google.golang.org/grpc/codes).
const (
	grpcDeadlineExceeded = 4
	grpcUnimplemented    = 12
	grpcInternal         = 13
	grpcUnavailable      = 14
)

// Instance tags by which an instance says it speaks HTTP/2 cleartext: every
// request to it goes over h2c, not only gRPC calls.
const (
	TagGRPC = "grpc"
	TagH2C  = "h2c"
)

// isGRPC reports whether h's Content-Type is gRPC's: "application/grpc",
// alone or followed by "+codec" or parameters. gRPC-Web
// ("application/grpc-web…") is ordinary HTTP/1.1-compatible traffic and is
// not.
func isGRPC(h http.Header) bool {
	v := h["Content-Type"]
	if len(v) == 0 {
		return false
	}
	const ct = "application/grpc"
	s := v[0]
	if len(s) < len(ct) || !strings.EqualFold(s[:len(ct)], ct) {
		return false
	}
	return len(s) == len(ct) || s[len(ct)] == '+' || s[len(ct)] == ';'
}

// speaksH2C reports whether inst is tagged as speaking HTTP/2 cleartext.
func speaksH2C(inst *lb.Instance) bool {
	for _, t := range inst.Tags {
		if t == TagGRPC || t == TagH2C {
			return true
		}
	}
	return false
}

// grpcTimeout parses a grpc-timeout header value: at most 8 digits and a
// unit, H, M, S, m (milli), u (micro) or n (nano). ok is false when the value
// is malformed or too large to be a deadline.
func grpcTimeout(v string) (d time.Duration, ok bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	var n int64
	for i := 0; i < len(v)-1; i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n > math.MaxInt64/int64(unit) {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// withGRPCDeadline bounds the call by the client's grpc-timeout, if it sent
// a valid one: the upstream gets the header unchanged and enforces it too,
// but the proxy then also ends calls of clients that do not cancel. The
// returned function releases the timer.
func (x *exchange) withGRPCDeadline() context.CancelFunc {
	v := x.r.Header["Grpc-Timeout"]
	if len(v) == 0 {
		return nil
	}
	d, ok := grpcTimeout(v[0])
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(x.ctx, d)
	x.ctx = ctx
	return cancel
}

// deadlineExceeded reports whether the call's grpc-timeout passed while the
// client is still there. It reads the clock, not only the context: the
// instance got the same grpc-timeout a moment later and may reset the
// stream (CANCEL) for it before the proxy's own timer ran (seen under
// -race: UNAVAILABLE where the deadline had passed).
func (x *exchange) deadlineExceeded() bool {
	if x.r.Context().Err() != nil {
		return false
	}
	if x.ctx.Err() == context.DeadlineExceeded {
		return true
	}
	dl, ok := x.ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// failGRPC ends a gRPC call the proxy could not complete with a
// Trailers-Only response: HTTP 200 with grpc-status and grpc-message in the
// headers and no body, which is how a gRPC client expects to hear of a
// failed call (a plain-text 502 would only tell it the HTTP status). status
// is the HTTP equivalent recorded by the access log, the span and
// OnFailure.
func (x *exchange) failGRPC(code, status int, msg string) {
	x.status = status
	x.grpcStatus = strconv.Itoa(code)
	h := x.w.Header()
	h["Content-Type"] = []string{"application/grpc"}
	h["Grpc-Status"] = []string{x.grpcStatus}
	h["Grpc-Message"] = []string{grpcPercentEncode(msg)}
	x.w.WriteHeader(http.StatusOK)
}

// grpcCode is the gRPC status code for an HTTP status the proxy would
// otherwise answer with, as gRPC's HTTP-to-gRPC mapping has it.
func grpcCode(status int) int {
	switch status {
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
		http.StatusTooManyRequests:
		return grpcUnavailable
	}
	return grpcInternal
}

// endGRPC completes a forwarded gRPC response after its body: it records
// the call's grpc-status and, when the upstream failed mid-call without
// sending one, ends the call with grpc-status UNAVAILABLE (or
// DEADLINE_EXCEEDED when the grpc-timeout passed) in the trailers rather
// than cutting the stream, so the client learns why. The client being gone,
// nothing is written.
func (x *exchange) endGRPC(res *http.Response, readErr error) {
	if v := res.Header["Grpc-Status"]; len(v) > 0 {
		x.grpcStatus = v[0]
		return
	}
	if v := res.Trailer["Grpc-Status"]; len(v) > 0 {
		x.grpcStatus = v[0]
		return
	}
	if readErr == nil || x.r.Context().Err() != nil {
		return
	}
	code, msg := grpcUnavailable, "upstream of service "+x.route.service+" failed during the call"
	if x.deadlineExceeded() {
		code, msg = grpcDeadlineExceeded, "deadline exceeded at the proxy"
	}
	x.grpcStatus = strconv.Itoa(code)
	h := x.w.Header()
	h[http.TrailerPrefix+"Grpc-Status"] = []string{x.grpcStatus}
	h[http.TrailerPrefix+"Grpc-Message"] = []string{grpcPercentEncode(msg)}
}

// grpcPercentEncode encodes a grpc-message value: bytes outside printable
// ASCII, and '%', as %XX.
func grpcPercentEncode(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
