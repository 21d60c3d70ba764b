package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
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

// meshServer serves a hello handler behind m's TLS, as startMesh does.
func meshServer(t *testing.T, m *meshTLS) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }),
		ReadHeaderTimeout: 5 * time.Second,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:          log.New(io.Discard, "", 0), // refused handshakes are expected
	}
	go srv.Serve(tls.NewListener(ln, m.listenerConfig()))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// tlsClient trusts ca and presents the given client certificate (none when
// certFile is "").
func tlsClient(t *testing.T, ca *testpki.CA, certFile, keyFile string) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: ca.ClientConfig(t, certFile, keyFile), MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// fetch GETs url and returns the body, the server certificate's CN and
// whether the connection was reused.
func fetch(ctx context.Context, c *http.Client, url string) (string, string, bool, error) {
	reused := false
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := c.Do(req)
	if err != nil {
		return "", "", false, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return "", "", false, err
	}
	if res.StatusCode != http.StatusOK {
		return "", "", false, errors.New("status " + res.Status + ": " + string(b))
	}
	cn := ""
	if res.TLS != nil {
		cn = res.TLS.PeerCertificates[0].Subject.CommonName
	}
	return string(b), cn, reused, nil
}

func TestMeshTLSClientCertsAndReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "agents-ca")
	serverCert, serverKey := ca.Issue(t, dir, "mesh", "first", true)
	clientCert, clientKey := ca.Issue(t, dir, "agent", "agent", false)
	other := testpki.NewCA(t, dir, "other-ca")
	strangerCert, strangerKey := other.Issue(t, dir, "stranger", "stranger", false)
	clientCAFile := filepath.Join(dir, "client-ca.pem")
	copyFile(t, ca.File, clientCAFile)

	m, err := newMeshTLS(serverCert, serverKey, clientCAFile)
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + meshServer(t, m) + "/"

	agent := tlsClient(t, ca, clientCert, clientKey)
	if body, cn, _, err := fetch(ctx, agent, url); err != nil || body != "hello" || cn != "first" {
		t.Fatalf("client with a certificate from the CA: body %q, server certificate %q, %v; want hello from first", body, cn, err)
	}
	for _, tc := range []struct {
		name   string
		client *http.Client
	}{
		{"no client certificate", tlsClient(t, ca, "", "")},
		{"certificate from another CA", tlsClient(t, ca, strangerCert, strangerKey)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if body, _, _, err := fetch(ctx, tc.client, url); err == nil {
				t.Errorf("served %q; want the handshake refused", body)
			}
		})
	}
	t.Run("plain HTTP", func(t *testing.T) {
		plainURL := "http://" + strings.TrimPrefix(url, "https://")
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, plainURL, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return // refused outright: fine
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "hello") {
			t.Errorf("plain HTTP got %d %q; want Go's 400 for HTTP on a TLS port, never the handler", res.StatusCode, b)
		}
	})

	// Reload: a new server certificate, and the client CA replaced by
	// another one; new handshakes follow, the open connection stays.
	ca.Issue(t, dir, "mesh", "second", true)
	copyFile(t, other.File, clientCAFile)
	if err := m.reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if body, cn, reused, err := fetch(ctx, agent, url); err != nil || !reused || cn != "first" || body != "hello" {
		t.Errorf("the connection opened before the reload: reused %v, certificate %q, %v; want it kept", reused, cn, err)
	}
	if _, _, _, err := fetch(ctx, tlsClient(t, ca, clientCert, clientKey), url); err == nil {
		t.Error("a client of the CA the reload removed was served")
	}
	stranger := tlsClient(t, ca, strangerCert, strangerKey)
	if _, cn, _, err := fetch(ctx, stranger, url); err != nil || cn != "second" {
		t.Errorf("after the reload: server certificate %q, %v; want second, the new CA's client served", cn, err)
	}

	// Broken files are reported and the current ones kept.
	for _, f := range []string{serverCert, clientCAFile} {
		if err := os.WriteFile(f, []byte("broken"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	err = m.reload()
	if err == nil || !strings.Contains(err.Error(), serverCert) || !strings.Contains(err.Error(), "client CA") {
		t.Errorf("reload of broken files: %v; want an error naming %s and the client CA", err, serverCert)
	}
	if _, cn, _, err := fetch(ctx, tlsClient(t, ca, strangerCert, strangerKey), url); err != nil || cn != "second" {
		t.Errorf("after a failed reload: server certificate %q, %v; want second and the same client CA", cn, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
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
		c := tlsClient(t, ca, clientCert, clientKey)
		body, cn, _, err := fetch(ctx, c, url)
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
