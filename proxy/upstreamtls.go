package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/meshlb/meshlb/internal/certreload"
	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

// usesTLS reports whether inst is tagged wire.TagHTTPS (a registrar's mesh
// port with --mesh-tls-cert): the proxy then speaks HTTPS to it, HTTP/1.1
// only, with Config.UpstreamTLS. Such an instance is
// always reached over TLS through the HTTP/1.1 transport, never over h2c
// nor any cleartext fast path.
func usesTLS(inst *lb.Instance) bool {
	for _, t := range inst.Tags {
		if t == wire.TagHTTPS {
			return true
		}
	}
	return false
}

// upstreamScheme is the URL scheme of a request to inst.
func upstreamScheme(inst *lb.Instance) string {
	if usesTLS(inst) {
		return "https"
	}
	return "http"
}

// upstreamTLSConfig returns the client TLS configuration of the HTTP/1.1
// transport: a clone of c, or the system roots when c is nil, offering
// only HTTP/1.1 by ALPN and at least TLS 1.2. An empty ServerName is left
// empty: the transport then verifies the certificate against the address
// it dials (an IP address checks the certificate's IP SANs).
func upstreamTLSConfig(c *tls.Config) *tls.Config {
	var tc *tls.Config
	if c == nil {
		tc = &tls.Config{}
	} else {
		tc = c.Clone()
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	tc.NextProtos = []string{"http/1.1"}
	return tc
}

// UpstreamTLSFiles is what Config.UpstreamTLS, TLS to the instances
// tagged "https", is made from (Load). Every setting is optional; each
// remembers where it came from (a flag, or a config file's field) so an
// error names it.
type UpstreamTLSFiles struct {
	CA, Cert, Key, ServerName TLSSetting
}

// TLSSetting is one upstream TLS setting and the flag or file field that
// gave it.
type TLSSetting struct{ Value, From string }

// Set sets the value and where it came from.
func (s *TLSSetting) Set(value, from string) { s.Value, s.From = value, from }

func (s TLSSetting) String() string { return fmt.Sprintf("%s %q", s.From, s.Value) }

// Load reads the upstream TLS files and returns Config.UpstreamTLS (nil
// when nothing is set) and the client certificate's reloader (nil without
// one; Reload it to pick up new files). Errors name the flag or config
// field and the file.
func (u *UpstreamTLSFiles) Load() (*tls.Config, *certreload.Reloader, error) {
	if u.CA.Value == "" && u.Cert.Value == "" && u.ServerName.Value == "" {
		return nil, nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.ServerName.Value}
	if u.CA.Value != "" {
		pem, err := os.ReadFile(u.CA.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("invalid %v: %w", u.CA, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("invalid %v: no PEM certificate in it", u.CA)
		}
	}
	var cr *certreload.Reloader
	if u.Cert.Value != "" {
		var err error
		if cr, err = certreload.New(u.Cert.Value, u.Key.Value); err != nil {
			return nil, nil, fmt.Errorf("invalid upstream TLS client certificate (%s, %s): %w", u.Cert.From, u.Key.From, err)
		}
		// Asked for at each handshake, so a reload applies to new connections.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cr.GetCertificate(nil)
		}
	}
	return tc, cr, nil
}

// Validate checks the settings go together; Load reads the files.
func (u *UpstreamTLSFiles) Validate() error {
	if (u.Cert.Value == "") != (u.Key.Value == "") {
		given, missing := u.Cert, "--upstream-tls-key (key_file in upstream_tls)"
		if u.Cert.Value == "" {
			given, missing = u.Key, "--upstream-tls-cert (cert_file in upstream_tls)"
		}
		return fmt.Errorf("upstream TLS client certificate: %v given without %s: they go together", given, missing)
	}
	if n := u.ServerName.Value; n != "" && !validServerName(n) {
		return fmt.Errorf("invalid %v: want a DNS name or an IP address, without port", u.ServerName)
	}
	return nil
}

// validServerName reports whether n can be a certificate's DNS name or IP
// address.
func validServerName(n string) bool {
	if _, err := netip.ParseAddr(n); err == nil {
		return true
	}
	n = strings.TrimSuffix(n, ".") // a fully qualified name
	if len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
