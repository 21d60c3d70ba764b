package agentconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshlb/meshlb/internal/testing/testpki"
)

func TestUpstreamTLSConfigLoads(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "agent", "agent", false)
	other, otherKey := ca.Issue(t, dir, "other", "other", false)
	hcl := filepath.Join(dir, "agent.hcl")
	src := fmt.Sprintf("listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"s\" }\n}\n"+
		"upstream_tls {\n  ca_file = %q\n  cert_file = %q\n  key_file = %q\n  server_name = \"mesh.internal\"\n}\n", ca.File, other, otherKey)
	if err := os.WriteFile(hcl, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		args       []string
		nilConfig  bool
		wantCN     string // of the client certificate; "" for none
		wantName   string
		wantRoots  bool
		wantReload bool
	}{
		{"nothing set", []string{"--listen", ":0", "--service", "s"}, true, "", "", false, false},
		{"CA only", []string{"--listen", ":0", "--service", "s", "--upstream-tls-ca", ca.File}, false, "", "", true, false},
		{"server name only: system roots", []string{"--listen", ":0", "--service", "s", "--upstream-tls-server-name", "10.0.0.7"}, false, "", "10.0.0.7", false, false},
		{"file", []string{"--config", hcl}, false, "other", "mesh.internal", true, true},
		{"flags override the file", []string{"--config", hcl, "--upstream-tls-cert", cert, "--upstream-tls-key", key, "--upstream-tls-server-name", "sidecar.mesh."},
			false, "agent", "sidecar.mesh.", true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			tc2, cr, err := cfg.UpstreamTLS.Load()
			if err != nil {
				t.Fatal(err)
			}
			if (tc2 == nil) != tc.nilConfig || (cr != nil) != tc.wantReload {
				t.Fatalf("config %v, reloader %v; want nil config %v, reloader %v", tc2, cr, tc.nilConfig, tc.wantReload)
			}
			if tc2 == nil {
				return
			}
			if tc2.ServerName != tc.wantName || (tc2.RootCAs != nil) != tc.wantRoots || tc2.MinVersion != tls.VersionTLS12 {
				t.Errorf("ServerName %q, roots %v, MinVersion %x; want %q, %v, TLS 1.2", tc2.ServerName, tc2.RootCAs != nil, tc2.MinVersion, tc.wantName, tc.wantRoots)
			}
			if tc.wantCN == "" {
				if tc2.GetClientCertificate != nil || len(tc2.Certificates) > 0 {
					t.Error("a client certificate is configured; want none")
				}
				return
			}
			c, err := tc2.GetClientCertificate(&tls.CertificateRequestInfo{})
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(c.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if leaf.Subject.CommonName != tc.wantCN {
				t.Errorf("client certificate %q, want %q", leaf.Subject.CommonName, tc.wantCN)
			}
		})
	}
}

func FuzzConfigFile(f *testing.F) {
	f.Add([]byte(`admin = "127.0.0.1:9070"
service "hello" { balance = "least_conn"  max_fails = 2  fail_timeout = "5s" }
listener "web" {
  address = "127.0.0.1:8070"
  route { host = "*.example.com"  path_prefix = "/api"  service = "hello" }
}
proxy { connect_timeout = "1s"  max_body_size = "1m" }`))
	f.Add([]byte(`listener "x" { address = ":1" }`))
	f.Add([]byte(`service "a" { balance = "hash:header:X-User" }`))
	f.Add([]byte("\x00{"))
	f.Fuzz(func(t *testing.T, src []byte) {
		d := defaults()
		c := &d
		err := c.loadBytes("fuzz.hcl", src)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.hcl") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, l := range c.Listeners {
			if len(l.Routes) == 0 {
				t.Fatalf("accepted listener %q without routes", l.Name)
			}
			for _, r := range l.Routes {
				if c.Service(r.Service) == nil {
					t.Fatalf("route to unknown service %q accepted", r.Service)
				}
			}
		}
		if c.MaxAttempts < 1 || c.MaxBodyBytes < 0 {
			t.Fatalf("invalid limits accepted: %+v", c)
		}
	})
}
