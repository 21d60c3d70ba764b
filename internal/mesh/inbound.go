package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/tracing"
)

// Inbound is mesh mode's listener: the registered port, forwarding to the
// app on loopback through a Handler, which traces every request.
type Inbound struct {
	srv *http.Server
	h   *Handler
	tp  *sdktrace.TracerProvider // nil when tracing is off
}

// SetDraining tells edges the instance drains (see Handler.SetDraining).
func (m *Inbound) SetDraining(on bool) { m.h.SetDraining(on) }

// InFlight is the number of requests being forwarded.
func (m *Inbound) InFlight() int64 { return m.h.InFlight() }

// Shutdown stops accepting, waits for in-flight requests (bounded by ctx)
// and flushes the spans.
func (m *Inbound) Shutdown(ctx context.Context) error {
	err := m.srv.Shutdown(ctx)
	m.h.CloseIdleConnections()
	if m.tp != nil {
		if terr := m.tp.Shutdown(ctx); terr != nil && err == nil {
			err = terr
		}
	}
	return err
}

// Process describes the app process in the spans' resource.
type Process struct {
	Service    string // service.name: the Consul service
	InstanceID string // service.instance.id: the Consul service ID
	PID        int
	Host       string
}

func (p Process) tracingOptions(logger hclog.Logger) tracing.Options {
	return tracing.Options{
		ServiceName: p.Service,
		Attributes: []attribute.KeyValue{
			attribute.String("service.instance.id", p.InstanceID),
			attribute.Int("process.pid", p.PID),
			attribute.String("host.name", p.Host),
		},
		Logger: logger.Named("tracing"),
	}
}

// CheckTracing validates the OTEL_* variables before anything starts, so a
// bad value is a clear error at start naming the variable.
func CheckTracing(ctx context.Context, p Process, logger hclog.Logger) error {
	tp, _, err := tracing.NewProvider(ctx, p.tracingOptions(logger))
	if err != nil {
		return err
	}
	if tp != nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx)
	}
	return nil
}

// ServeConfig configures Serve.
type ServeConfig struct {
	Port    int    // the mesh port, on all interfaces: edges on other hosts dial it
	AppAddr string // the app's host:port on loopback
	Process Process
	TLS     *TLS // nil: plain HTTP
	// Logger is the registrar's; the handler logs as "mesh", tracing as
	// "tracing".
	Logger hclog.Logger
}

// Serve listens on the mesh port and serves a Handler forwarding to the
// app, tracing every request when the OTEL_* variables ask for it, until
// Shutdown.
func Serve(ctx context.Context, cfg ServeConfig) (*Inbound, error) {
	tp, on, err := tracing.NewProvider(ctx, cfg.Process.tracingOptions(cfg.Logger))
	if err != nil {
		return nil, err
	}
	var provider trace.TracerProvider
	if on {
		provider = tp
	}
	h, err := NewHandler(Config{AppAddr: cfg.AppAddr, Tracer: provider, Logger: cfg.Logger.Named("mesh")})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("listening on --mesh-port %d: %w", cfg.Port, err)
	}
	m := &Inbound{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
			MaxHeaderBytes: 64 << 10},
		h:  h,
		tp: tp,
	}
	if cfg.TLS != nil {
		// ReadHeaderTimeout bounds the handshake too. A client refused in
		// the handshake is logged at debug only: one line per connection
		// would let anyone fill the log.
		ln = tls.NewListener(ln, cfg.TLS.ListenerConfig())
		m.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // HTTP/1.1 only
		m.srv.ErrorLog = cfg.Logger.Named("mesh").StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
	}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("mesh listener failed", "mesh_port", cfg.Port, "error", err)
		}
	}()
	cfg.Logger.Info("mesh mode: forwarding to the app", "mesh_port", cfg.Port, "app", cfg.AppAddr,
		"tracing", on, "tls", cfg.TLS != nil, "client_certs", cfg.TLS != nil && cfg.TLS.caFile != "")
	return m, nil
}
