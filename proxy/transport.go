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
// environment, and the dialer wrapped so dial failures are typed. It also
// carries the requests to instances tagged TagHTTPS, over TLS with
// cfg.UpstreamTLS (see upstreamTLSConfig).
func newTransport(cfg Config) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           typedDialer(cfg.ConnectTimeout),
		MaxIdleConns:          0, // no global cap; per instance below
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		// A non-nil empty map keeps HTTP/2 off: upstreams speak HTTP/1.1,
		// over TLS too (instances tagged TagHTTPS).
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
		TLSClientConfig: upstreamTLSConfig(cfg.UpstreamTLS),
		// As nginx's proxy_connect_timeout, the connect timeout bounds
		// the TLS handshake too.
		TLSHandshakeTimeout:    cfg.ConnectTimeout,
		MaxResponseHeaderBytes: 1 << 20,
	}
}

// h2cStreamWindow is the HTTP/2 flow-control window the proxy grants an
// upstream per stream: how much of one response it buffers when the client
// reads slower than the instance writes. Go's transport default is 4 MiB;
// 1 MiB matches what its server grants a client per stream.
const h2cStreamWindow = 1 << 20

// newH2CTransport returns an upstream transport speaking HTTP/2 cleartext
// with prior knowledge, as gRPC servers expect. Calls to one instance are
// multiplexed over one connection, a new one being opened when the instance's
// stream limit is reached. responseHeaderTimeout 0 means none: a gRPC
// server may rightly answer a streaming call's headers late (a watch sends
// nothing until something changes), so calls are bounded by their deadline
// instead.
func newH2CTransport(cfg Config, responseHeaderTimeout time.Duration) *http.Transport {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           typedDialer(cfg.ConnectTimeout),
		Protocols:             &protos,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ResponseHeaderTimeout: responseHeaderTimeout,
		DisableCompression:    true,
		// Pings (HTTP2.SendPingTimeout) stay off: gRPC servers answer
		// pings on idle connections with GOAWAY too_many_pings, which
		// fails calls racing it. Dead peers are found by TCP keep-alive.
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream: h2cStreamWindow,
		},
		MaxResponseHeaderBytes: 1 << 20,
	}
}

// deadPeerTimeout bounds how long an upstream connection waits on a peer
// that acknowledges nothing (a host cut off or powered off): keepalive
// probes start after 5s of silence, one a second, and TCP_USER_TIMEOUT
// closes the connection once 10s pass unacknowledged. Measured on the
// multi-host tests: a GET sent on a kept-alive connection to a host that
// vanished otherwise waited for the response-header timeout (60s).
const deadPeerTimeout = 10 * time.Second

// typedDialer returns a DialContext whose failures are *DialError.
func typedDialer(timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:         timeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: time.Second, Count: 10},
		Control:         deadPeerControl(deadPeerTimeout),
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &DialError{Addr: addr, Err: err}
		}
		return c, nil
	}
}
