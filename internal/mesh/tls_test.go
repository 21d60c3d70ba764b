package mesh

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/certreload"
	"github.com/meshlb/meshlb/internal/testing/testpki"
)

// meshServer serves a hello handler behind m's TLS, as Serve does.
func meshServer(t *testing.T, m *TLS) string {
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
	go srv.Serve(tls.NewListener(ln, m.ListenerConfig()))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
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

	cert, err := certreload.New(serverCert, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewTLS(cert, clientCAFile)
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + meshServer(t, m) + "/"

	agent := ca.HTTPClient(t, clientCert, clientKey)
	if body, cn, _, err := testpki.Fetch(ctx, agent, url); err != nil || body != "hello" || cn != "first" {
		t.Fatalf("client with a certificate from the CA: body %q, server certificate %q, %v; want hello from first", body, cn, err)
	}
	for _, tc := range []struct {
		name   string
		client *http.Client
	}{
		{"no client certificate", ca.HTTPClient(t, "", "")},
		{"certificate from another CA", ca.HTTPClient(t, strangerCert, strangerKey)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if body, _, _, err := testpki.Fetch(ctx, tc.client, url); err == nil {
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
	if err := m.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if body, cn, reused, err := testpki.Fetch(ctx, agent, url); err != nil || !reused || cn != "first" || body != "hello" {
		t.Errorf("the connection opened before the reload: reused %v, certificate %q, %v; want it kept", reused, cn, err)
	}
	if _, _, _, err := testpki.Fetch(ctx, ca.HTTPClient(t, clientCert, clientKey), url); err == nil {
		t.Error("a client of the CA the reload removed was served")
	}
	stranger := ca.HTTPClient(t, strangerCert, strangerKey)
	if _, cn, _, err := testpki.Fetch(ctx, stranger, url); err != nil || cn != "second" {
		t.Errorf("after the reload: server certificate %q, %v; want second, the new CA's client served", cn, err)
	}

	// Broken files are reported and the current ones kept.
	for _, f := range []string{serverCert, clientCAFile} {
		if err := os.WriteFile(f, []byte("broken"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	err = m.Reload()
	if err == nil || !strings.Contains(err.Error(), serverCert) || !strings.Contains(err.Error(), "client CA") {
		t.Errorf("reload of broken files: %v; want an error naming %s and the client CA", err, serverCert)
	}
	if _, cn, _, err := testpki.Fetch(ctx, ca.HTTPClient(t, strangerCert, strangerKey), url); err != nil || cn != "second" {
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
