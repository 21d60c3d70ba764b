package proxy

import (
	"errors"
	"net/http"

	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

// statusClientClosed is what the access log and the server span record
// when the client went away before an answer (nginx's 499). Nothing is
// written to the client then.
const statusClientClosed = 499

// fail answers the client with a short plain-text error, or a gRPC call
// with the matching gRPC status.
func (x *exchange) fail(status int, msg string) {
	if x.grpc {
		x.failGRPC(grpcCode(status), status, msg)
		return
	}
	x.status = status
	x.written = int64(len(msg) + 1)
	http.Error(x.w, msg, status)
}

// failPick answers a request no instance could be picked for.
func (x *exchange) failPick(err error) {
	x.err = err
	if x.cache != nil && x.cacheStale() {
		return
	}
	svc := x.route.service
	switch {
	case errors.Is(err, lb.ErrNoPool):
		x.fail(http.StatusServiceUnavailable, "service "+svc+": no pool yet, waiting for Consul")
	case errors.Is(err, lb.ErrNoInstance):
		x.fail(http.StatusServiceUnavailable, "no instance available for service "+svc)
	default:
		x.fail(http.StatusServiceUnavailable, "service "+svc+" unavailable")
	}
}

// failUpstream answers after the last attempt failed with x.err: 504 on a
// timeout, 502 otherwise, nothing when the client is gone. A gRPC call gets
// DEADLINE_EXCEEDED when its grpc-timeout passed, else UNAVAILABLE.
func (x *exchange) failUpstream() {
	if x.r.Context().Err() != nil {
		x.status = statusClientClosed
		return
	}
	if x.cache != nil && x.cacheStale() {
		return
	}
	if x.grpc {
		if x.deadlineExceeded() {
			x.failGRPC(grpcDeadlineExceeded, http.StatusGatewayTimeout, "deadline exceeded before service "+x.route.service+" answered")
			return
		}
		x.failGRPC(grpcUnavailable, http.StatusBadGateway, "upstream of service "+x.route.service+" failed: "+errorType(x.err))
		return
	}
	if errors.Is(x.err, errInstanceLeft) {
		why := "not sent again: not idempotent"
		if x.idempotent && x.replayable() {
			why = "no other attempt was possible (no other instance, or max_attempts reached)"
		}
		x.fail(http.StatusBadGateway, "instance "+x.inst.ID+" of service "+x.route.service+
			" left the pool while the request was in flight; "+why)
		return
	}
	if isTimeout(x.err) {
		x.fail(http.StatusGatewayTimeout, "upstream of service "+x.route.service+" timed out")
		return
	}
	x.fail(http.StatusBadGateway, "upstream of service "+x.route.service+" failed")
}

// isTimeout reports whether err is a timeout (connect, response header).
func isTimeout(err error) bool {
	t, ok := errors.AsType[interface {
		error
		Timeout() bool
	}](err)
	return ok && t.Timeout()
}

// errorType is the low-cardinality error.type of a span, in internal/wire's
// words: the sidecar names the same failure the same way.
func errorType(err error) string {
	t := wire.ErrorType(err)
	switch {
	case t == wire.ErrCanceled, t == wire.ErrTimeout:
		return t
	case errors.Is(err, lb.ErrNoInstance), errors.Is(err, lb.ErrNoPool):
		return wire.ErrNoInstance
	}
	if _, ok := errors.AsType[*DialError](err); ok {
		return wire.ErrDial
	}
	return t
}
