// Package examples_test runs the demo (examples/demo.sh) as a user would:
// the whole topology, five distinct PIDs in ten requests, and Ctrl-C
// leaving no port or process behind.
package examples_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/consultest"
	"github.com/meshlb/meshlb/internal/testproc"
)

// findPorts returns a base for which every offset in offsets is a free
// port, avoiding the ports in taken.
func findPorts(t *testing.T, start int, taken map[int]bool, offsets ...int) int {
	t.Helper()
	for base := start; base < 60000; base += 7 {
		ok := true
		for _, o := range offsets {
			ok = ok && !taken[base+o] && portFree(base+o)
		}
		if ok {
			for _, o := range offsets {
				taken[base+o] = true
			}
			return base
		}
	}
	t.Fatal("no free ports")
	return 0
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func listening(p int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestDemoFivePIDsAndCleanCtrlC(t *testing.T) {
	bins, err := testproc.Build(t.TempDir(), "agent", "registrar")
	if err != nil {
		t.Fatal(err)
	}
	root, err := consultest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	binDir := strings.TrimSuffix(bins["agent"], "/agent")
	taken := map[int]bool{}
	start := 20000 + os.Getpid()%20000
	port := findPorts(t, start, taken, 0, 1, 2, 3, 4, 5)              // the agent and 5 apps
	consulPort := findPorts(t, start+100, taken, 0, 1000, 1001, 1002) // demo.sh puts serf/server at +1000..1002
	adminPort := findPorts(t, start+200, taken, 0)
	ports := make([]int, 0, len(taken))
	for p := range taken {
		ports = append(ports, p)
	}

	cmd := exec.Command("bash", root+"/examples/demo.sh")
	cmd.Env = append(os.Environ(), "BIN_DIR="+binDir, "PORT="+strconv.Itoa(port),
		"ADMIN_PORT="+strconv.Itoa(adminPort), "CONSUL_PORT="+strconv.Itoa(consulPort))
	out := &testproc.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group, as a terminal's foreground job
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("demo output:\n%s", out.String())
		}
	})
	testproc.WaitFor(t, 90*time.Second, "the demo to say it is ready", func() bool {
		select {
		case <-done:
			t.Fatalf("demo exited early:\n%s", out.String())
		default:
		}
		return strings.Contains(out.String(), "meshlb demo is ready")
	})

	re := regexp.MustCompile(`Hello from Process Id = (\d+)`)
	pids := map[string]int{}
	for range 10 {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := re.FindSubmatch(b)
		if resp.StatusCode != 200 || m == nil {
			t.Fatalf("GET through the demo: %d %q", resp.StatusCode, b)
		}
		pids[string(m[1])]++
	}
	if len(pids) != 5 {
		t.Fatalf("ten requests reached %d PIDs, want 5: %v", len(pids), pids)
	}

	// Ctrl-C: SIGINT to the whole foreground group.
	stopAt := time.Now()
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	took := testproc.WaitFor(t, 20*time.Second, "every demo port to be free", func() bool {
		for _, p := range ports {
			if listening(p) {
				return false
			}
		}
		return true
	})
	select {
	case <-done:
	case <-time.After(20*time.Second - time.Since(stopAt)):
		t.Fatal("demo still running 20s after Ctrl-C")
	}
	for pid := range pids {
		n, _ := strconv.Atoi(pid)
		if syscall.Kill(n, 0) == nil {
			t.Errorf("app process %d still running after Ctrl-C", n)
		}
	}
	t.Logf("MEASURE demo Ctrl-C to all ports free: %v", took)
}
