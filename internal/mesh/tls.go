package mesh

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/meshlb/meshlb/internal/certreload"
)

// TLS is the mesh port's TLS: a certificate reloaded from files and,
// optionally, the CAs that client certificates must chain to. Each
// handshake takes the configuration current at that moment, so a reload
// (SIGHUP) applies to new connections while open ones keep theirs.
type TLS struct {
	cert   *certreload.Reloader
	caFile string // "" = no client certificates asked for
	conf   atomic.Pointer[tls.Config]
}

// NewTLS serves cert and, when caFile is not "", asks every client for a
// certificate that chains to the CAs in caFile (PEM); the error is the CA
// file's.
func NewTLS(cert *certreload.Reloader, caFile string) (*TLS, error) {
	m := &TLS{cert: cert, caFile: caFile}
	var pool *x509.CertPool
	if caFile != "" {
		var err error
		if pool, err = loadCAs(caFile); err != nil {
			return nil, err
		}
	}
	m.conf.Store(m.handshakeConfig(pool))
	return m, nil
}

// Files returns the certificate and key files.
func (m *TLS) Files() (cert, key string) { return m.cert.Files() }

// handshakeConfig is the configuration of one handshake.
func (m *TLS) handshakeConfig(clientCAs *x509.CertPool) *tls.Config {
	c := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.cert.GetCertificate,
		NextProtos:     []string{"http/1.1"},
		// A resumed session skips the client certificate check: with
		// tickets, a client whose CA a reload removed could still resume.
		// Edges keep their connections open, so full handshakes are rare.
		SessionTicketsDisabled: true,
	}
	if clientCAs != nil {
		c.ClientCAs = clientCAs
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c
}

// ListenerConfig is the configuration for tls.NewListener.
func (m *TLS) ListenerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return m.conf.Load(), nil
		},
	}
}

// Reload reads the files again. A certificate pair or CA file that fails
// to load is reported and its previous contents kept.
func (m *TLS) Reload() error {
	errCert := m.cert.Reload()
	var pool *x509.CertPool
	var errCA error
	if m.caFile != "" {
		if pool, errCA = loadCAs(m.caFile); errCA != nil {
			errCA = fmt.Errorf("client CA (kept the previous one): %w", errCA)
			pool = m.conf.Load().ClientCAs
		}
	}
	m.conf.Store(m.handshakeConfig(pool))
	return errors.Join(errCert, errCA)
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}
