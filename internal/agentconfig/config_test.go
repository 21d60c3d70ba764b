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
	"time"

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
	files := configFiles(t)
	file := func(body string) string {
		return files("listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"s\" }\n}\n" + body)
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

// TestServiceAndListenerFlags: the flags that are the services' settings
// (--balance, --max-fails, --fail-timeout, --try-timeout, --failover-dc),
// --trusted-proxy and the --listen listener go through the file's model
// too: one check each, errors that name the flag (not the file) or the
// file's field, and the precedence of before.
func TestServiceAndListenerFlags(t *testing.T) {
	file := configFiles(t)
	web := "listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"own\" }\n  route {\n    path_prefix = \"/r\"\n    service = \"routed\"\n  }\n}\n"
	conf := file(`service "own" {
  balance = "least_conn"
  max_fails = 5
  fail_timeout = "3s"
  try_timeout = "250ms"
  failover { datacenters = ["dc7"] }
}
trusted_proxies = ["10.0.0.0/8"]
` + web)
	cli := []string{"--listen", "127.0.0.1:1"}

	t.Run("precedence", func(t *testing.T) {
		type svc struct {
			policy      string
			maxFails    int
			failTimeout time.Duration
			try         time.Duration
			dcs         string
		}
		for _, tc := range []struct {
			name string
			args []string
			want map[string]svc
		}{
			{"defaults", []string{"--config", conf},
				map[string]svc{"own": {"least_conn", 5, 3 * time.Second, 250 * time.Millisecond, "dc7"}, "routed": {"", 3, 10 * time.Second, 0, ""}}},
			{"the flags are the default of the services without their own",
				[]string{"--config", conf, "--max-fails", "-1", "--fail-timeout", "1m", "--try-timeout", "off", "--failover-dc", "dc2", "--balance", "random_two"},
				map[string]svc{"own": {"least_conn", 5, 3 * time.Second, 250 * time.Millisecond, "dc7"}, "routed": {"", -1, time.Minute, -1, "dc2"}}},
			{"--service makes a service of its own",
				append(cli, "--config", conf, "--service", "extra", "--max-fails", "2", "--balance", "hash:ip"),
				map[string]svc{"own": {"least_conn", 5, 3 * time.Second, 250 * time.Millisecond, "dc7"}, "routed": {"", 2, 10 * time.Second, 0, ""}, "extra": {"hash:ip", 2, 10 * time.Second, 0, ""}}},
			{"--balance wins over the block of --service's service",
				append(cli, "--config", conf, "--service", "own", "--balance", "p2c_ewma"),
				map[string]svc{"own": {"p2c_ewma", 5, 3 * time.Second, 250 * time.Millisecond, "dc7"}, "routed": {"", 3, 10 * time.Second, 0, ""}}},
			{"--service's block keeps its balance without --balance",
				append(cli, "--config", conf, "--service", "own"),
				map[string]svc{"own": {"least_conn", 5, 3 * time.Second, 250 * time.Millisecond, "dc7"}, "routed": {"", 3, 10 * time.Second, 0, ""}}},
			{"--balance for a service only a route names",
				append(cli, "--config", conf, "--service", "routed", "--balance", "random_two"),
				map[string]svc{"own": {"least_conn", 5, 3 * time.Second, 250 * time.Millisecond, "dc7"}, "routed": {"random_two", 3, 10 * time.Second, 0, ""}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := Parse(tc.args, io.Discard)
				if err != nil {
					t.Fatal(err)
				}
				if len(c.Services) != len(tc.want) {
					t.Fatalf("%d services, want %d", len(c.Services), len(tc.want))
				}
				for name, want := range tc.want {
					s := c.Service(name)
					if s == nil {
						t.Fatalf("no service %q", name)
					}
					got := svc{s.LB.Policy, s.LB.MaxFails, s.LB.FailTimeout, s.TryTimeout, strings.Join(s.Failover.Datacenters, ",")}
					if got != want {
						t.Errorf("service %q: %+v, want %+v", name, got, want)
					}
				}
			})
		}
	})

	t.Run("the --listen listener", func(t *testing.T) {
		c, err := Parse(append(cli, "--config", conf, "--service", "extra", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--cache", "1m",
			"--trusted-proxy", "192.168.0.1", "--trusted-proxy", "fd00::/8"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Listeners) != 2 || c.Listeners[0].Name != "web" {
			t.Fatalf("listeners %+v; want the file's, then --listen's", c.Listeners)
		}
		l := c.Listeners[1]
		if l.Name != "cli" || l.Address != "127.0.0.1:1" || l.CertFile != "c.pem" || l.KeyFile != "k.pem" ||
			len(l.Routes) != 1 || l.Routes[0] != (Route{Service: "extra"}) || l.Cache == nil || *l.Cache != (Cache{MaxSize: 1 << 20}) {
			t.Errorf("--listen listener %+v (cache %v)", l, l.Cache)
		}
		var names []string
		for _, s := range c.Services {
			names = append(names, s.Name)
		}
		if got := strings.Join(names, " "); got != "own routed extra" {
			t.Errorf("services %s; want the blocks', the routes', then --service's", got)
		}
		if got := fmt.Sprint(c.TrustedProxies); got != "[10.0.0.0/8 192.168.0.1/32 fd00::/8]" {
			t.Errorf("trusted proxies %s; want the file's, then the flags'", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		bad := func(body string) []string { return []string{"--config", file(body + web)} }
		for _, tc := range []struct {
			name string
			args []string
			want string // the whole message
		}{
			{"--balance", append(cli, "--config", conf, "--service", "s", "--balance", "fastest"),
				`invalid --balance: lb: invalid balancing policy "fastest": unknown policy (valid: round_robin, least_conn, random_two, p2c_ewma, hash:header:NAME, hash:cookie:NAME, hash:ip)`},
			{"--balance without --listen", []string{"--config", conf, "--balance", "fastest"},
				`invalid --balance: lb: invalid balancing policy "fastest": unknown policy (valid: round_robin, least_conn, random_two, p2c_ewma, hash:header:NAME, hash:cookie:NAME, hash:ip)`},
			{"balance", bad(`service "own" { balance = "fastest" }` + "\n"),
				`service "own": invalid balance: lb: invalid balancing policy "fastest"`},
			{"--max-fails", []string{"--config", conf, "--max-fails", "0"}, "invalid --max-fails 0: must be >= 1, or -1 to disable passive health"},
			{"max_fails", bad(`service "own" { max_fails = -2 }` + "\n"), `service "own": invalid max_fails -2: must be >= 1, or -1 to disable passive health`},
			{"--fail-timeout", []string{"--config", conf, "--fail-timeout", "-1s"}, `invalid --fail-timeout "-1s": want a positive duration such as 500ms, 10s, 1m`},
			{"fail_timeout", bad(`service "own" { fail_timeout = "0s" }` + "\n"), `invalid service "own" fail_timeout "0s": want a positive duration such as 500ms, 10s, 1m`},
			{"--try-timeout", []string{"--config", conf, "--try-timeout", "fast"}, `invalid --try-timeout "fast": want a positive duration such as 300ms, "auto" (adaptive) or "off"`},
			{"--failover-dc", []string{"--config", conf, "--failover-dc", "d c"}, `invalid --failover-dc: invalid failover datacenter "d c" for service "routed": use letters, digits, '-', '_' and '.'`},
			{"--trusted-proxy", []string{"--config", conf, "--trusted-proxy", "bad"}, `invalid --trusted-proxy "bad": not an IP address or CIDR prefix`},
			{"trusted_proxies", append(bad(`trusted_proxies = ["bad"]`+"\n"), "--trusted-proxy", "10.1.1.1"), `invalid trusted_proxies entry "bad": not an IP address or CIDR prefix`},
			{"--service", append(cli, "--config", conf, "--service", "a b"), `invalid --service: invalid service name "a b": use letters, digits, '-' and '_', starting and ending with a letter or digit, at most 63 characters`},
			{"--cache too small", append(cli, "--config", conf, "--service", "s", "--cache", "1k"), `invalid --cache "1k": at least 64KiB (leave the flag out for no cache)`},
			{"--cache", append(cli, "--config", conf, "--service", "s", "--cache", "lots"), `invalid --cache "lots": want a size such as 1048576, 512k, 1m, 2g or 256MiB (0 for no limit)`},
			{"--tls-cert alone", append(cli, "--config", conf, "--service", "s", "--tls-cert", "c.pem"), "--tls-cert and --tls-key go together"},
			{"--tls-cert without --listen", []string{"--config", conf, "--tls-cert", "c.pem", "--tls-key", "k.pem"}, "--tls-cert applies to --listen; in a config file use a tls block in the listener"},
			{"--cache without --listen", []string{"--config", conf, "--cache", "1m"}, "--cache applies to --listen; in a config file use a cache block in the listener or route"},
			{"--listen alone", append(cli, "--config", conf), "--listen needs --service NAME (or use --config FILE)"},
			{"--listen address", []string{"--listen", "nonsense", "--service", "s"}, `invalid listen address "nonsense" (listener "cli"): want HOST:PORT or :PORT`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := Parse(tc.args, io.Discard)
				if err == nil {
					t.Fatalf("no error, want %q", tc.want)
				}
				got := err.Error()
				fromFile := !strings.HasPrefix(tc.name, "-")
				if fromFile {
					prefix := "config file " + tc.args[1] + ": "
					if !strings.HasPrefix(got, prefix) || !strings.Contains(got, tc.want) {
						t.Errorf("error %q, want %q after %q", got, tc.want, prefix)
					}
					return
				}
				if got != tc.want {
					t.Errorf("error %q\n  want %q", got, tc.want)
				}
			})
		}
	})
}

// configFiles returns a function that writes each config file body it is
// given into a new file and returns the file's path.
func configFiles(t *testing.T) func(body string) string {
	dir := t.TempDir()
	n := 0
	return func(body string) string {
		n++
		p := filepath.Join(dir, fmt.Sprintf("agent%d.hcl", n))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
