package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/certreload"
	"github.com/meshlb/meshlb/internal/mesh"
	"github.com/meshlb/meshlb/tracing"
)

// meshInbound is mesh mode's listener: the registered port, forwarding to
// the app on loopback through mesh.Handler, which traces every request.
type meshInbound struct {
	srv *http.Server
	h   *mesh.Handler
	tp  *sdktrace.TracerProvider // nil when tracing is off
}

func (m *meshInbound) SetDraining(on bool) { m.h.SetDraining(on) }
func (m *meshInbound) InFlight() int64     { return m.h.InFlight() }

// Shutdown stops accepting, waits for in-flight requests (bounded by ctx)
// and flushes the spans.
func (m *meshInbound) Shutdown(ctx context.Context) error {
	err := m.srv.Shutdown(ctx)
	m.h.CloseIdleConnections()
	if m.tp != nil {
		if terr := m.tp.Shutdown(ctx); terr != nil && err == nil {
			err = terr
		}
	}
	return err
}

// tracingOptions describes the app process for the mesh spans' resource.
func (r *registrar) tracingOptions(serviceID string) tracing.Options {
	return tracing.Options{
		ServiceName: r.cfg.service,
		Attributes: []attribute.KeyValue{
			attribute.String("service.instance.id", serviceID),
			attribute.Int("process.pid", r.pid),
			attribute.String("host.name", r.host),
		},
		Logger: r.log.Named("tracing"),
	}
}

// checkTracing validates the OTEL_* variables before anything starts, so a
// bad value is a clear error at start naming the variable.
func checkTracing(ctx context.Context, r *registrar) error {
	tp, _, err := tracing.NewProvider(ctx, r.tracingOptions("check"))
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

// startMesh listens on --mesh-port (all interfaces: edges on other hosts
// dial it) and serves the mesh handler.
func startMesh(ctx context.Context, r *registrar) (inbound, error) {
	svc := r.reg.Service()
	tp, on, err := tracing.NewProvider(ctx, r.tracingOptions(svc.ID))
	if err != nil {
		return nil, err
	}
	var provider trace.TracerProvider
	if on {
		provider = tp
	}
	h, err := mesh.NewHandler(mesh.Config{
		AppAddr: net.JoinHostPort(r.cfg.probeHost, strconv.Itoa(r.cfg.port)),
		Tracer:  provider,
		Logger:  r.log.Named("mesh"),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", r.cfg.meshPort))
	if err != nil {
		return nil, fmt.Errorf("listening on --mesh-port %d: %w", r.cfg.meshPort, err)
	}
	m := &meshInbound{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
			MaxHeaderBytes: 64 << 10},
		h:  h,
		tp: tp,
	}
	if r.tls != nil {
		// ReadHeaderTimeout bounds the handshake too. A client refused in
		// the handshake is logged at debug only: one line per connection
		// would let anyone fill the log.
		ln = tls.NewListener(ln, r.tls.listenerConfig())
		m.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // HTTP/1.1 only
		m.srv.ErrorLog = r.log.Named("mesh").StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
	}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("mesh listener failed", "mesh_port", r.cfg.meshPort, "error", err)
		}
	}()
	r.log.Info("mesh mode: forwarding to the app", "mesh_port", r.cfg.meshPort, "app", net.JoinHostPort(r.cfg.probeHost, strconv.Itoa(r.cfg.port)),
		"tracing", on, "tls", r.tls != nil, "client_certs", r.cfg.meshTLSClientCA != "")
	return m, nil
}

// meshTLS is the mesh port's TLS: a certificate reloaded from files and,
// optionally, the CAs that client certificates must chain to. Each
// handshake takes the configuration current at that moment, so a reload
// (SIGHUP) applies to new connections while open ones keep theirs.
type meshTLS struct {
	cert   *certreload.Reloader
	caFile string // "" = no client certificates asked for
	conf   atomic.Pointer[tls.Config]
}

// newMeshTLS loads the files named by --mesh-tls-cert, --mesh-tls-key and
// --mesh-tls-client-ca (caFile may be ""). Errors name the flag and file.
func newMeshTLS(certFile, keyFile, caFile string) (*meshTLS, error) {
	cr, err := certreload.New(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("invalid --mesh-tls-cert/--mesh-tls-key: %w", err)
	}
	m := &meshTLS{cert: cr, caFile: caFile}
	var pool *x509.CertPool
	if caFile != "" {
		if pool, err = loadCAs(caFile); err != nil {
			return nil, fmt.Errorf("invalid --mesh-tls-client-ca: %w", err)
		}
	}
	m.conf.Store(m.handshakeConfig(pool))
	return m, nil
}

// handshakeConfig is the configuration of one handshake.
func (m *meshTLS) handshakeConfig(clientCAs *x509.CertPool) *tls.Config {
	c := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.cert.GetCertificate,
		NextProtos:     []string{"http/1.1"},
		// A resumed session skips the client certificate check: with
		// tickets, a client whose CA a reload removed could still resume.
		// Edges keep their connections open, so full handshakes are rare.
		SessionTicketsDisabled: true,
	}
	if clientCAs != nil {
		c.ClientCAs = clientCAs
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c
}

// listenerConfig is the configuration for tls.NewListener.
func (m *meshTLS) listenerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return m.conf.Load(), nil
		},
	}
}

// reload reads the files again. A certificate pair or CA file that fails
// to load is reported and its previous contents kept.
func (m *meshTLS) reload() error {
	errCert := m.cert.Reload()
	var pool *x509.CertPool
	var errCA error
	if m.caFile != "" {
		if pool, errCA = loadCAs(m.caFile); errCA != nil {
			errCA = fmt.Errorf("client CA (kept the previous one): %w", errCA)
			pool = m.conf.Load().ClientCAs
		}
	}
	m.conf.Store(m.handshakeConfig(pool))
	return errors.Join(errCert, errCA)
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}
