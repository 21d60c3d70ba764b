// Command registrar is meshlb's sidecar for one app instance: it starts or
// attaches to the app, registers it in Consul, reports its health through a
// TTL check, drains it on shutdown and deregisters it. See --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/discovery"
	"github.com/meshlb/meshlb/internal/certreload"
	"github.com/meshlb/meshlb/internal/cli"
	"github.com/meshlb/meshlb/internal/mesh"
	"github.com/meshlb/meshlb/internal/probe"
	"github.com/meshlb/meshlb/internal/sockpid"
	"github.com/meshlb/meshlb/internal/wire"
)

// Exit codes besides the app's own status.
const (
	exitOK       = 0
	exitFailure  = 1
	exitBadInput = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	cfg, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "registrar: %v\n", err)
		return exitBadInput
	}
	logger, err := cli.NewLogger("registrar", cfg.logLevel, cfg.logJSON, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "registrar: %v\n", err)
		return exitBadInput
	}
	// Read the TLS files before anything starts: a bad one is bad input.
	var mtls *mesh.TLS
	if cfg.meshTLSOn() {
		cert, err := certreload.New(cfg.meshTLSCert, cfg.meshTLSKey)
		if err != nil {
			fmt.Fprintf(stderr, "registrar: invalid --mesh-tls-cert/--mesh-tls-key: %v\n", err)
			return exitBadInput
		}
		if mtls, err = mesh.NewTLS(cert, cfg.meshTLSClientCA); err != nil {
			fmt.Fprintf(stderr, "registrar: invalid --mesh-tls-client-ca: %v\n", err)
			return exitBadInput
		}
	}
	client, err := discovery.NewClient(cfg.consul)
	if err != nil {
		fmt.Fprintf(stderr, "registrar: %v\n", err)
		return exitBadInput
	}
	r := &registrar{cfg: cfg, log: logger, client: client, host: hostname(), tls: mtls}
	return r.run()
}

// registrar is one run of the sidecar.
type registrar struct {
	cfg    *config
	log    hclog.Logger
	client *api.Client
	host   string

	app     *exec.Cmd     // wrap mode only
	appDone chan struct{} // closed when the app exited (wrap mode)
	appErr  error
	pid     int
	reg     *discovery.Registration
	mesh    *mesh.Inbound // nil unless --mesh-port
	tls     *mesh.TLS     // nil unless the mesh port serves TLS
}

func (r *registrar) run() int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if r.cfg.meshPort != 0 {
		if err := mesh.CheckTracing(ctx, r.process("check"), r.log); err != nil {
			r.log.Error("invalid tracing configuration", "error", err)
			return exitBadInput
		}
	}
	if len(r.cfg.command) > 0 {
		if err := r.startApp(); err != nil {
			r.log.Error("cannot start the app", "command", strings.Join(r.cfg.command, " "), "error", err)
			return exitFailure
		}
	} else if err := r.attach(ctx, sigs); err != nil {
		r.log.Error("cannot attach to the app", "port", r.cfg.port, "error", err)
		return exitFailure
	}

	svc := r.cfg.service_(r.pid, r.host)
	reg, err := discovery.NewRegistration(r.client, svc, r.log.Named("consul"))
	if err != nil {
		r.log.Error("invalid registration", "error", err)
		r.stopApp()
		return exitBadInput
	}
	r.reg = reg
	if r.cfg.meshPort != 0 {
		m, err := mesh.Serve(ctx, mesh.ServeConfig{Port: r.cfg.meshPort, Process: r.process(reg.Service().ID), TLS: r.tls, Logger: r.log,
			AppAddr: net.JoinHostPort(r.cfg.probeHost, strconv.Itoa(r.cfg.port))})
		if err != nil {
			r.log.Error("cannot start mesh mode", "mesh_port", r.cfg.meshPort, "error", err)
			r.stopApp()
			return exitFailure
		}
		r.mesh = m
	}
	r.log.Info("registrar started", "service", svc.Name, "service_id", svc.ID, "port", svc.Port,
		"app_port", r.cfg.port, "pid", r.pid, "host", r.host, "mode", r.mode())

	regCtx, stopReg := context.WithCancel(ctx)
	regDone := make(chan struct{})
	go func() { defer close(regDone); reg.Run(regCtx) }()
	probeCtx, stopProbe := context.WithCancel(ctx)
	go r.probeLoop(probeCtx)

	stopLoops := func() {
		stopProbe()
		stopReg()
		<-regDone
	}

	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGTERM, syscall.SIGINT:
				r.log.Info("signal received, draining", "signal", sig.String(), "drain", r.cfg.drain)
				stopProbe()
				return r.shutdown(sigs, stopLoops)
			default:
				if sig == syscall.SIGHUP && r.tls != nil {
					r.reloadTLS()
				}
				if r.app != nil {
					_ = r.app.Process.Signal(sig) // pass reload signals on to the app
				}
			}
		case <-r.appDone:
			code := exitStatus(r.app.ProcessState)
			r.log.Warn("app exited on its own: marking the instance critical and deregistering", "status", code, "error", r.appErr)
			stopProbe()
			mctx, mcancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := reg.MarkCritical(mctx, fmt.Sprintf("app exited with status %d", code)); err != nil {
				r.log.Warn("could not mark the instance critical", "error", err)
			}
			mcancel()
			stopLoops()
			r.shutdownMesh()
			r.deregister()
			return code
		}
	}
}

// reloadTLS reads the mesh port's TLS files again (SIGHUP): new handshakes
// use them, open connections are not dropped.
func (r *registrar) reloadTLS() {
	if err := r.tls.Reload(); err != nil {
		r.log.Error("mesh TLS reload failed: what did not load keeps its previous contents", "error", err)
		return
	}
	cert, key := r.tls.Files()
	r.log.Info("mesh TLS reloaded", "cert", cert, "key", key, "client_ca", r.cfg.meshTLSClientCA)
}

// process describes the app in the mesh port's spans.
func (r *registrar) process(serviceID string) mesh.Process {
	return mesh.Process{Service: r.cfg.service, InstanceID: serviceID, PID: r.pid, Host: r.host}
}

func (r *registrar) mode() string {
	m := "attach"
	if r.app != nil {
		m = "wrap"
	}
	if r.cfg.meshPort != 0 {
		m += "+mesh"
	}
	return m
}

// startApp starts the app in its own process group, so that a Ctrl-C on
// the terminal reaches the registrar only and the app is stopped after the
// drain. If the registrar dies, the kernel sends the app SIGTERM.
func (r *registrar) startApp() error {
	cmd := exec.Command(r.cfg.command[0], r.cfg.command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return err
	}
	r.app, r.pid = cmd, cmd.Process.Pid
	r.appDone = make(chan struct{})
	go func() { r.appErr = cmd.Wait(); close(r.appDone) }()
	return nil
}

// attach waits for something to listen on the port and finds its PID.
func (r *registrar) attach(ctx context.Context, sigs <-chan os.Signal) error {
	deadline := time.Now().Add(r.cfg.appWait)
	for {
		pid, err := sockpid.PIDOfPort(r.cfg.port)
		if err == nil {
			r.pid = pid
			return nil
		}
		if !errors.Is(err, sockpid.ErrNotListening) {
			r.log.Warn("app's PID not found; registering without it", "port", r.cfg.port, "error", err)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on port %d after %v (start the app first, or give -- COMMAND to let the registrar start it)", r.cfg.port, r.cfg.appWait)
		}
		select {
		case sig := <-sigs:
			return fmt.Errorf("interrupted by %v while waiting for the app", sig)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probeLoop probes the app and hands the result to the registration. In
// attach mode it also follows the app's PID when the app is restarted.
func (r *registrar) probeLoop(ctx context.Context) {
	p := probe.New(probe.Config{Kind: r.cfg.check, Addr: net.JoinHostPort(r.cfg.probeHost, strconv.Itoa(r.cfg.port)),
		Path: r.cfg.checkPath, Timeout: r.cfg.checkTimeout, GRPCService: r.cfg.grpcService})
	defer p.Close()
	var last discovery.Health
	t := time.NewTicker(r.cfg.checkInterval)
	defer t.Stop()
	for {
		h := p.Probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if h.Status != last.Status {
			r.log.Info("app health changed", "from", last.Status, "to", h.Status, "output", h.Output)
			if r.app == nil && h.Status != api.HealthCritical {
				r.refreshPID()
			}
		}
		if h != last {
			r.reg.SetHealth(h)
			last = h
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *registrar) refreshPID() {
	pid, err := sockpid.PIDOfPort(r.cfg.port)
	if err != nil || pid == r.pid {
		return
	}
	r.log.Info("app's PID changed", "old_pid", r.pid, "pid", pid)
	r.pid = pid
	if err := r.reg.SetService(r.cfg.service_(pid, r.host)); err != nil {
		r.log.Error("cannot update the registration", "error", err)
	}
}

// shutdown drains: mark critical, wait for edges to stop sending, let
// in-flight requests finish, stop the app (wrap mode only), deregister. A
// second signal cuts the drain wait short.
func (r *registrar) shutdown(sigs <-chan os.Signal, stopLoops func()) int {
	start := time.Now()
	mctx, mcancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := r.reg.MarkCritical(mctx, wire.DrainNote+": registrar received a stop signal"); err != nil {
		r.log.Warn("could not mark the instance critical; edges learn of it at deregistration", "error", err)
	}
	mcancel()
	if r.mesh != nil {
		r.mesh.SetDraining(true)
	}
	drain := time.NewTimer(r.cfg.drain)
	select {
	case <-drain.C:
	case sig := <-sigs:
		r.log.Warn("second signal: cutting the drain short", "signal", sig.String())
	case <-r.appDone:
	}
	drain.Stop()
	if r.mesh != nil {
		deadline := time.Now().Add(r.cfg.stopTimeout)
		for r.mesh.InFlight() > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	stopLoops()
	r.stopApp()
	r.shutdownMesh()
	r.deregister()
	r.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return exitOK
}

// stopApp stops the app the registrar started: SIGTERM to its process
// group, SIGKILL after --stop-timeout. It never signals an attached app.
func (r *registrar) stopApp() {
	if r.app == nil {
		return
	}
	select {
	case <-r.appDone:
		return
	default:
	}
	pgid := r.app.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-r.appDone:
		r.log.Info("app stopped", "pid", pgid, "status", exitStatus(r.app.ProcessState))
	case <-time.After(r.cfg.stopTimeout):
		r.log.Warn("app did not exit after SIGTERM, killing it", "pid", pgid, "stop_timeout", r.cfg.stopTimeout)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-r.appDone
	}
}

func (r *registrar) shutdownMesh() {
	if r.mesh == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = r.mesh.Shutdown(ctx)
}

func (r *registrar) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.reg.Deregister(ctx); err != nil {
		r.log.Warn("could not deregister; Consul removes the instance after --deregister-after", "error", err,
			"deregister_after", r.cfg.deregisterAfter)
	}
}

// exitStatus maps the app's end to a shell-style exit status.
func exitStatus(ps *os.ProcessState) int {
	if ps == nil {
		return exitFailure
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
