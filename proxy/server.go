package proxy

import (
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ServerConfig holds the client-facing server's limits. Zero fields take the
// defaults; a negative timeout means none.
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
	// larger requests get 431.
	MaxHeaderBytes int
}

// Defaults applied by NewServer to zero ServerConfig fields.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
)

// NewServer returns the client-facing server for h on addr, with safe limits
// and its error log going to logger at the inferred level.
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
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: sc.ReadHeaderTimeout,
		ReadTimeout:       sc.ReadTimeout,
		WriteTimeout:      sc.WriteTimeout,
		IdleTimeout:       sc.IdleTimeout,
		MaxHeaderBytes:    sc.MaxHeaderBytes,
		ErrorLog:          logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
}
