// Package testpki makes throwaway certificate authorities and certificates
// for tests of the TLS features (edge TLS, mesh mTLS): ECDSA P-256, valid
// for an hour either side of now, written as PEM files. It is for tests
// only and must not be used to issue anything that serves traffic.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose certificate is written to File.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	File string
}

// NewCA makes a CA named name and writes its certificate to dir/name.pem.
func NewCA(t testing.TB, dir, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{Cert: cert, Key: key, File: filepath.Join(dir, name+".pem")}
	WritePEM(t, ca.File, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	return ca
}

// Issue writes a certificate for cn signed by ca to dir/name.pem and its
// key to dir/name-key.pem (replacing them atomically, as a deploy tool
// would) and returns the two paths. A server certificate is for the IP
// 127.0.0.1 and the DNS name sidecar.mesh; a client certificate is for
// client authentication.
func (ca *CA) Issue(t testing.TB, dir, name, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"sidecar.mesh"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	WritePEM(t, certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	WritePEM(t, keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	return certFile, keyFile
}

// WritePEM writes b to path through a rename, so that a reader never sees
// half a file.
func WritePEM(t testing.TB, path string, b *pem.Block) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(b), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// serial is a random certificate serial number.
func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ClientConfig is a client TLS configuration that trusts ca and presents
// the certificate in certFile and keyFile (none when certFile is ""). The
// certificate is always sent, as the agent sends it: with Certificates Go
// would leave out one the server's CA list does not name.
func (ca *CA) ClientConfig(t testing.TB, certFile, keyFile string) *tls.Config {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	tc := &tls.Config{RootCAs: roots}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	return tc
}
