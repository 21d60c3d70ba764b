package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// TestInstanceLeavingResendsOnlyWhenFailed holds requests on an instance
// (the app's /hold answers only when the test releases it) while the
// instance leaves the pool:
//   - drained by its registrar (SIGTERM: check critical, output
//     "draining: …"): the GET it holds is not touched and is answered by it;
//   - its check failed (the app stopped with SIGSTOP, the registrar's probe
//     times out): the GET it holds is re-sent at once to another instance
//     and the POST fails with 502, never re-sent.
//
// Per-try timeouts are off, so nothing but Consul's answer can move the
// GET before response_header_timeout (60s).
func TestInstanceLeavingResendsOnlyWhenFailed(t *testing.T) {
	c := newCluster(t, "leave", 0, "--try-timeout", "off")
	c.client.Timeout = 30 * time.Second
	// B is probed often, with the default timeout (1s): a shorter one could
	// fail on a loaded machine before the test stops the app.
	fast := []string{"--check-interval", "200ms"}
	a := c.addInstance("--drain", "60s")
	c.waitPool(1)
	pidA := appPID(t, a)

	// Drained: A holds a GET, leaves the pool, then answers it.
	get1 := c.hold(t, http.MethodGet, "d1")
	waitHits(t, a, "d1", 1)
	b := c.addInstance(fast...)
	c.waitPool(2)
	if err := c.regs[a].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, 10*time.Second, "the drained instance to leave the agent's pool", func() bool {
		n, err := c.metric(fmt.Sprintf("meshlb_pool_instances{service=%q}", c.service))
		return err == nil && n == 1
	})
	release(t, a, "d1")
	if r := <-get1; r.code != http.StatusOK || r.pid != pidA {
		t.Errorf("GET held on the drained instance (pid %d): got %d %q %v, want 200 from it", pidA, r.code, r.body, r.err)
	}
	_ = c.regs[a].Signal(syscall.SIGTERM) // a second signal ends the drain

	// Failed check: B holds a GET and a POST, its app stops answering.
	get2 := c.hold(t, http.MethodGet, "f1")
	post2 := c.hold(t, http.MethodPost, "p1")
	waitHits(t, b, "f1", 1)
	waitHits(t, b, "p1", 1)
	cport := c.addInstance()
	c.waitPool(2)
	release(t, cport, "f1") // the re-sent GET is answered at once
	victim, pidC := appPID(t, b), appPID(t, cport)
	if err := syscall.Kill(victim, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(victim, syscall.SIGCONT) })
	stopped := time.Now()
	r := <-get2
	took := time.Since(stopped)
	t.Logf("MEASURE failed check: the GET held on the stopped instance was answered %v after SIGSTOP (probe every 200ms, timeout 1s)", took.Round(time.Millisecond))
	if r.code != http.StatusOK || r.pid != pidC {
		t.Errorf("GET held on the instance whose check failed: got %d %q %v, want 200 from the other instance (pid %d)", r.code, r.body, r.err, pidC)
	}
	if took > 10*time.Second {
		t.Errorf("the GET was re-sent %v after the app stopped: not at once (response_header_timeout is 60s)", took)
	}
	if p := <-post2; p.code != http.StatusBadGateway || !strings.Contains(p.body, "left the pool") {
		t.Errorf("POST held on the instance whose check failed: got %d %q %v, want 502 naming the instance leaving", p.code, p.body, p.err)
	}
	if n := hits(t, cport, "p1"); n != 0 {
		t.Errorf("the POST was re-sent to the other instance (%d times)", n)
	}
}

type heldResult struct {
	code, pid int
	body      string
	err       error
}

var heldPID = regexp.MustCompile(`^pid=(\d+) held `)

// hold sends method /hold?key=key through the agent in the background.
func (c *cluster) hold(t *testing.T, method, key string) <-chan heldResult {
	out := make(chan heldResult, 1)
	go func() {
		var r heldResult
		defer func() { out <- r }()
		req, err := http.NewRequest(method, "http://"+c.addr+"/hold?key="+key, strings.NewReader(key))
		if err != nil {
			r.err = err
			return
		}
		resp, err := c.client.Do(req)
		if err != nil {
			r.err = err
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		r.code, r.body, r.err = resp.StatusCode, string(b), err
		if m := heldPID.FindStringSubmatch(r.body); m != nil {
			r.pid, _ = strconv.Atoi(m[1])
		}
	}()
	return out
}

// hits reads the app's count of requests with key, straight from its port.
func hits(t *testing.T, port int, key string) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/hits?key=%s", port, key))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct{ Hits int }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v.Hits
}

func waitHits(t *testing.T, port int, key string, n int) {
	t.Helper()
	testproc.WaitFor(t, 10*time.Second, fmt.Sprintf("%d requests with key %s on the app on %d", n, key, port),
		func() bool { return hits(t, port, key) == n })
}

func release(t *testing.T, port int, key string) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/release?key=%s", port, key))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// appPID asks the app on port for its PID.
func appPID(t *testing.T, port int) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := pidRE.FindSubmatch(b)
	if m == nil {
		t.Fatalf("app on %d answered %q", port, b)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	return pid
}
