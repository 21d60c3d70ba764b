package wire

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
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestErrorType(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &net.OpError{Err: syscall.ECONNREFUSED}}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"dial refused", refused, ErrDial},
		{"dial refused, wrapped", fmt.Errorf("round trip: %w", refused), ErrDial},
		{"refused without dial", syscall.ECONNREFUSED, ErrDial},
		{"dial unreachable", &net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, ErrDial},
		{"dial timeout", &net.OpError{Op: "dial", Err: timeoutErr{}}, ErrTimeout},
		{"deadline", context.DeadlineExceeded, ErrTimeout},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), ErrCanceled},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, ErrConnectionReset},
		{"broken pipe", &net.OpError{Op: "write", Err: syscall.EPIPE}, ErrConnectionReset},
		{"eof", io.ErrUnexpectedEOF, ErrConnectionClosed},
		{"other", errors.New("boom"), ErrOther},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ErrorType(tc.err); got != tc.want {
				t.Errorf("ErrorType(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

// TestRefusedConnectIsADialError connects for real: what net/http's
// Transport (the sidecar's hop to the app) returns for a closed port is
// the agent's word for a failed connect too.
func TestRefusedConnectIsADialError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := &http.Client{Timeout: 5 * time.Second}
	_, err = c.Get("http://" + addr + "/")
	if err == nil {
		t.Fatal("a closed port answered")
	}
	if got := ErrorType(err); got != ErrDial {
		t.Errorf("ErrorType(%v) = %q, want %q", err, got, ErrDial)
	}
}

func TestSpanName(t *testing.T) {
	for method, want := range map[string]string{"GET": "GET", "PATCH": "PATCH", "PROPFIND": "HTTP", "get": "HTTP", "": "HTTP"} {
		if got := SpanName(method); got != want {
			t.Errorf("SpanName(%q) = %q, want %q", method, got, want)
		}
	}
}
