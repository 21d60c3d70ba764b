package main

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/consultest"
	"github.com/meshlb/meshlb/internal/testproc"
)

const aclMgmt = "d9f1a8c6-3b2e-4f5a-9c7d-1e2f3a4b5c6d"

// aclConsul starts a dev agent with ACLs on and default deny. Like a real
// client agent it has an agent token of its own (here the management
// token), which it uses for its own catalog syncs.
func aclConsul(t *testing.T) (*consultest.Server, *api.Client) {
	t.Helper()
	srv := consultest.New(t, consultest.Options{ExtraHCL: `acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "` + aclMgmt + `"
    agent = "` + aclMgmt + `"
  }
}`})
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = srv.HTTPAddr, aclMgmt
	mgmt, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, mgmt
}

// token creates a token with the given policy rules.
func token(t *testing.T, mgmt *api.Client, name, rules string) string {
	t.Helper()
	pol, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := mgmt.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.SecretID
}

func TestACLMinimalTokenAndRefusedToken(t *testing.T) {
	srv, mgmt := aclConsul(t)

	t.Run("service:write is enough", func(t *testing.T) {
		secret := token(t, mgmt, "registrar-acl", `service "acl" { policy = "write" }`)
		port := freePort(t)
		reg := start(t, append(srv.Env(), "CONSUL_HTTP_TOKEN="+secret), registrarBin,
			append([]string{"--service", "acl", "--port", strconv.Itoa(port), "--drain", "200ms", "--"}, appArgs(t, port)...)...)
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
		secret := token(t, mgmt, "wrong-service", `service "other" { policy = "write" }`)
		port := freePort(t)
		reg := start(t, append(srv.Env(), "CONSUL_HTTP_TOKEN="+secret), registrarBin,
			append([]string{"--service", "denied", "--port", strconv.Itoa(port), "--"}, appArgs(t, port)...)...)
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
		if err := consultest.WaitListening("127.0.0.1:"+strconv.Itoa(port), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := hello(t, port); !strings.HasPrefix(got, "Hello from Process Id") {
			t.Errorf("app not serving: %q", got)
		}
	})
}
