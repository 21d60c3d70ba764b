package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/discovery"
	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// TestHubFollowsManyServices runs the agent with more services than
// discovery.HubThreshold, so that one hub follows them all, and checks that
// a service's instances are served, that one joining is served and one
// leaving is not (real Consul, registrars, Tornado).
func TestHubFollowsManyServices(t *testing.T) {
	srv := consultest.New(t)
	c := &cluster{t: t, consul: srv, env: srv.Env(), capi: srv.Client(), service: "hello", regs: map[int]*testproc.Proc{},
		client: &http.Client{Timeout: 10 * time.Second}}
	t.Cleanup(c.client.CloseIdleConnections)
	first := c.addInstance()
	c.addInstance()

	c.addr = fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	var b strings.Builder
	fmt.Fprintf(&b, "listener \"web\" {\n  address = %q\n", c.addr)
	services := discovery.HubThreshold + 4
	for i := range services {
		name := fmt.Sprintf("s%02d", i)
		if i == 0 {
			name = "hello"
		}
		fmt.Fprintf(&b, "  route {\n    host = \"%s.example\"\n    service = %q\n  }\n", name, name)
	}
	b.WriteString("}\n")
	cfg := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	c.agent = testproc.Start(t, c.env, bin(t, "agent"), "--config", cfg, "--admin", "off")
	if err := testproc.WaitListening(c.addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// served returns the PIDs that answered n GETs for hello.example.
	served := func(n int) map[int]bool {
		pids := map[int]bool{}
		for range n {
			req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr+"/", nil)
			req.Host = "hello.example"
			resp, err := c.client.Do(req)
			if err != nil {
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := pidRE.FindSubmatch(body); resp.StatusCode == 200 && m != nil {
				pid, _ := strconv.Atoi(string(m[1]))
				pids[pid] = true
			}
		}
		return pids
	}
	same := func(got, want map[int]bool) bool {
		if len(got) != len(want) {
			return false
		}
		for p := range want {
			if !got[p] {
				return false
			}
		}
		return true
	}
	var want map[int]bool
	testproc.WaitFor(t, 20*time.Second, "two passing instances of hello", func() bool {
		want = c.passingPIDs()
		return len(want) == 2
	})
	took := testproc.WaitFor(t, 20*time.Second, "the agent serving both through the hub", func() bool { return same(served(8), want) })
	t.Logf("MEASURE hub in the agent (%d services): both instances served %v after the agent listened", services, took.Round(time.Millisecond))

	c.addInstance()
	testproc.WaitFor(t, 20*time.Second, "a third passing instance", func() bool {
		want = c.passingPIDs()
		return len(want) == 3
	})
	took = testproc.WaitFor(t, 10*time.Second, "the joining instance served", func() bool { return same(served(12), want) })
	t.Logf("MEASURE hub in the agent: an instance passing in consul → served in at most %v", took.Round(time.Millisecond))

	gone := c.regs[first]
	if err := gone.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, 20*time.Second, "two passing instances again", func() bool {
		want = c.passingPIDs()
		return len(want) == 2
	})
	took = testproc.WaitFor(t, 10*time.Second, "only the two remaining served", func() bool { return same(served(12), want) })
	t.Logf("MEASURE hub in the agent: an instance deregistered → no longer served within %v", took.Round(time.Millisecond))
}
