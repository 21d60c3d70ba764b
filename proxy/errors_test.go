package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// timeoutErr is a net.Error that timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestErrorClassification(t *testing.T) {
	dialTimeout := &DialError{Addr: "10.0.0.1:80", Err: &net.OpError{Op: "dial", Err: timeoutErr{}}}
	dialRefused := &DialError{Addr: "127.0.0.1:1", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}
	tests := []struct {
		name    string
		err     error
		timeout bool
		typ     string
	}{
		{"connect timeout", dialTimeout, true, "timeout"},
		{"connection refused", dialRefused, false, "dial_error"},
		{"wrapped refused", fmt.Errorf("round trip: %w", dialRefused), false, "dial_error"},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, false, "connection_reset"},
		{"eof", io.ErrUnexpectedEOF, false, "connection_closed"},
		{"canceled", context.Canceled, false, "canceled"},
		{"no instance", lb.ErrNoInstance, false, "no_instance"},
		{"other", errors.New("boom"), false, "_OTHER"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isTimeout(tt.err); got != tt.timeout {
				t.Errorf("isTimeout = %v, want %v", got, tt.timeout)
			}
			if got := errorType(tt.err); got != tt.typ {
				t.Errorf("errorType = %q, want %q", got, tt.typ)
			}
		})
	}
	if !dialTimeout.Timeout() || dialRefused.Timeout() {
		t.Error("DialError.Timeout does not follow the dialer's error")
	}
}

func TestRetryAfter(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	tests := []struct {
		name     string
		status   int
		value    string
		min, max time.Duration
	}{
		{"seconds on 503", 503, "120", 120 * time.Second, 120 * time.Second},
		{"seconds on 429", 429, "5", 5 * time.Second, 5 * time.Second},
		{"date", 503, future, 59 * time.Minute, time.Hour},
		{"ignored on 500", 500, "120", 0, 0},
		{"negative", 503, "-3", 0, 0},
		{"garbage", 503, "soon", 0, 0},
		{"absent", 503, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := &http.Response{StatusCode: tt.status, Header: http.Header{}}
			if tt.value != "" {
				res.Header.Set("Retry-After", tt.value)
			}
			if got := retryAfter(res); got < tt.min || got > tt.max {
				t.Errorf("retryAfter = %v, want in [%v, %v]", got, tt.min, tt.max)
			}
		})
	}
}

func TestIsIdempotent(t *testing.T) {
	for m, want := range map[string]bool{
		"GET": true, "HEAD": true, "OPTIONS": true, "PUT": true, "DELETE": true, "TRACE": true,
		"POST": false, "PATCH": false, "CONNECT": false, "PROPFIND": false, "get": false,
	} {
		t.Run(m, func(t *testing.T) {
			if got := isIdempotent(m); got != want {
				t.Errorf("isIdempotent(%q) = %v", m, got)
			}
		})
	}
}
