package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// writeCert writes a self-signed certificate for 127.0.0.1 named cn.
func writeCert(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	// Write to temp names and rename, as a deploy tool would.
	for _, f := range []struct {
		path  string
		block *pem.Block
	}{{certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der}}, {keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// peerCN sends one GET on client and returns the server certificate's CN
// and whether the connection was reused.
func peerCN(t *testing.T, client *http.Client, url string) (string, bool) {
	t.Helper()
	reused := false
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	}))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body) // read to the end so the connection is kept
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("GET %s: status %d, tls %v", url, resp.StatusCode, resp.TLS != nil)
	}
	return resp.TLS.PeerCertificates[0].Subject.CommonName, reused
}

func TestTLSTerminationReloadsOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "first")

	srv := consultest.New(t)
	insecureTLS := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // self-signed test certificate
	c := &cluster{t: t, consul: srv, env: srv.Env(), capi: srv.Client(), service: "tls", regs: map[int]*testproc.Proc{},
		scheme: "https", client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: insecureTLS}}}
	c.addInstance()
	c.startAgent("--tls-cert", certFile, "--tls-key", keyFile)
	c.waitPool(1)

	url := "https://" + c.addr + "/"
	held := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS, MaxIdleConnsPerHost: 1}}
	if cn, _ := peerCN(t, held, url); cn != "first" {
		t.Fatalf("certificate %q, want first", cn)
	}

	writeCert(t, certFile, keyFile, "second")
	if err := c.agent.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	fresh := func() string {
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS, DisableKeepAlives: true}}
		cn, _ := peerCN(t, cl, url)
		return cn
	}
	testproc.WaitFor(t, 5*time.Second, "new handshakes to get the new certificate", func() bool { return fresh() == "second" })

	// The connection opened before the reload is still served.
	cn, reused := peerCN(t, held, url)
	if !reused || cn != "first" {
		t.Errorf("the open connection: reused %v, certificate %q; want reused with the old certificate", reused, cn)
	}

	// A broken pair is refused and the current one kept.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	failedBefore := strings.Count(c.agent.Out.String(), "TLS reload failed")
	_ = c.agent.Signal(syscall.SIGHUP)
	// The agent says it refused the pair: the signal was handled.
	testproc.WaitFor(t, 5*time.Second, "the agent to log the failed reload", func() bool {
		return strings.Count(c.agent.Out.String(), "TLS reload failed") > failedBefore
	})
	if got := fresh(); got != "second" {
		t.Errorf("after a failed reload, certificate %q; want second kept", got)
	}
	if c.agent.Exited() {
		t.Fatal("agent exited on a bad certificate reload")
	}
}
