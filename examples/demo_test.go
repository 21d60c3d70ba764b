// Package examples_test runs the demo (examples/demo.sh) as a user would:
// the whole topology, five distinct PIDs in ten requests, and Ctrl-C
// leaving no port or process behind.
package examples_test

import (
	"encoding/json"
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

	"github.com/meshlb/meshlb/internal/testing/testproc"
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
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	binDir := strings.TrimSuffix(bins["agent"], "/agent")
	taken := map[int]bool{}
	// Below Linux's ephemeral range (32768-60999), where other tests'
	// outgoing connections would take a port between check and bind.
	start := 20000 + os.Getpid()%5000
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

// TestDemoTraceShowsServingPID runs `make demo TRACE=1`'s script on free
// ports: Jaeger beside Consul, the registrars in mesh mode, everything
// exporting spans. A request sent with a known traceparent ends up in
// Jaeger as a trace whose last span is the sidecar's, naming the PID of the
// Tornado process that answered; the closing text names the tools to look
// inside; Ctrl-C frees every port, Jaeger's included.
func TestDemoTraceShowsServingPID(t *testing.T) {
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The backend is built by `make test`'s deps (deploy/jaeger/install.sh);
	// building it here would take minutes.
	check := exec.Command("bash", root+"/deploy/jaeger/install.sh")
	check.Env = append(os.Environ(), "MESHLB_NO_BUILD=1")
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("no Jaeger for the demo (%v): %s", err, out)
	}
	bins, err := testproc.Build(t.TempDir(), "agent", "registrar")
	if err != nil {
		t.Fatal(err)
	}
	binDir := strings.TrimSuffix(bins["agent"], "/agent")
	taken := map[int]bool{}
	start := 25500 + os.Getpid()%5000 // below the ephemeral range, apart from the other demo test
	port := findPorts(t, start, taken, 0, 1, 2, 3, 4, 5)
	meshPort := findPorts(t, start+50, taken, 1, 2, 3, 4, 5)
	consulPort := findPorts(t, start+100, taken, 0, 1000, 1001, 1002)
	adminPort := findPorts(t, start+200, taken, 0)
	otlpPort := findPorts(t, start+300, taken, 0)
	jaegerPort := findPorts(t, start+400, taken, 0, -1)
	ports := make([]int, 0, len(taken))
	for p := range taken {
		ports = append(ports, p)
	}

	cmd := exec.Command("bash", root+"/examples/demo.sh")
	cmd.Env = append(os.Environ(), "BIN_DIR="+binDir, "TRACE=1", "PORT="+strconv.Itoa(port),
		"MESH_PORT="+strconv.Itoa(meshPort), "ADMIN_PORT="+strconv.Itoa(adminPort), "CONSUL_PORT="+strconv.Itoa(consulPort),
		"OTLP_PORT="+strconv.Itoa(otlpPort), "JAEGER_PORT="+strconv.Itoa(jaegerPort), "OTEL_BSP_SCHEDULE_DELAY=100")
	out := &testproc.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
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
	ready := testproc.WaitFor(t, 120*time.Second, "the demo to say it is ready", func() bool {
		select {
		case <-done:
			t.Fatalf("demo exited early:\n%s", out.String())
		default:
		}
		return strings.Contains(out.String(), "meshlb demo is ready")
	})
	t.Logf("MEASURE demo TRACE=1 ready after: %v", ready)
	for _, want := range []string{"agent status", "agent requests", fmt.Sprintf("http://127.0.0.1:%d/ ", adminPort),
		fmt.Sprintf("127.0.0.1:%d/api/traces/", jaegerPort)} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's closing text does not name %q", want)
		}
	}

	traceID := fmt.Sprintf("%016x%016x", uint64(time.Now().UnixNano()), uint64(os.Getpid())|1<<40)
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`Hello from Process Id = (\d+)`).FindSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("GET through the demo: %d %q", resp.StatusCode, body)
	}
	pid, _ := strconv.Atoi(string(m[1]))

	// Jaeger's query API: the trace, its spans and their processes.
	var last jaegerSpan
	var proc jaegerProcess
	exported := testproc.WaitFor(t, 30*time.Second, "Jaeger to hold the trace down to the serving process", func() bool {
		tr, ok := fetchTrace(t, jaegerPort, traceID)
		if !ok || len(tr.Spans) < 3 {
			return false
		}
		last = tr.Spans[0]
		for _, s := range tr.Spans {
			if s.StartTime > last.StartTime {
				last = s
			}
		}
		proc = tr.Processes[last.ProcessID]
		return proc.tag("process.pid") != ""
	})
	t.Logf("MEASURE request to its whole trace in Jaeger: %v", exported)
	if got := proc.tag("process.pid"); got != strconv.Itoa(pid) {
		t.Errorf("the trace's last span (%s, service %s) names process.pid %s; the app said %d", last.OperationName, proc.ServiceName, got, pid)
	}
	if proc.ServiceName != "hello" {
		t.Errorf("the last span's service is %q, want the Consul service hello (the sidecar's span)", proc.ServiceName)
	}

	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	stopped := testproc.WaitFor(t, 20*time.Second, "every demo port to be free, Jaeger's included", func() bool {
		for _, p := range ports {
			if listening(p) {
				return false
			}
		}
		return true
	})
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("demo still running 20s after Ctrl-C")
	}
	t.Logf("MEASURE demo TRACE=1 Ctrl-C to all ports free: %v", stopped)
}

type jaegerTrace struct {
	Spans     []jaegerSpan             `json:"spans"`
	Processes map[string]jaegerProcess `json:"processes"`
}

type jaegerSpan struct {
	OperationName string `json:"operationName"`
	StartTime     int64  `json:"startTime"`
	ProcessID     string `json:"processID"`
}

type jaegerProcess struct {
	ServiceName string `json:"serviceName"`
	Tags        []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
}

// tag is the value of the process tag key as text, "" if absent.
func (p jaegerProcess) tag(key string) string {
	for _, t := range p.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// fetchTrace reads one trace from Jaeger's query API; false while Jaeger
// does not have it (404) yet.
func fetchTrace(t *testing.T, port int, traceID string) (jaegerTrace, bool) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/traces/%s", port, traceID))
	if err != nil {
		t.Fatalf("Jaeger query API: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return jaegerTrace{}, false
	}
	var r struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 {
		t.Fatalf("Jaeger query API: %d %v", resp.StatusCode, err)
	}
	if len(r.Data) == 0 {
		return jaegerTrace{}, false
	}
	return r.Data[0], true
}
