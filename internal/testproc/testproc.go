// Package testproc runs the project's binaries and the example app as real
// processes in integration tests: it builds them once per test binary,
// starts them with their output captured (shown when a test fails), and
// kills whatever is left when the test ends.
package testproc

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/consultest"
)

// Build compiles the named commands (e.g. "agent", "registrar") with the
// race detector into dir and returns their paths by name.
func Build(dir string, cmds ...string) (map[string]string, error) {
	root, err := consultest.RepoRoot()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, c := range cmds {
		bin := filepath.Join(dir, c)
		b := exec.Command("go", "build", "-race", "-o", bin, "./cmd/"+c)
		b.Dir = root
		if msg, err := b.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building %s: %v\n%s", c, err, msg)
		}
		out[c] = bin
	}
	return out, nil
}

// Proc is a started process with its output captured.
type Proc struct {
	Cmd  *exec.Cmd
	Out  *Buffer
	Done chan struct{}
}

// Buffer is a bytes.Buffer safe for concurrent writes and reads.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start starts name with args and env added to the test's environment. The
// process is killed when the test ends, and its output logged if it failed.
func Start(t testing.TB, env []string, name string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Cmd: exec.Command(name, args...), Out: &Buffer{}, Done: make(chan struct{})}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.Out, p.Out
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.Cmd.Wait(); close(p.Done) }()
	t.Cleanup(func() {
		select {
		case <-p.Done:
		default:
			_ = p.Cmd.Process.Kill()
			<-p.Done
		}
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", filepath.Base(name), p.Cmd.Process.Pid, p.Out.String())
		}
	})
	return p
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.Done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end and returns its shell-style status
// (128+N when killed by signal N). It fails the test after timeout.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.Done:
		ps := p.Cmd.ProcessState
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ps.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("process %d still running after %v", p.Cmd.Process.Pid, timeout)
		return -1
	}
}

// WaitFor polls cond every 10ms until it holds, failing the test after
// timeout; it returns how long it took.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// FreePort returns a free TCP port or fails the test.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := consultest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// App returns the argv of the example Tornado app on port, or fails the
// test saying how to install Tornado.
func App(t testing.TB, port int) []string {
	t.Helper()
	argv, err := consultest.AppCommand(port)
	if err != nil {
		t.Fatal(err)
	}
	return argv
}

// StartApp starts the example app on port and waits until it listens.
func StartApp(t testing.TB, port int) *Proc {
	t.Helper()
	argv := App(t, port)
	p := Start(t, nil, argv[0], append(argv[1:], "--logging=warning")...)
	if err := consultest.WaitListening(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}
