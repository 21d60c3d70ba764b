// Package wire is the contract between the edge agent (proxy, discovery)
// and the registrar with its mesh sidecar (internal/mesh), written once: the
// header on the hop between them, the Consul tags, meta keys and check
// notes a registrar writes and the agent reads, and the words of their
// traces (span names, attribute keys, error types), so that a trace names
// one failure one way on both sides of a hop.
//
// It holds names and pure functions only, and imports nothing of meshlb.
// Changing a value here changes what running agents and registrars of
// other versions understand: keep them.
package wire

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"go.opentelemetry.io/otel/attribute"
)

// The hop between agent and sidecar.
const (
	// DrainingHeader is set to DrainingValue on every response of a mesh
	// sidecar while its instance drains. The agent marks the instance
	// draining when it sees it, and never forwards the header.
	DrainingHeader = "X-Meshlb-Draining"
	DrainingValue  = "1"
)

// What a registrar writes in Consul and the agent reads.
const (
	// TagHTTPS says the instance's registered port serves TLS (a mesh port
	// with --mesh-tls-cert): the agent speaks HTTPS/1.1 to it.
	TagHTTPS = "https"
	// MetaPID is the app's process ID, MetaHost the host's name, and
	// MetaAppPort the app's own port behind a mesh port.
	MetaPID     = "pid"
	MetaHost    = "host"
	MetaAppPort = "app_port"
	// DrainNote starts the output of the critical check a registrar sets
	// when it drains: the agent tells a drain from a failure by it.
	DrainNote = "draining"
)

// Span attributes meshlb adds to the semantic conventions' (meshlb.*).
const (
	AttrService      = attribute.Key("meshlb.service")
	AttrInstancePID  = attribute.Key("meshlb.instance.pid")
	AttrInstanceHost = attribute.Key("meshlb.instance.host")
	AttrInstanceDC   = attribute.Key("meshlb.instance.datacenter")
	AttrInstanceTier = attribute.Key("meshlb.instance.tier")
	AttrPolicy       = attribute.Key("meshlb.lb.policy")
	AttrAttempt      = attribute.Key("meshlb.attempt")
	// AttrDraining is set on a sidecar's span of a request served while
	// its instance drained.
	AttrDraining = attribute.Key("meshlb.draining")
)

// Error types: the error.type of a failed exchange on either hop, also the
// outcome of an attempt in the agent's recent requests.
const (
	ErrCanceled         = "canceled"          // the client went away
	ErrTimeout          = "timeout"           // a deadline passed
	ErrDial             = "dial_error"        // no connection (refused, unreachable)
	ErrConnectionReset  = "connection_reset"  // the peer reset the connection
	ErrConnectionClosed = "connection_closed" // the peer closed it mid-exchange
	ErrResponseAborted  = "response_aborted"  // the response body broke off
	ErrNoInstance       = "no_instance"       // nothing to send to (agent only)
	ErrOther            = "_OTHER"            // the semantic conventions' fallback
)

// ErrorType returns the error type of err, a failed exchange with the next
// hop. Callers with errors of their own (the agent's "no instance") check
// for them first or when this returns ErrOther.
func ErrorType(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	case isTimeout(err):
		return ErrTimeout
	case isDial(err):
		return ErrDial
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrConnectionReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrConnectionClosed
	}
	return ErrOther
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	t, ok := errors.AsType[interface {
		error
		Timeout() bool
	}](err)
	return ok && t.Timeout()
}

// isDial reports whether err is a failed connect: a dial *net.OpError (as
// net/http's Transport returns) or a refused connection.
func isDial(err error) bool {
	if op, ok := errors.AsType[*net.OpError](err); ok && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// SpanName is the semantic conventions' name of an HTTP span without a
// route template: the method, or "HTTP" for a method it does not know.
func SpanName(method string) string {
	switch method {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return method
	}
	return "HTTP"
}
