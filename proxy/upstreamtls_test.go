package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

// tlsUpstream is an instance serving HTTPS (HTTP/1.1 only, as a mesh port
// with --mesh-tls-cert) that records how it was reached.
type tlsUpstream struct {
	srv       *httptest.Server
	hits      atomic.Int64
	tlsProto  atomic.Value // negotiated ALPN protocol of the last request
	httpProto atomic.Value // r.Proto of the last request
	peerCN    atomic.Value // CN of the client certificate of the last request, "" if none
}

// clientCert makes a self-signed client certificate named cn.
func clientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newTLSUpstream(t *testing.T, clientAuth tls.ClientAuthType) *tlsUpstream {
	t.Helper()
	u := &tlsUpstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		cn := ""
		if r.TLS != nil {
			u.tlsProto.Store(r.TLS.NegotiatedProtocol)
			if len(r.TLS.PeerCertificates) > 0 {
				cn = r.TLS.PeerCertificates[0].Subject.CommonName
			}
		}
		u.httpProto.Store(r.Proto)
		u.peerCN.Store(cn)
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "tls:"+r.Method+":"+string(b))
	}))
	u.srv.TLS = &tls.Config{ClientAuth: clientAuth, NextProtos: []string{"http/1.1"}}
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	return u
}

// instance is the upstream as the agent sees it, tagged https.
func (u *tlsUpstream) instance(id string) lb.Instance {
	in := instanceAt(id, u.srv.Listener.Addr().String())
	in.Tags = []string{"v1", wire.TagHTTPS}
	return in
}

// roots trusts the upstream's certificate.
func (u *tlsUpstream) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(u.srv.Certificate())
	return p
}

func TestUpstreamTLSToInstancesTaggedHTTPS(t *testing.T) {
	cert := clientCert(t, "agent")

	cases := []struct {
		name       string
		clientAuth tls.ClientAuthType
		upstream   func(u *tlsUpstream) *tls.Config
		wantStatus int
		wantCN     string // CN of the client certificate the instance saw
	}{
		{"trusted CA", tls.NoClientCert, func(u *tlsUpstream) *tls.Config { return &tls.Config{RootCAs: u.roots()} }, 200, ""},
		{"no UpstreamTLS: system roots do not know the instance", tls.NoClientCert, func(*tlsUpstream) *tls.Config { return nil }, 502, ""},
		{"ServerName the certificate carries", tls.NoClientCert, func(u *tlsUpstream) *tls.Config {
			return &tls.Config{RootCAs: u.roots(), ServerName: "example.com"}
		}, 200, ""},
		{"ServerName the certificate does not carry", tls.NoClientCert, func(u *tlsUpstream) *tls.Config {
			return &tls.Config{RootCAs: u.roots(), ServerName: "other.example"}
		}, 502, ""},
		{"client certificate presented", tls.RequireAnyClientCert, func(u *tlsUpstream) *tls.Config {
			return &tls.Config{RootCAs: u.roots(), GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &cert, nil
			}}
		}, 200, "agent"},
		{"client certificate required, none configured", tls.RequireAnyClientCert, func(u *tlsUpstream) *tls.Config {
			return &tls.Config{RootCAs: u.roots()}
		}, 502, ""},
	}
	for _, tc := range cases {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(tc.name+"/"+method, func(t *testing.T) {
				ctx := testCtx(t)
				u := newTLSUpstream(t, tc.clientAuth)
				// The handshake's bound (ConnectTimeout, 1 s by default) is
				// not under test: under -race on a loaded machine an RSA
				// handshake took longer. Refusals fail at once anyway.
				f := newFrontend(t, Config{UpstreamTLS: tc.upstream(u), MaxAttempts: 1, ConnectTimeout: 15 * time.Second},
					Route{Balancer: newBalancer(t, "web", u.instance("a"))})
				res, body := f.do(t, ctx, method, "/x", strings.NewReader("ping"), nil)
				if res.StatusCode != tc.wantStatus {
					t.Fatalf("status %d %q, want %d", res.StatusCode, body, tc.wantStatus)
				}
				if tc.wantStatus != 200 {
					if n := u.hits.Load(); n != 0 {
						t.Errorf("the instance served %d requests; want none past the refused handshake", n)
					}
					return
				}
				if want := "tls:" + method + ":ping"; body != want {
					t.Errorf("body %q, want %q", body, want)
				}
				if p := u.httpProto.Load(); p != "HTTP/1.1" || u.tlsProto.Load() != "http/1.1" {
					t.Errorf("reached over %v with ALPN %q; want HTTP/1.1 over TLS", p, u.tlsProto.Load())
				}
				if got := u.peerCN.Load(); got != tc.wantCN {
					t.Errorf("client certificate %q seen, want %q", got, tc.wantCN)
				}
			})
		}
	}
}

func TestUpstreamTLSLeavesUntaggedInstancesInCleartext(t *testing.T) {
	ctx := testCtx(t)
	var sawTLS atomic.Bool
	plain := newUpstream(t, "plain", func(w http.ResponseWriter, r *http.Request) {
		sawTLS.Store(r.TLS != nil)
		io.WriteString(w, "plain")
	})
	secure := newTLSUpstream(t, tls.NoClientCert)
	// Both instances in one pool: each is reached the way its tags say.
	f := newFrontend(t, Config{UpstreamTLS: &tls.Config{RootCAs: secure.roots()}, MaxAttempts: 1},
		Route{Balancer: newBalancer(t, "web", plain.instance(), secure.instance("secure"))})
	seen := map[string]int{}
	for range 4 {
		res, body := f.do(t, ctx, http.MethodGet, "/", nil, nil)
		if res.StatusCode != 200 {
			t.Fatalf("status %d %q", res.StatusCode, body)
		}
		seen[body]++
	}
	if seen["plain"] != 2 || seen["tls:GET:"] != 2 {
		t.Errorf("answers %v; want 2 from the cleartext instance and 2 from the TLS one", seen)
	}
	if sawTLS.Load() {
		t.Error("the untagged instance was reached over TLS")
	}
}

func TestUpstreamTLSConfigIsClonedAndHTTP1Only(t *testing.T) {
	in := &tls.Config{ServerName: "mesh.internal", NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS10}
	got := upstreamTLSConfig(in)
	if got == in {
		t.Fatal("the caller's config is used as is; want a clone")
	}
	if in.NextProtos[0] != "h2" || in.MinVersion != tls.VersionTLS10 {
		t.Errorf("the caller's config was changed: %+v", in)
	}
	if len(got.NextProtos) != 1 || got.NextProtos[0] != "http/1.1" || got.MinVersion != tls.VersionTLS12 || got.ServerName != "mesh.internal" {
		t.Errorf("NextProtos %v MinVersion %x ServerName %q; want [http/1.1], TLS 1.2, mesh.internal", got.NextProtos, got.MinVersion, got.ServerName)
	}
	if def := upstreamTLSConfig(nil); def.RootCAs != nil || def.ServerName != "" || len(def.NextProtos) != 1 {
		t.Errorf("default config %+v; want system roots, the dialled address, HTTP/1.1", def)
	}
	for _, tc := range []struct {
		tags []string
		want bool
	}{{nil, false}, {[]string{"v1"}, false}, {[]string{"grpc", "https"}, true}, {[]string{"HTTPS"}, false}} {
		if got := usesTLS(&lb.Instance{Tags: tc.tags}); got != tc.want {
			t.Errorf("usesTLS(tags %v) = %v, want %v", tc.tags, got, tc.want)
		}
	}
}
