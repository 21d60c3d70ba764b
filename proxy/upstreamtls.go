package proxy

import (
	"crypto/tls"

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
