package proxy

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ServerConfig holds the client-facing server's limits. Zero fields take the
// defaults; a negative timeout means none. The HTTP/2 fields bound what one
// client connection can make the agent hold: streams, frame size and the
// request bytes it may send ahead of the proxy reading them.
type ServerConfig struct {
	// ReadHeaderTimeout bounds reading a request's headers (default 10s):
	// the slowloris guard.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included (default
	// none: uploads may be slow).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a response (default none: responses may
	// stream for long).
	WriteTimeout time.Duration
	// IdleTimeout closes client keep-alive connections idle that long
	// (default 120s).
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the request line and headers (default 64 KiB);
	// larger requests get 431. Over HTTP/2 it caps a request's header list.
	MaxHeaderBytes int

	// MaxConcurrentStreams caps the HTTP/2 streams (requests, gRPC calls)
	// open at once on one client connection (default 250). A well-behaved
	// client queues its further calls until one ends; streams opened beyond
	// the limit are refused.
	MaxConcurrentStreams int
	// MaxReadFrameSize is the largest HTTP/2 frame accepted from a client,
	// 16 KiB to 16 MiB (default 16 KiB, the protocol's initial value, as
	// HAProxy and nginx advertise: a client may not send larger HEADERS).
	MaxReadFrameSize int
	// MaxReceiveBufferPerStream is the HTTP/2 flow-control window of one
	// stream: the request body a client may send ahead of the proxy (and
	// so the instance) reading it, 1 byte to 2 GiB (default 1 MiB).
	MaxReceiveBufferPerStream int
	// MaxReceiveBufferPerConnection is the same window for a whole client
	// connection, 64 KiB to 2 GiB (default 1 MiB).
	MaxReceiveBufferPerConnection int
	// SendPingTimeout, when set, makes the server ping an HTTP/2 client
	// connection that sent nothing for that long: it finds clients that
	// vanished while their streams wait (default: no pings).
	SendPingTimeout time.Duration
	// PingTimeout closes an HTTP/2 client connection that does not answer
	// a ping within it (default 15s).
	PingTimeout time.Duration
	// WriteByteTimeout closes an HTTP/2 client connection that accepts no
	// byte for that long while the server has data for it (default none).
	WriteByteTimeout time.Duration
}

// HTTP/2 defaults and bounds applied by NewServer and checked by Validate.
const (
	DefaultMaxConcurrentStreams = 250
	DefaultMaxReadFrameSize     = 16 << 10
	DefaultMaxReceiveBuffer     = 1 << 20

	minFrameSize      = 16 << 10
	maxFrameSize      = 1<<24 - 1
	minConnReceiveBuf = 64 << 10
	maxReceiveBuf     = 1<<31 - 1
)

// Validate reports the first ServerConfig field out of its allowed range,
// naming the value and the range; NewServer would silently use the default
// for it instead.
func (sc ServerConfig) Validate() error {
	for _, c := range []struct {
		name     string
		v        int
		min, max int
	}{
		{"MaxConcurrentStreams", sc.MaxConcurrentStreams, 1, 1 << 20},
		{"MaxReadFrameSize", sc.MaxReadFrameSize, minFrameSize, maxFrameSize},
		{"MaxReceiveBufferPerStream", sc.MaxReceiveBufferPerStream, 1, maxReceiveBuf},
		{"MaxReceiveBufferPerConnection", sc.MaxReceiveBufferPerConnection, minConnReceiveBuf, maxReceiveBuf},
	} {
		if c.v != 0 && (c.v < c.min || c.v > c.max) {
			return fmt.Errorf("proxy: invalid %s %d: must be 0 (default) or %d-%d", c.name, c.v, c.min, c.max)
		}
	}
	for _, c := range []struct {
		name string
		v    time.Duration
	}{
		{"SendPingTimeout", sc.SendPingTimeout},
		{"PingTimeout", sc.PingTimeout},
		{"WriteByteTimeout", sc.WriteByteTimeout},
	} {
		if c.v < 0 {
			return fmt.Errorf("proxy: invalid %s %v: must not be negative (0 means none or the default)", c.name, c.v)
		}
	}
	return nil
}

// Defaults applied by NewServer to zero ServerConfig fields.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

// NewServer returns the client-facing server for h on addr, with safe limits
// and its error log going to logger at the inferred level. It serves HTTP/1.1
// and HTTP/2 with prior knowledge (h2c, what gRPC clients speak without TLS)
// on the same port, and HTTP/2 over TLS when served with ServeTLS or through
// a tls.Listener whose config offers "h2" by ALPN. Out-of-range HTTP/2
// limits take the defaults (see Validate).
func NewServer(addr string, h http.Handler, sc ServerConfig, logger hclog.Logger) *http.Server {
	if sc.ReadHeaderTimeout == 0 {
		sc.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if sc.IdleTimeout == 0 {
		sc.IdleTimeout = DefaultIdleTimeout
	}
	if sc.MaxHeaderBytes <= 0 {
		sc.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	orDefault := func(v, lo, hi, def int) int {
		if v < lo || v > hi {
			return def
		}
		return v
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	h2log := logger.Named("http2")
	srv := &http.Server{
		Protocols: &protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          orDefault(sc.MaxConcurrentStreams, 1, 1<<20, DefaultMaxConcurrentStreams),
			MaxReadFrameSize:              orDefault(sc.MaxReadFrameSize, minFrameSize, maxFrameSize, DefaultMaxReadFrameSize),
			MaxReceiveBufferPerStream:     orDefault(sc.MaxReceiveBufferPerStream, 1, maxReceiveBuf, DefaultMaxReceiveBuffer),
			MaxReceiveBufferPerConnection: orDefault(sc.MaxReceiveBufferPerConnection, minConnReceiveBuf, maxReceiveBuf, DefaultMaxReceiveBuffer),
			SendPingTimeout:               max(sc.SendPingTimeout, 0),
			PingTimeout:                   max(sc.PingTimeout, 0),
			WriteByteTimeout:              max(sc.WriteByteTimeout, 0),
			CountError: func(errType string) {
				// Protocol errors of misbehaving clients: the connection
				// or stream is closed, the server goes on.
				h2log.Debug("client protocol error", "type", errType)
			},
		},
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: sc.ReadHeaderTimeout,
		ReadTimeout:       sc.ReadTimeout,
		WriteTimeout:      sc.WriteTimeout,
		IdleTimeout:       sc.IdleTimeout,
		MaxHeaderBytes:    sc.MaxHeaderBytes,
		ErrorLog:          logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	// HTTP/2 behind a frame check (h2check.go), so that it passes h2spec.
	if err := configureH2Check(srv); err != nil {
		logger.Error("cannot put the HTTP/2 frame check in front of the server; serving HTTP/2 without it", "error", err)
	}
	return srv
}

// LimitBody answers 413 to a request whose declared body is larger than
// max, and caps an undeclared (chunked) one; max 0 means no limit.
func LimitBody(max int64, next http.Handler) http.Handler {
	if max <= 0 {
		return next
	}
	msg := fmt.Sprintf("request body larger than %d bytes\n", max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, msg)
			return
		}
		if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, max)
		}
		next.ServeHTTP(w, r)
	})
}
