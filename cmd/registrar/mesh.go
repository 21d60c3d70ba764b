package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

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
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("mesh listener failed", "mesh_port", r.cfg.meshPort, "error", err)
		}
	}()
	r.log.Info("mesh mode: forwarding to the app", "mesh_port", r.cfg.meshPort, "app", net.JoinHostPort(r.cfg.probeHost, strconv.Itoa(r.cfg.port)), "tracing", on)
	return m, nil
}
