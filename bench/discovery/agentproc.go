package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// agentProc is a running bin/agent whose log is watched for "pool updated"
// lines: the moment the agent swapped a service's pool in, seen from outside.
type agentProc struct {
	proc  *testproc.Proc
	admin string

	mu       sync.Mutex
	pools    map[string]poolEvent // last "pool updated" per service
	waiters  []*poolWaiter
	warnings int      // log lines at WARN or ERROR
	lastWarn []string // a few of them, to show in the report
	tail     []string // last log lines, for errors
	updates  int      // "pool updated" lines so far
}

// poolEvent is one "pool updated" log line.
type poolEvent struct {
	instances int
	at        time.Time
}

type poolWaiter struct {
	service   string
	instances int
	after     time.Time
	ch        chan time.Time
}

var (
	rePoolUpdated = regexp.MustCompile(`pool updated.*\bservice=("?)([^"\s]+)("?).*\binstances=(\d+)`)
	reWarn        = regexp.MustCompile(`\[(WARN|ERROR)\]`)
)

// startAgent runs the agent binary with args (plus --log-level info, which
// the "pool updated" lines need) and waits until its admin /healthz
// answers at all (503 while pools are still empty is fine).
func startAgent(ctx context.Context, bin, admin string, env []string, args ...string) (*agentProc, error) {
	a := &agentProc{admin: admin, pools: map[string]poolEvent{}}
	args = append(args, "--admin", admin, "--log-level", "info")
	a.proc = testproc.Prepare(env, bin, args...)
	a.proc.Cmd.SysProcAttr.Setpgid = true
	a.proc.Cmd.Stdout, a.proc.Cmd.Stderr = io.Discard, nil
	stderr, err := a.proc.Cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := a.proc.Launch(); err != nil {
		return nil, err
	}
	go a.readLog(stderr)

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			return a, nil
		}
		select {
		case <-a.proc.Done:
			return nil, fmt.Errorf("agent exited at start:\n%s", a.logTail())
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("agent admin %s not answering after 30s:\n%s", admin, a.logTail())
		}
	}
}

func (a *agentProc) readLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		now := time.Now()
		line := sc.Text()
		a.mu.Lock()
		a.tail = append(a.tail, line)
		if len(a.tail) > 20 {
			a.tail = a.tail[1:]
		}
		if reWarn.MatchString(line) {
			a.warnings++
			if len(a.lastWarn) < 3 {
				a.lastWarn = append(a.lastWarn, line)
			}
		}
		if m := rePoolUpdated.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[4])
			a.pools[m[2]] = poolEvent{instances: n, at: now}
			a.updates++
			kept := a.waiters[:0]
			for _, w := range a.waiters {
				if w.service == m[2] && w.instances == n && !now.Before(w.after) {
					w.ch <- now
					continue
				}
				kept = append(kept, w)
			}
			a.waiters = kept
		}
		a.mu.Unlock()
	}
}

// waitPool waits for a "pool updated" line for service with n instances
// logged after the time after, and returns when it was read.
func (a *agentProc) waitPool(ctx context.Context, service string, n int, after time.Time, timeout time.Duration) (time.Time, error) {
	w := &poolWaiter{service: service, instances: n, after: after, ch: make(chan time.Time, 1)}
	a.mu.Lock()
	if ev, ok := a.pools[service]; ok && ev.instances == n && !ev.at.Before(after) {
		a.mu.Unlock()
		return ev.at, nil
	}
	a.waiters = append(a.waiters, w)
	a.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case at := <-w.ch:
		return at, nil
	case <-t.C:
	case <-ctx.Done():
	case <-a.proc.Done:
		return time.Time{}, fmt.Errorf("agent exited:\n%s", a.logTail())
	}
	a.mu.Lock()
	for i, x := range a.waiters {
		if x == w {
			a.waiters = append(a.waiters[:i], a.waiters[i+1:]...)
			break
		}
	}
	ev := a.pools[service]
	a.mu.Unlock()
	if ctx.Err() != nil {
		return time.Time{}, ctx.Err()
	}
	return time.Time{}, fmt.Errorf("no \"pool updated\" with %d instances of %s within %v (last: %d instances at %s)",
		n, service, timeout, ev.instances, ev.at.Format(time.StampMilli))
}

// poolEvents returns the last "pool updated" line per service.
func (a *agentProc) poolEvents() map[string]poolEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[string]poolEvent, len(a.pools))
	for s, ev := range a.pools {
		m[s] = ev
	}
	return m
}

// warnCount returns how many WARN/ERROR lines the agent logged, and a few.
func (a *agentProc) warnCount() (int, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.warnings, append([]string(nil), a.lastWarn...)
}

func (a *agentProc) logTail() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.tail, "\n")
}

func (a *agentProc) pid() int { return a.proc.Cmd.Process.Pid }

// stop sends SIGTERM and waits (SIGKILL after 10 s). Safe to call twice.
func (a *agentProc) stop() { a.proc.Stop(syscall.SIGTERM, 10*time.Second) }

// memKiB returns VmRSS and VmHWM (peak RSS) of pid in KiB.
func memKiB(pid int) (rss, hwm int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.Atoi(f[1])
		case "VmHWM:":
			hwm, _ = strconv.Atoi(f[1])
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

// consulConns counts the ESTABLISHED TCP connections process pid holds to
// port (Consul's HTTP port), from its /proc/PID/fd socket inodes and
// /proc/net/tcp{,6} (what `ss -tnp` reads).
func consulConns(pid, port int) (int, error) {
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	if err != nil {
		return 0, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fd)
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	wantPort := fmt.Sprintf(":%04X", port)
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "01" || !strings.HasSuffix(f[2], wantPort) {
				continue
			}
			if inodes[f[9]] {
				n++
			}
		}
	}
	return n, nil
}
