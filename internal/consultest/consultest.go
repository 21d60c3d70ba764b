// Package consultest starts a real Consul dev agent for tests: every port it
// opens is a free one, its state lives in a temporary folder, and it is
// stopped when the test (or TestMain) is done. It never mocks Consul.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// Server is a running Consul dev agent.
type Server struct {
	// HTTPAddr is host:port of the HTTP API.
	HTTPAddr string
	// Ports chosen for this agent; reused by Restart so clients keep working.
	HTTPPort, SerfLAN, SerfWAN, ServerPort int
	// DataDir is the agent's state folder (dev mode keeps state in memory).
	DataDir string
	Binary  string

	extraHCL string
	client   *api.Client
	clientMu sync.Once
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	log      *lockedBuffer
}

// Options tune the agent.
type Options struct {
	// ExtraHCL is appended to the agent's configuration (e.g. an acl block).
	ExtraHCL string
}

// Binary finds the consul binary: $CONSUL_BIN, then bin/consul in the repo
// (made by deploy/consul/install.sh), then PATH. The error says how to get it.
func Binary() (string, error) {
	if b := os.Getenv("CONSUL_BIN"); b != "" {
		return b, nil
	}
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, "bin", "consul")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	return "", errors.New("consul binary not found: run `deploy/consul/install.sh` (or `make test`, which runs it), or set CONSUL_BIN")
}

// RepoRoot returns the folder holding go.mod.
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("consultest: cannot locate source")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("consultest: go.mod not found")
		}
		dir = parent
	}
}

// FreePort returns a TCP port that was free a moment ago on 127.0.0.1.
// It is taken below Linux's ephemeral range (ip_local_port_range), where the
// kernel never hands a port to an outgoing connection: a port picked inside
// that range can be taken by another test's connect between the check and
// the bind ("address already in use").
func FreePort() (int, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// FreePorts returns n distinct TCP ports that were free a moment ago, below
// the ephemeral range (see FreePort): all listeners are held until all are
// chosen, so no port is returned twice.
func FreePorts(n int) ([]int, error) {
	lo, hi := portRange()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("consultest: no free port in %d-%d after %d tries", lo, hi, tries)
		}
		p := lo + rand.IntN(hi-lo+1)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // taken
		}
		defer l.Close()
		ports = append(ports, p)
	}
	return ports, nil
}

// portRange is where FreePorts picks: from 10000 up to just below the
// kernel's ephemeral range (32768-60999 by default).
func portRange() (lo, hi int) {
	lo, hi = 10000, 32767
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var eLo, eHi int
		if _, err := fmt.Sscan(string(b), &eLo, &eHi); err == nil && eLo-1 > lo+1000 {
			hi = eLo - 1
		}
	}
	return lo, hi
}

// lockedBuffer is a bytes.Buffer safe for the exec copy goroutine writing
// while a test reads the log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TB is the part of testing.TB the harness needs.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Logf(format string, args ...any)
}

// New starts a dev agent and registers its stop with t.Cleanup.
func New(t TB, opts ...Options) *Server {
	t.Helper()
	s, err := Start(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("consultest: stop: %v", err)
		}
	})
	return s
}

// Start starts a dev agent with state under dir. Callers must Stop it.
func Start(dir string, opts ...Options) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	s := &Server{Binary: bin, DataDir: dir}
	for _, o := range opts {
		s.extraHCL += o.ExtraHCL + "\n"
	}
	ports, err := FreePorts(4)
	if err != nil {
		return nil, err
	}
	s.HTTPPort, s.SerfLAN, s.SerfWAN, s.ServerPort = ports[0], ports[1], ports[2], ports[3]
	s.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", s.HTTPPort)
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	hcl := fmt.Sprintf(`ports { http = %d, serf_lan = %d, serf_wan = %d, server = %d, dns = -1, grpc = -1, grpc_tls = -1 }
%s`, s.HTTPPort, s.SerfLAN, s.SerfWAN, s.ServerPort, s.extraHCL)
	cmd := exec.Command(s.Binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", "consultest", "-log-level", "warn", "-hcl", hcl)
	s.log = &lockedBuffer{}
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.Binary, err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitLeader(ctx, s.HTTPAddr, s.done); err != nil {
		_ = cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("consul dev agent on %s: %w\n%s", s.HTTPAddr, err, s.log.String())
	}
	return nil
}

func waitLeader(ctx context.Context, addr string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + addr + "/v1/status/leader")
		if err == nil {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Trim(strings.TrimSpace(b.String()), `"`) != "" {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("exited before electing a leader")
		case <-ctx.Done():
			return errors.New("no leader within 30s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Client returns a consul/api client for this agent. It is made once and
// shared, so polling tests reuse its connections instead of running into
// Consul's per-client connection limit (http_max_conns_per_client, 200).
func (s *Server) Client() *api.Client {
	s.clientMu.Do(func() {
		cfg := api.DefaultConfig()
		cfg.Address = s.HTTPAddr
		cfg.Token = ""
		c, err := api.NewClient(cfg)
		if err != nil {
			panic(err) // only fails on bad TLS config, which we never set
		}
		s.client = c
	})
	return s.client
}

// Env returns CONSUL_HTTP_ADDR=... for child processes.
func (s *Server) Env() []string {
	return []string{"CONSUL_HTTP_ADDR=" + s.HTTPAddr}
}

// Stop stops the agent (SIGTERM, then SIGKILL after 5s). Stop is idempotent.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
	return nil
}

// Restart stops the agent and starts a fresh, empty one on the same ports
// (a dev agent keeps no state), as when a dev agent is restarted.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.start()
}

// Log returns what the agent printed so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return ""
	}
	return s.log.String()
}
