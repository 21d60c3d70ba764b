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

// TestFlagsAndFileOneModel: a setting that the file and a flag both have
// is checked by one rule, and the error names where the value came from;
// the flag wins over the file.
func TestFlagsAndFileOneModel(t *testing.T) {
	dir := t.TempDir()
	n := 0
	file := func(body string) string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("agent%d.hcl", n))
		src := "listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"s\" }\n}\n" + body
		if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cli := []string{"--listen", "127.0.0.1:0", "--service", "s"}
	for _, tc := range []struct {
		name string
		args []string
		want string // the error; "" for none
		not  string
	}{
		{"file", []string{"--config", file("proxy { max_header_bytes = 10 }")}, ".hcl: invalid proxy.max_header_bytes 10: must be 1024-1048576", ""},
		{"flag", append(cli, "--max-header-bytes", "10"), "invalid --max-header-bytes 10: must be 1024-1048576", "config file"},
		{"flag over a bad file value", []string{"--config", file("proxy { max_header_bytes = 10 }"), "--max-header-bytes", "4096"}, "", ""},
		{"file duration", []string{"--config", file(`proxy { connect_timeout = "-1s" }`)}, `invalid proxy.connect_timeout "-1s": want a positive duration`, ""},
		{"flag duration", append(cli, "--connect-timeout", "-1s"), `invalid --connect-timeout "-1s": want a positive duration`, "config file"},
		{"file size", []string{"--config", file(`proxy { max_body_size = "lots" }`)}, `invalid proxy.max_body_size "lots"`, ""},
		{"flag size", append(cli, "--max-body-size", "lots"), `invalid --max-body-size "lots"`, "config file"},
		{"flag conns", append(cli, "--max-conns", "-1"), "invalid --max-conns -1: must be >= 0", ""},
		{"flag streams", append(cli, "--max-concurrent-streams", "0"), "invalid --max-concurrent-streams 0: must be 1-10000", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, io.Discard)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			case tc.not != "" && strings.Contains(err.Error(), tc.not):
				t.Errorf("error %v says %q", err, tc.not)
			}
		})
	}
	c, err := Parse([]string{"--config", file("proxy { max_conns = 5 }\nadmin = \"127.0.0.1:9999\"\nconsul { stale = true }"),
		"--max-conns", "7", "--stale=false"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConns != 7 || c.Admin != "127.0.0.1:9999" || c.Stale {
		t.Errorf("max_conns %d, admin %q, stale %v; want the flags' 7 and false, the file's admin", c.MaxConns, c.Admin, c.Stale)
	}
	if d := defaults(); c.MaxHeaderBytes != d.MaxHeaderBytes || c.MaxAttempts != d.MaxAttempts {
		t.Errorf("unset settings %d, %d; want the defaults %d, %d", c.MaxHeaderBytes, c.MaxAttempts, d.MaxHeaderBytes, d.MaxAttempts)
	}
}
