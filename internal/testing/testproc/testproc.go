// Package testproc is the one process runner and the one free-port helper
// of the test harnesses and the bench programs: it builds the project's
// binaries once per test binary, starts processes with their output
// captured (shown when a test fails), and stops or kills whatever is left
// when the test ends. Production code never imports it.
package testproc

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RepoRoot returns the folder holding go.mod.
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("testproc: cannot locate source")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testproc: go.mod not found")
		}
		dir = parent
	}
}

// Build compiles the named commands (e.g. "agent", "registrar") with the
// race detector into dir and returns their paths by name.
func Build(dir string, cmds ...string) (map[string]string, error) {
	root, err := RepoRoot()
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

// Proc is a process with its output captured in Out. Done is closed when it
// has ended.
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

// Prepare returns name with args, not started yet: env is added to this
// process's environment, stdout and stderr go to Out, and the process is
// killed if its parent dies. The caller may change Cmd (Env, Stdout,
// SysProcAttr.Setpgid, …) before Launch.
func Prepare(env []string, name string, args ...string) *Proc {
	p := &Proc{Cmd: exec.Command(name, args...), Out: &Buffer{}, Done: make(chan struct{})}
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.Out, p.Out
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return p
}

// Launch starts a prepared process and closes Done when it ends.
func (p *Proc) Launch() error {
	if err := p.Cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Cmd.Path, err)
	}
	go func() { _ = p.Cmd.Wait(); close(p.Done) }()
	return nil
}

// Start starts name with args and env added to the test's environment. The
// process is killed when the test ends, and its output logged if it failed.
func Start(t testing.TB, env []string, name string, args ...string) *Proc {
	t.Helper()
	p := Prepare(env, name, args...)
	if err := p.Launch(); err != nil {
		t.Fatal(err)
	}
	p.KillAtEnd(t, filepath.Base(name))
	return p
}

// KillAtEnd kills the process (its group, if it has one of its own) when
// the test ends, and logs its output under label if the test failed.
func (p *Proc) KillAtEnd(t testing.TB, label string) {
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", label, p.Cmd.Process.Pid, p.Out.String())
		}
	})
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

// Kill kills the process, or its group when it runs in one of its own, and
// waits for it to end. It does nothing once the process has ended.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	if a := p.Cmd.SysProcAttr; a != nil && a.Setpgid {
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	} else {
		_ = p.Cmd.Process.Kill()
	}
	<-p.Done
}

// Stop sends sig and waits for the process to end, killing it after grace.
// It does nothing once the process has ended.
func (p *Proc) Stop(sig os.Signal, grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.Signal(sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.Done:
	case <-t.C:
		p.Kill()
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

// WaitListening waits until something accepts TCP connections on addr.
func WaitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listening on %s after %v: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePort returns a TCP port that was free a moment ago on 127.0.0.1, or
// fails the test.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return p[0]
}

// FreePorts returns n distinct TCP ports that were free a moment ago on
// 127.0.0.1: all listeners are held until all are chosen, so no port is
// returned twice. They are taken below Linux's ephemeral range
// (ip_local_port_range), where the kernel never hands a port to an outgoing
// connection: a port picked inside that range can be taken by another
// test's connect between the check and the bind ("address already in use").
func FreePorts(n int) ([]int, error) {
	lo, hi := portRange()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("testproc: no free port in %d-%d after %d tries", lo, hi, tries)
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
