package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
)

func TestACLMinimalTokenAndRefusedToken(t *testing.T) {
	srv, mgmt := consultest.NewACL(t)

	t.Run("service:write is enough", func(t *testing.T) {
		secret := consultest.Token(t, mgmt, "registrar-acl", `service "acl" { policy = "write" }`)
		port := testproc.FreePort(t)
		reg := start(t, append(srv.Env(), "CONSUL_HTTP_TOKEN="+secret), registrarBin,
			append([]string{"--service", "acl", "--port", strconv.Itoa(port), "--drain", "200ms", "--"}, tornadotest.App(t, port)...)...)
		testproc.WaitFor(t, 15*time.Second, "instance passing", func() bool {
			entries, _, err := mgmt.Health().Service("acl", "", true, nil)
			return err == nil && len(entries) == 1
		})
		_ = reg.Signal(syscall.SIGTERM)
		if code := reg.Wait(t, 10*time.Second); code != 0 {
			t.Fatalf("exit %d", code)
		}
		testproc.WaitFor(t, 5*time.Second, "deregistration", func() bool {
			entries, _, err := mgmt.Health().Service("acl", "", false, nil)
			return err == nil && len(entries) == 0
		})
		if strings.Contains(reg.Out.String(), secret) {
			t.Error("the registrar logged its token")
		}
	})

	t.Run("a refused token is reported as an ACL problem", func(t *testing.T) {
		secret := consultest.Token(t, mgmt, "wrong-service", `service "other" { policy = "write" }`)
		port := testproc.FreePort(t)
		reg := start(t, append(srv.Env(), "CONSUL_HTTP_TOKEN="+secret), registrarBin,
			append([]string{"--service", "denied", "--port", strconv.Itoa(port), "--"}, tornadotest.App(t, port)...)...)
		testproc.WaitFor(t, 10*time.Second, "an ACL error in the log", func() bool {
			return strings.Contains(reg.Out.String(), "consul refused the token (ACL): registering")
		})
		out := reg.Out.String()
		if !strings.Contains(out, "service:write") {
			t.Errorf("the ACL error does not say what permission is needed:\n%s", out)
		}
		if strings.Contains(out, secret) {
			t.Error("the registrar logged its token")
		}
		// The app still runs and serves.
		if err := testproc.WaitListening("127.0.0.1:"+strconv.Itoa(port), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := hello(t, port); !strings.HasPrefix(got, "Hello from Process Id") {
			t.Errorf("app not serving: %q", got)
		}
	})
}
