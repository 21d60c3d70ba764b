// Package consultest starts a real Consul dev agent for tests: every port it
// opens is a free one, its state lives in a temporary folder, and it is
// stopped when the test (or TestMain) is done. It never mocks Consul.
package consultest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/testing/testproc"
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
	proc     *testproc.Proc
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
	if root, err := testproc.RepoRoot(); err == nil {
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
	ports, err := testproc.FreePorts(4)
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
	p := testproc.Prepare(nil, s.Binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", "consultest", "-log-level", "warn", "-hcl", hcl)
	p.Cmd.SysProcAttr.Setpgid = true
	if err := p.Launch(); err != nil {
		return err
	}
	s.proc = p

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitLeader(ctx, s.HTTPAddr, p.Done); err != nil {
		p.Kill()
		return fmt.Errorf("consul dev agent on %s: %w\n%s", s.HTTPAddr, err, p.Out.String())
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
	if s.proc == nil {
		return nil
	}
	s.proc.Stop(syscall.SIGTERM, 5*time.Second)
	s.proc = nil
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
	if s.proc == nil {
		return ""
	}
	return s.proc.Out.String()
}

// PID returns the process ID of the running Consul agent, 0 when it is not
// running; benchmarks read its CPU time from /proc.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Cmd.Process.Pid
}
