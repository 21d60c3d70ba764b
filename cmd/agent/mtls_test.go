package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testpki"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
	"github.com/meshlb/meshlb/internal/wire"
)

// directClient calls a mesh port itself: trusting ca, presenting cert (a
// PEM pair; none when certFile is "") whatever CAs the server names.
func directClient(t *testing.T, ca *testpki.CA, certFile, keyFile string) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: ca.ClientConfig(t, certFile, keyFile)}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// send does one request and returns the status and body; status 0 and
// the error when no HTTP answer came.
func send(ctx context.Context, c *http.Client, method, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, string(b), err
}

// TestMTLSAgentToMeshSidecar runs Consul, a registrar whose mesh port
// serves TLS and requires client certificates from one CA, the Tornado app
// behind it, and agents with and without the right TLS settings.
func TestMTLSAgentToMeshSidecar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "mesh-ca")
	sidecarCert, sidecarKey := ca.Issue(t, dir, "sidecar", "sidecar", true)
	agentCert, agentKey := ca.Issue(t, dir, "agent", "agent", false)
	other := testpki.NewCA(t, dir, "other-ca")
	strangerCert, strangerKey := other.Issue(t, dir, "stranger", "stranger", false)

	srv := consultest.New(t)
	c := &cluster{t: t, consul: srv, env: srv.Env(), capi: srv.Client(), service: "secure", regs: map[int]*testproc.Proc{},
		client: &http.Client{Timeout: 10 * time.Second}}
	appPort, meshPort := testproc.FreePort(t), testproc.FreePort(t)
	args := append([]string{"--service", "secure", "--port", strconv.Itoa(appPort), "--mesh-port", strconv.Itoa(meshPort),
		"--mesh-tls-cert", sidecarCert, "--mesh-tls-key", sidecarKey, "--mesh-tls-client-ca", ca.File,
		"--drain", "200ms", "--log-level", "warn", "--"}, append(tornadotest.App(t, appPort), "--logging=warning")...)
	c.regs[appPort] = testproc.Start(t, c.env, bin(t, "registrar"), args...)
	testproc.WaitFor(t, 20*time.Second, "the instance passing in Consul", func() bool { return len(c.passingPIDs()) == 1 })
	entries, _, err := c.capi.Health().Service("secure", "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("instances %v, %v", entries, err)
	}
	svc := entries[0].Service
	if !slices.Contains(svc.Tags, wire.TagHTTPS) || svc.Port != meshPort {
		t.Fatalf("registered tags %v port %d; want the %q tag and the mesh port %d", svc.Tags, svc.Port, wire.TagHTTPS, meshPort)
	}
	hello := "Hello from Process Id = " + svc.Meta["pid"]
	meshURL := "https://127.0.0.1:" + strconv.Itoa(meshPort)

	// agent starts an agent with extra flags and waits until its pool
	// holds the instance.
	agent := func(t *testing.T, extra ...string) *cluster {
		a := *c
		a.t = t
		a.startAgent(extra...)
		testproc.WaitFor(t, 10*time.Second, "the agent's pool", func() bool {
			code, _, _ := send(ctx, a.client, http.MethodGet, "http://"+a.admin+"/healthz", "")
			return code == http.StatusOK
		})
		return &a
	}

	// (a) The agent with the CA and a client certificate reaches the app.
	good := agent(t, "--upstream-tls-ca", ca.File, "--upstream-tls-cert", agentCert, "--upstream-tls-key", agentKey)
	for _, r := range []struct{ method, path, body, want string }{
		{http.MethodGet, "/", "", hello},
		{http.MethodPost, "/echo", "through-mtls", "body=through-mtls"},
	} {
		code, body, err := send(ctx, good.client, r.method, "http://"+good.addr+r.path, r.body)
		if err != nil || code != http.StatusOK || !strings.Contains(body, r.want) {
			t.Errorf("%s %s through the agent with a client certificate: %d %q %v; want 200 with %q", r.method, r.path, code, body, err, r.want)
		}
	}
	named := agent(t, "--upstream-tls-ca", ca.File, "--upstream-tls-cert", agentCert, "--upstream-tls-key", agentKey,
		"--upstream-tls-server-name", "sidecar.mesh")
	if code, body, err := send(ctx, named.client, http.MethodGet, "http://"+named.addr+"/", ""); err != nil || code != http.StatusOK || body != hello {
		t.Errorf("GET with --upstream-tls-server-name sidecar.mesh: %d %q %v; want 200 %q", code, body, err, hello)
	}

	// (b) Straight to the mesh port: only a client certificate from the CA
	// gets an answer from the app.
	direct := []struct {
		name, url, body string
		client          *http.Client
	}{
		{"plain HTTP", "http://127.0.0.1:" + strconv.Itoa(meshPort) + "/echo", "direct-plain", &http.Client{Timeout: 5 * time.Second}},
		{"TLS without a client certificate", meshURL + "/echo", "direct-nocert", directClient(t, ca, "", "")},
		{"TLS with a certificate from another CA", meshURL + "/echo", "direct-stranger", directClient(t, ca, strangerCert, strangerKey)},
	}
	for _, d := range direct {
		t.Run("direct "+d.name, func(t *testing.T) {
			code, body, err := send(ctx, d.client, http.MethodPost, d.url, d.body)
			switch {
			case err != nil: // refused in the handshake
			case code == http.StatusBadRequest && strings.Contains(body, "HTTP request to an HTTPS server"):
				// Go's TLS server answers plain HTTP with this, then closes.
			default:
				t.Errorf("got %d %q; want the connection refused", code, body)
			}
		})
	}
	if code, body, err := send(ctx, directClient(t, ca, agentCert, agentKey), http.MethodPost, meshURL+"/echo", "direct-agent"); err != nil || code != 200 || !strings.Contains(body, "body=direct-agent") {
		t.Errorf("the agent's certificate straight to the mesh port: %d %q %v; want the app's answer", code, body, err)
	}

	// (c) Agents without a client certificate, or without the CA, get 502.
	for _, tc := range []struct {
		name, body, logs string
		flags            []string
	}{
		{"no client certificate", "agent-nocert", "", []string{"--upstream-tls-ca", ca.File}},
		{"system roots only", "agent-noca", "certificate signed by unknown authority",
			[]string{"--upstream-tls-cert", agentCert, "--upstream-tls-key", agentKey}},
		{"server name the certificate lacks", "agent-badname", "not other.mesh",
			[]string{"--upstream-tls-ca", ca.File, "--upstream-tls-cert", agentCert, "--upstream-tls-key", agentKey, "--upstream-tls-server-name", "other.mesh"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := agent(t, append(tc.flags, "--log-level", "debug")...)
			for _, r := range []struct{ method, path string }{{http.MethodGet, "/"}, {http.MethodPost, "/echo"}} {
				code, body, err := send(ctx, a.client, r.method, "http://"+a.addr+r.path, tc.body)
				if err != nil || code != http.StatusBadGateway {
					t.Errorf("%s %s: %d %q %v; want 502", r.method, r.path, code, body, err)
				}
			}
			if tc.logs != "" && !strings.Contains(a.agent.Out.String(), tc.logs) {
				t.Errorf("the agent's log does not say %q:\n%s", tc.logs, a.agent.Out.String())
			}
		})
	}

	// The app saw exactly the bodies that came with the right certificate.
	_, count, err := send(ctx, &http.Client{Timeout: 5 * time.Second}, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/count", appPort), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"through-mtls", "direct-agent"} {
		if !strings.Contains(count, `"`+b+`": 1`) {
			t.Errorf("the app's count %s does not show %q once", count, b)
		}
	}
	for _, b := range []string{"direct-plain", "direct-nocert", "direct-stranger", "agent-nocert", "agent-noca", "agent-badname"} {
		if strings.Contains(count, b) {
			t.Errorf("the app saw %q, which had no valid client certificate: %s", b, count)
		}
	}
}

func TestUpstreamTLSFlagsAndConfigRefused(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "agent", "agent", false)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := write("garbage.pem", "not PEM\n")
	missing := filepath.Join(dir, "missing.pem")
	listener := "listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"s\" }\n}\n"
	certOnly := write("certonly.hcl", listener+"upstream_tls {\n  cert_file = \""+cert+"\"\n}\n")
	emptyCA := write("emptyca.hcl", listener+"upstream_tls {\n  ca_file = \"\"\n}\n")
	badName := write("badname.hcl", listener+"upstream_tls {\n  server_name = \"mesh.internal:443\"\n}\n")
	unknown := write("unknown.hcl", listener+"upstream_tls {\n  insecure = true\n}\n")
	missingCA := write("missingca.hcl", listener+"upstream_tls {\n  ca_file = \""+missing+"\"\n}\n")
	cli := []string{"--listen", "127.0.0.1:0", "--service", "s", "--admin", "off"}
	with := func(extra ...string) []string { return append(slices.Clone(cli), extra...) }
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"cert without key", with("--upstream-tls-cert", cert), []string{`--upstream-tls-cert "` + cert + `" given without --upstream-tls-key`}},
		{"key without cert", with("--upstream-tls-key", key), []string{`--upstream-tls-key "` + key + `" given without --upstream-tls-cert`}},
		{"file: cert without key", []string{"--config", certOnly}, []string{`upstream_tls cert_file in ` + certOnly + ` "` + cert + `" given without`}},
		{"file: empty ca_file", []string{"--config", emptyCA}, []string{"emptyca.hcl", "upstream_tls ca_file is empty"}},
		{"file: unknown field", []string{"--config", unknown}, []string{"unknown.hcl", "insecure"}},
		{"missing CA", with("--upstream-tls-ca", missing), []string{`invalid --upstream-tls-ca "` + missing + `"`, "no such file"}},
		{"file: missing CA", []string{"--config", missingCA}, []string{`invalid upstream_tls ca_file in ` + missingCA + ` "` + missing + `"`}},
		{"CA not PEM", with("--upstream-tls-ca", garbage), []string{`invalid --upstream-tls-ca "` + garbage + `": no PEM certificate`}},
		{"cert not PEM", with("--upstream-tls-cert", garbage, "--upstream-tls-key", key), []string{"invalid upstream TLS client certificate (--upstream-tls-cert, --upstream-tls-key)", garbage}},
		{"key not matching", with("--upstream-tls-cert", cert, "--upstream-tls-key", garbage), []string{"invalid upstream TLS client certificate", garbage}},
		{"server name with port", with("--upstream-tls-server-name", "mesh.internal:443"), []string{`invalid --upstream-tls-server-name "mesh.internal:443": want a DNS name or an IP address, without port`}},
		{"server name with space", with("--upstream-tls-server-name", "a b"), []string{`invalid --upstream-tls-server-name "a b"`}},
		{"file: server name with port", []string{"--config", badName}, []string{`invalid upstream_tls server_name in ` + badName + ` "mesh.internal:443"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			if code := run(tc.args, io.Discard, &out); code != exitBadInput {
				t.Fatalf("exit %d, want %d; output:\n%s", code, exitBadInput, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("error %q does not say %q", out.String(), w)
				}
			}
		})
	}
}
