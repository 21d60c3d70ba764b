package lb

import (
	"errors"
	"net/http"
	"time"
)

// ErrNoInstance is returned by Pick when the pool has no instance that can
// serve (empty, or every candidate already tried or draining). The proxy
// maps it to 503.
var ErrNoInstance = errors.New("lb: no instance available")

// Result is what the proxy reports back after an attempt on an instance.
type Result struct {
	// Err is non-nil when the attempt failed at the transport level
	// (dial error, reset, timeout).
	Err error
	// Status is the HTTP status received (0 if none).
	Status int
	// Latency is the time to response headers (or to failure).
	Latency time.Duration
	// RetryAfter is the parsed Retry-After of a 429/503 answer, if any.
	RetryAfter time.Duration
}

// Failed reports whether the result counts as a failure for passive health
// (transport error or 502/503/504 from the instance).
func (r Result) Failed() bool {
	return r.Err != nil || r.Status == http.StatusBadGateway ||
		r.Status == http.StatusServiceUnavailable || r.Status == http.StatusGatewayTimeout
}
