package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// TestAgentWithACLs runs registrars and the agent against a Consul with
// ACLs on (default deny), each with the minimal policy README documents; a
// token Consul refuses is reported as an ACL problem, and no token is
// ever logged.
func TestAgentWithACLs(t *testing.T) {
	srv, mgmt := consultest.NewACL(t)
	regToken := consultest.Token(t, mgmt, "registrar", `service "secure" { policy = "write" }`)
	agentToken := consultest.Token(t, mgmt, "agent", `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`)
	c := &cluster{t: t, consul: srv, env: append(srv.Env(), "CONSUL_HTTP_TOKEN="+regToken), capi: mgmt, service: "secure",
		regs: map[int]*testproc.Proc{}, client: &http.Client{Timeout: 10 * time.Second}}
	for range 2 {
		c.addInstance()
	}
	c.env = append(srv.Env(), "CONSUL_HTTP_TOKEN="+agentToken)
	c.startAgent()
	c.waitPool(2)
	for _, p := range append([]*testproc.Proc{c.agent}, regsOf(c)...) {
		out := p.Out.String()
		if strings.Contains(out, regToken) || strings.Contains(out, agentToken) {
			t.Errorf("a token was logged:\n%s", out)
		}
	}

	// An agent whose token may not read the service says so.
	wrong := consultest.Token(t, mgmt, "wrong", `service "other" { policy = "read" }`)
	port := testproc.FreePort(t)
	bad := testproc.Start(t, append(srv.Env(), "CONSUL_HTTP_TOKEN="+wrong), bin(t, "agent"),
		"--listen", "127.0.0.1:"+strconv.Itoa(port), "--service", "secure", "--admin", "off")
	testproc.WaitFor(t, 10*time.Second, "an ACL error from the agent", func() bool {
		return strings.Contains(bad.Out.String(), "consul refused the token (ACL): reading health of service")
	})
	if strings.Contains(bad.Out.String(), wrong) {
		t.Error("the agent logged its token")
	}
}

func regsOf(c *cluster) []*testproc.Proc {
	out := make([]*testproc.Proc, 0, len(c.regs))
	for _, p := range c.regs {
		out = append(out, p)
	}
	return out
}
