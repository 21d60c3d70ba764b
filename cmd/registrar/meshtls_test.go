package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testpki"
	"github.com/meshlb/meshlb/internal/testing/testproc"
	"github.com/meshlb/meshlb/internal/testing/tornadotest"
	"github.com/meshlb/meshlb/internal/wire"
)

func TestMeshTLSFlagsRefused(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	cert, key := ca.Issue(t, dir, "mesh", "mesh", true)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	base := []string{"--service", "s", "--port", "8080"}
	mesh := append(slices.Clone(base), "--mesh-port", "9080")
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"cert without key", append(slices.Clone(mesh), "--mesh-tls-cert", cert), []string{"--mesh-tls-cert and --mesh-tls-key go together", cert}},
		{"key without cert", append(slices.Clone(mesh), "--mesh-tls-key", key), []string{"--mesh-tls-cert and --mesh-tls-key go together", key}},
		{"tls without mesh port", append(slices.Clone(base), "--mesh-tls-cert", cert, "--mesh-tls-key", key), []string{`--mesh-tls-cert "` + cert + `" applies to the mesh port: give --mesh-port`}},
		{"client ca without mesh port", append(slices.Clone(base), "--mesh-tls-client-ca", ca.File), []string{`--mesh-tls-client-ca "` + ca.File + `" applies to the mesh port`}},
		{"client ca without cert", append(slices.Clone(mesh), "--mesh-tls-client-ca", ca.File), []string{`--mesh-tls-client-ca "` + ca.File + `" needs --mesh-tls-cert and --mesh-tls-key`}},
		{"https tag on a plain mesh port", append(slices.Clone(mesh), "--tag", "https"), []string{`invalid --tag "https"`, "plain HTTP"}},
		{"missing cert file", append(slices.Clone(mesh), "--mesh-tls-cert", missing, "--mesh-tls-key", key), []string{"invalid --mesh-tls-cert/--mesh-tls-key", missing, "no such file"}},
		{"cert not PEM", append(slices.Clone(mesh), "--mesh-tls-cert", garbage, "--mesh-tls-key", key), []string{"invalid --mesh-tls-cert/--mesh-tls-key", garbage}},
		{"key does not match", append(slices.Clone(mesh), "--mesh-tls-cert", cert, "--mesh-tls-key", cert), []string{"invalid --mesh-tls-cert/--mesh-tls-key", cert}},
		{"missing client ca", append(slices.Clone(mesh), "--mesh-tls-cert", cert, "--mesh-tls-key", key, "--mesh-tls-client-ca", missing), []string{"invalid --mesh-tls-client-ca", missing, "no such file"}},
		{"client ca not PEM", append(slices.Clone(mesh), "--mesh-tls-cert", cert, "--mesh-tls-key", key, "--mesh-tls-client-ca", garbage), []string{"invalid --mesh-tls-client-ca", garbage, "holds no PEM certificate"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Nothing is started: no command, no Consul, the error comes first.
			var buf bytes.Buffer
			if code := run(tc.args, &buf); code != exitBadInput {
				t.Errorf("exit %d, want %d; output:\n%s", code, exitBadInput, buf.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("error %q does not say %q", buf.String(), w)
				}
			}
		})
	}
}

func TestMeshTLSFlagsInHelpAndHTTPSTag(t *testing.T) {
	var help bytes.Buffer
	if _, err := parseArgs([]string{"--help"}, &help); !errors.Is(err, errHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"-mesh-tls-cert FILE", "-mesh-tls-key FILE", "-mesh-tls-client-ca FILE", `tag "https"`} {
		if !strings.Contains(help.String(), f) {
			t.Errorf("--help does not mention %q", f)
		}
	}

	mesh := []string{"--service", "s", "--port", "8080", "--mesh-port", "9080"}
	tlsFlags := []string{"--mesh-tls-cert", "c.pem", "--mesh-tls-key", "k.pem"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"plain mesh port", append(slices.Clone(mesh), "--tag", "v1"), []string{"v1"}},
		{"tls mesh port", append(append(slices.Clone(mesh), tlsFlags...), "--tag", "v1"), []string{"v1", wire.TagHTTPS}},
		{"tls with the tag given", append(append(slices.Clone(mesh), tlsFlags...), "--tag", "https,v1"), []string{"https", "v1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseArgs(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.service_(1, "h").Tags; !slices.Equal(got, tc.want) {
				t.Errorf("registered tags %v, want %v", got, tc.want)
			}
			if got := c.service_(1, "h").Port; got != 9080 {
				t.Errorf("registered port %d, want the mesh port 9080", got)
			}
		})
	}
}

// TestMeshTLSReloadsOnSIGHUP runs a registrar attached to a running app
// with a TLS mesh port: it registers the https tag, serves the app over
// TLS to clients with a certificate, and SIGHUP makes new handshakes use
// a replaced certificate without stopping it (or the app).
func TestMeshTLSReloadsOnSIGHUP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	serverCert, serverKey := ca.Issue(t, dir, "mesh", "first", true)
	clientCert, clientKey := ca.Issue(t, dir, "agent", "agent", false)

	srv := consultest.New(t)
	appPort, meshPort := testproc.FreePort(t), testproc.FreePort(t)
	app := tornadotest.Start(t, appPort)
	reg := start(t, srv.Env(), registrarBin, "--service", "tlsreload", "--port", strconv.Itoa(appPort),
		"--mesh-port", strconv.Itoa(meshPort), "--check", "tcp", "--drain", "200ms",
		"--mesh-tls-cert", serverCert, "--mesh-tls-key", serverKey, "--mesh-tls-client-ca", ca.File)
	waitFor(t, 15*time.Second, "instance passing", passing(t, srv.Client(), "tlsreload"))
	e := lookup(t, srv.Client(), "tlsreload")[0].entry
	if !slices.Contains(e.Service.Tags, wire.TagHTTPS) || e.Service.Port != meshPort {
		t.Errorf("registered tags %v port %d; want the https tag and the mesh port %d", e.Service.Tags, e.Service.Port, meshPort)
	}

	url := "https://127.0.0.1:" + strconv.Itoa(meshPort) + "/"
	fresh := func() (string, string, error) {
		c := ca.HTTPClient(t, clientCert, clientKey)
		body, cn, _, err := testpki.Fetch(ctx, c, url)
		c.CloseIdleConnections()
		return body, cn, err
	}
	body, cn, err := fresh()
	if err != nil || cn != "first" || !strings.Contains(body, "Hello from Process Id = "+strconv.Itoa(app.Cmd.Process.Pid)) {
		t.Fatalf("GET through the TLS mesh port: %q from %q, %v; want the app's hello from first", body, cn, err)
	}
	ca.Issue(t, dir, "mesh", "second", true)
	if err := reg.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "new handshakes to get the new certificate", func() bool {
		_, cn, err := fresh()
		return err == nil && cn == "second"
	})
	if reg.Exited() || app.Exited() {
		t.Fatal("SIGHUP stopped the registrar or the attached app")
	}
	if !strings.Contains(reg.Out.String(), "mesh TLS reloaded") {
		t.Errorf("the registrar did not log the reload:\n%s", reg.Out.String())
	}
}
