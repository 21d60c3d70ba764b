package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/sockpid"
	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

var registrarBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "registrar-test")
	if err != nil {
		panic(err)
	}
	bins, err := testproc.Build(dir, "registrar")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	registrarBin = bins["registrar"]
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func start(t *testing.T, env []string, name string, args ...string) *testproc.Proc {
	t.Helper()
	return testproc.Start(t, env, name, args...)
}

// instance is what Consul's health endpoint says of one service instance.
type instance struct {
	entry  *api.ServiceEntry
	status string
}

// lookup returns the service's instances; a failed query fails the test.
func lookup(t *testing.T, c *api.Client, service string) []instance {
	t.Helper()
	in, err := query(c, service)
	if err != nil {
		t.Fatalf("consul health of service %q: %v", service, err)
	}
	return in
}

// query asks Consul for the service's instances and their aggregated status.
func query(c *api.Client, service string) ([]instance, error) {
	entries, _, err := c.Health().Service(service, "", false, nil)
	if err != nil {
		return nil, err
	}
	out := make([]instance, 0, len(entries))
	for _, e := range entries {
		out = append(out, instance{entry: e, status: e.Checks.AggregatedStatus()})
	}
	return out, nil
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return testproc.WaitFor(t, timeout, what, cond)
}

// passing is a condition for waitFor: Consul answers and lists the one
// instance of service as passing. A failed query is no answer: the wait
// goes on, and a timeout names the last error.
func passing(t *testing.T, c *api.Client, service string) func() bool {
	return status(t, c, service, true)
}

// notPassing is passing's opposite: Consul answers, and the instance is
// listed and not passing, or gone. A failed query does not count as "not
// passing": that would hold with Consul down, whatever the registrar did.
func notPassing(t *testing.T, c *api.Client, service string) func() bool {
	return status(t, c, service, false)
}

func status(t *testing.T, c *api.Client, service string, want bool) func() bool {
	return func() bool {
		in, err := query(c, service)
		if err != nil {
			t.Logf("consul health of service %q: %v", service, err)
			return false
		}
		ok := len(in) == 1 && in[0].status == api.HealthPassing
		return ok == want
	}
}

func hello(t *testing.T, port int) string {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
	if err != nil {
		t.Fatalf("GET app on %d: %v", port, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestWrapRegistersWithPortAndPID(t *testing.T) {
	srv := consultest.New(t)
	c := srv.Client()
	port := testproc.FreePort(t)
	reg := start(t, srv.Env(), registrarBin, append([]string{"--service", "hello", "--port", strconv.Itoa(port),
		"--tag", "v1", "--meta", "version=1.2", "--drain", "500ms", "--"}, tornadotest.App(t, port)...)...)
	waitFor(t, 15*time.Second, "instance passing", passing(t, c, "hello"))

	e := lookup(t, c, "hello")[0].entry
	if e.Service.Port != port {
		t.Errorf("registered port %d, want %d", e.Service.Port, port)
	}
	if e.Service.Address != "" {
		t.Errorf("registered address %q, want empty (Consul's node address)", e.Service.Address)
	}
	host, _ := os.Hostname()
	if want := fmt.Sprintf("hello-%s-%d", host, port); e.Service.ID != want {
		t.Errorf("ID %q, want %q", e.Service.ID, want)
	}
	if e.Service.Meta["host"] != host || e.Service.Meta["version"] != "1.2" {
		t.Errorf("meta %v, want host=%s version=1.2", e.Service.Meta, host)
	}
	if len(e.Service.Tags) != 1 || e.Service.Tags[0] != "v1" {
		t.Errorf("tags %v, want [v1]", e.Service.Tags)
	}
	pid, _ := strconv.Atoi(e.Service.Meta["pid"])
	if owner, err := sockpid.PIDOfPort(port); err != nil || owner != pid {
		t.Errorf("meta pid %d, but port %d is owned by %d (%v)", pid, port, owner, err)
	}
	if got, want := hello(t, port), fmt.Sprintf("Hello from Process Id = %d", pid); got != want {
		t.Errorf("app says %q, want %q", got, want)
	}

	// SIGTERM: deregistered within the drain period plus 2 s, app stopped, exit 0.
	_ = reg.Cmd.Process.Signal(syscall.SIGTERM)
	took := waitFor(t, 500*time.Millisecond+2*time.Second, "deregistration", func() bool { return len(lookup(t, c, "hello")) == 0 })
	t.Logf("MEASURE wrap SIGTERM to deregistered: %v (drain 500ms)", took)
	if code := reg.Wait(t, 5*time.Second); code != 0 {
		t.Errorf("registrar exit status %d after SIGTERM, want 0", code)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("app %d still running after the registrar stopped", pid)
	}
}

func TestAttachFindsPIDAndLeavesAppRunning(t *testing.T) {
	srv := consultest.New(t)
	c := srv.Client()
	port := testproc.FreePort(t)
	app := tornadotest.Start(t, port)
	reg := start(t, srv.Env(), registrarBin, "--service", "attached", "--port", strconv.Itoa(port), "--check", "tcp", "--drain", "1s")
	waitFor(t, 15*time.Second, "instance passing", passing(t, c, "attached"))
	e := lookup(t, c, "attached")[0].entry
	if e.Service.Meta["pid"] != strconv.Itoa(app.Cmd.Process.Pid) {
		t.Errorf("meta pid %q, want the app's %d", e.Service.Meta["pid"], app.Cmd.Process.Pid)
	}

	_ = reg.Cmd.Process.Signal(syscall.SIGTERM)
	took := waitFor(t, 1*time.Second+2*time.Second, "deregistration", func() bool { return len(lookup(t, c, "attached")) == 0 })
	t.Logf("MEASURE attach SIGTERM to deregistered: %v (drain 1s)", took)
	if code := reg.Wait(t, 5*time.Second); code != 0 {
		t.Errorf("registrar exit status %d, want 0", code)
	}
	select {
	case <-app.Done:
		t.Fatal("the attached app was stopped: a registrar must never signal an app it did not start")
	default:
	}
	if got := hello(t, port); !strings.HasPrefix(got, "Hello from Process Id = ") {
		t.Errorf("attached app no longer serving: %q", got)
	}
}

func TestAppKilledStopsPassing(t *testing.T) {
	t.Run("wrap", func(t *testing.T) {
		srv := consultest.New(t)
		c := srv.Client()
		port := testproc.FreePort(t)
		reg := start(t, srv.Env(), registrarBin, append([]string{"--service", "w", "--port", strconv.Itoa(port), "--"}, tornadotest.App(t, port)...)...)
		waitFor(t, 15*time.Second, "instance passing", passing(t, c, "w"))
		pid, _ := strconv.Atoi(lookup(t, c, "w")[0].entry.Service.Meta["pid"])
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, 5*time.Second, "instance not passing", notPassing(t, c, "w"))
		t.Logf("MEASURE wrap SIGKILL of app to not passing: %v", took)
		if code := reg.Wait(t, 10*time.Second); code != 128+int(syscall.SIGKILL) {
			t.Errorf("registrar exit status %d, want the app's %d", code, 128+int(syscall.SIGKILL))
		}
		if n := len(lookup(t, c, "w")); n != 0 {
			t.Errorf("%d instances left registered after the app died", n)
		}
	})
	t.Run("attach", func(t *testing.T) {
		srv := consultest.New(t)
		c := srv.Client()
		port := testproc.FreePort(t)
		app := tornadotest.Start(t, port)
		start(t, srv.Env(), registrarBin, "--service", "a", "--port", strconv.Itoa(port))
		waitFor(t, 15*time.Second, "instance passing", passing(t, c, "a"))
		_ = app.Cmd.Process.Kill()
		took := waitFor(t, 5*time.Second, "instance not passing", notPassing(t, c, "a"))
		t.Logf("MEASURE attach SIGKILL of app to not passing: %v", took)
	})
}

func TestRegistrarKilledGoesCriticalWithinTTL(t *testing.T) {
	srv := consultest.New(t)
	c := srv.Client()
	port := testproc.FreePort(t)
	tornadotest.Start(t, port)
	reg := start(t, srv.Env(), registrarBin, "--service", "k", "--port", strconv.Itoa(port), "--ttl", "2s")
	waitFor(t, 15*time.Second, "instance passing", passing(t, c, "k"))
	_ = reg.Cmd.Process.Kill()
	took := waitFor(t, 2*time.Second+2*time.Second, "instance critical after TTL", notPassing(t, c, "k"))
	t.Logf("MEASURE registrar SIGKILL to not passing (TTL 2s): %v", took)
}

func TestConsulRestartReRegisters(t *testing.T) {
	srv := consultest.New(t)
	port := testproc.FreePort(t)
	start(t, srv.Env(), registrarBin, append([]string{"--service", "r", "--port", strconv.Itoa(port), "--"}, tornadotest.App(t, port)...)...)
	waitFor(t, 15*time.Second, "instance passing", passing(t, srv.Client(), "r"))
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 10*time.Second, "instance back after Consul restarted empty", passing(t, srv.Client(), "r"))
	t.Logf("MEASURE consul dev agent restarted empty to instance passing again: %v", took)
}

func TestConsulDownAtStart(t *testing.T) {
	srv := consultest.New(t)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	port := testproc.FreePort(t)
	start(t, srv.Env(), registrarBin, append([]string{"--service", "late", "--port", strconv.Itoa(port), "--"}, tornadotest.App(t, port)...)...)
	// The app starts and serves without Consul.
	if err := testproc.WaitListening(fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := hello(t, port); !strings.HasPrefix(got, "Hello from Process Id") {
		t.Fatalf("app not serving while Consul is down: %q", got)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 10*time.Second, "registration once Consul is up", passing(t, srv.Client(), "late"))
	t.Logf("MEASURE consul up to registered: %v", took)
}

func TestBadInputIsRefused(t *testing.T) {
	srv := consultest.New(t)
	t.Setenv("CONSUL_HTTP_ADDR", srv.HTTPAddr)
	long := strings.Repeat("k", 129)
	many := []string{}
	for i := range 64 {
		many = append(many, "--meta", fmt.Sprintf("k%d=v", i))
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no service", []string{"--port", "8080"}, "service name is empty"},
		{"bad service", []string{"--service", "bad name!", "--port", "8080"}, `invalid service name "bad name!"`},
		{"port zero", []string{"--service", "s", "--port", "0"}, "invalid --port 0: must be 1-65535"},
		{"port too big", []string{"--service", "s", "--port", "65536"}, "invalid --port 65536"},
		{"meta key chars", []string{"--service", "s", "--port", "80", "--meta", "a.b=1"}, `invalid meta key "a.b"`},
		{"meta key long", []string{"--service", "s", "--port", "80", "--meta", long + "=1"}, "Consul allows at most 128"},
		{"meta value long", []string{"--service", "s", "--port", "80", "--meta", "k=" + strings.Repeat("v", 513)}, "at most 512"},
		{"meta too many", append([]string{"--service", "s", "--port", "80"}, many...), "at most 64"},
		{"meta reserved", []string{"--service", "s", "--port", "80", "--meta", "pid=1"}, `"pid" is set by the registrar`},
		{"meta not kv", []string{"--service", "s", "--port", "80", "--meta", "novalue"}, `"novalue" is not KEY=VALUE`},
		{"check type", []string{"--service", "s", "--port", "80", "--check", "icmp"}, `unknown --check "icmp": valid check types are http, tcp`},
		{"dashdash no command", []string{"--service", "s", "--port", "80", "--"}, "-- given without a command"},
		{"log level", []string{"--service", "s", "--port", "80", "--log-level", "loud"}, `invalid --log-level "loud"`},
		{"mesh same port", []string{"--service", "s", "--port", "80", "--mesh-port", "80"}, "must differ from --port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			code := run(tc.args, &buf)
			if code != exitBadInput {
				t.Errorf("exit %d, want %d; output:\n%s", code, exitBadInput, buf.String())
			}
			if !strings.Contains(buf.String(), tc.want) {
				t.Errorf("error %q does not say %q", buf.String(), tc.want)
			}
		})
	}
	services, _, err := srv.Client().Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	delete(services, "consul")
	if len(services) != 0 {
		t.Errorf("bad input registered services: %v", services)
	}
}
