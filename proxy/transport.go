package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"time"
)

// DialError is a failure to connect to an instance. Nothing was sent, so a
// request that failed with it is always safe to retry elsewhere.
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return "dial " + e.Addr + ": " + e.Err.Error() }

// Unwrap returns the dialer's error.
func (e *DialError) Unwrap() error { return e.Err }

// Timeout reports whether the connect timed out.
func (e *DialError) Timeout() bool {
	ne, ok := errors.AsType[net.Error](e.Err)
	return ok && ne.Timeout()
}

// newTransport returns the upstream transport: HTTP/1.1 keep-alive pools per
// instance, no compression (bodies pass through untouched), no proxy from the
// environment, and the dialer wrapped so dial failures are typed.
func newTransport(cfg Config) *http.Transport {
	d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &DialError{Addr: addr, Err: err}
			}
			return c, nil
		},
		MaxIdleConns:          0, // no global cap; per instance below
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		// A non-nil empty map keeps HTTP/2 off: upstreams speak HTTP/1.1.
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxResponseHeaderBytes: 1 << 20,
	}
}
