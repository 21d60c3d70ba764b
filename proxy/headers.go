package proxy

import (
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// hopHeaders are the hop-by-hop headers (RFC 9110 section 7.6.1, plus the
// historical ones of RFC 2616) a proxy must not forward, in canonical form.
var hopHeaders = [...]string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// removeHopByHop deletes the hop-by-hop headers from h, including those
// named in its Connection header.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			tok = textproto.TrimString(tok)
			// The usual tokens are not headers or are deleted below
			// anyway: skip them to spare canonicalizing.
			if tok == "" || strings.EqualFold(tok, "close") ||
				strings.EqualFold(tok, "keep-alive") || strings.EqualFold(tok, "upgrade") {
				continue
			}
			delete(h, textproto.CanonicalMIMEHeaderKey(tok))
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// hasToken reports whether the comma-separated header values contain token,
// compared case-insensitively.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(textproto.TrimString(tok), token) {
				return true
			}
		}
	}
	return false
}

// upgradeType returns the protocol a request or response asks to switch to
// ("websocket"), or "" when it does not ask for an upgrade.
func upgradeType(h http.Header) string {
	if !hasToken(h["Connection"], "upgrade") {
		return ""
	}
	if v := h["Upgrade"]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// validUpgrade reports whether an upgrade protocol is printable ASCII.
func validUpgrade(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// valueArena hands out one-element header value slices cut from a single
// backing array: the handful of headers the proxy sets cost one allocation.
type valueArena []string

func (a *valueArena) set(h http.Header, key, value string) {
	*a = append(*a, value)
	n := len(*a)
	h[key] = (*a)[n-1 : n : n]
}

// prepareHeaders turns the client's request headers into the upstream's, in
// place (the proxy is the last handler to look at them): hop-by-hop headers
// go, an upgrade is carried on, and the forwarding headers are set. Host is
// left as the client sent it.
func (p *Proxy) prepareHeaders(r *http.Request, upgrade string) {
	h := r.Header
	teTrailers := hasToken(h["Te"], "trailers")
	removeHopByHop(h)

	arena := make(valueArena, 0, 8)
	if teTrailers {
		// Tell the upstream the client takes trailers (gRPC-style services
		// care); the proxy forwards them.
		arena.set(h, "Te", "trailers")
	}
	if upgrade != "" {
		arena.set(h, "Connection", "Upgrade")
		arena.set(h, "Upgrade", upgrade)
	}
	if _, ok := h["User-Agent"]; !ok {
		// An empty value keeps Go's own User-Agent off the request.
		arena.set(h, "User-Agent", "")
	}

	ip, addr, trusted := p.peer(r.RemoteAddr)
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	xff := ip
	if prior := h["X-Forwarded-For"]; trusted && len(prior) > 0 {
		xff = strings.Join(prior, ", ") + ", " + ip
	}
	if xff != "" {
		arena.set(h, "X-Forwarded-For", xff)
	} else {
		delete(h, "X-Forwarded-For")
	}
	if _, ok := h["X-Forwarded-Proto"]; !trusted || !ok {
		arena.set(h, "X-Forwarded-Proto", proto)
	}
	if _, ok := h["X-Forwarded-Host"]; !trusted || !ok {
		if r.Host != "" {
			arena.set(h, "X-Forwarded-Host", r.Host)
		} else {
			delete(h, "X-Forwarded-Host")
		}
	}
	fwd := forwardedElement(ip, addr, r.Host, proto)
	if prior := h["Forwarded"]; trusted && len(prior) > 0 {
		fwd = strings.Join(prior, ", ") + ", " + fwd
	}
	arena.set(h, "Forwarded", fwd)
}

// peer returns the client's IP as written in remoteAddr, parsed, and whether
// it is a trusted proxy. ip is "" when remoteAddr is not an IP:port.
func (p *Proxy) peer(remoteAddr string) (ip string, addr netip.Addr, trusted bool) {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return "", netip.Addr{}, false
	}
	addr = ap.Addr()
	// Cut the IP out of remoteAddr rather than format it again.
	ip = remoteAddr[:strings.LastIndexByte(remoteAddr, ':')]
	if len(ip) > 1 && ip[0] == '[' {
		ip = ip[1 : len(ip)-1]
	}
	bare := addr.WithZone("").Unmap()
	for _, pfx := range p.cfg.TrustedProxies {
		if pfx.Contains(bare) {
			return ip, addr, true
		}
	}
	return ip, addr, false
}

// forwardedElement builds this hop's RFC 7239 Forwarded element.
func forwardedElement(ip string, addr netip.Addr, host, proto string) string {
	var b strings.Builder
	b.Grow(len(ip) + len(host) + len(proto) + 28)
	b.WriteString("for=")
	switch {
	case ip == "":
		b.WriteString("unknown")
	case addr.Is6() && !addr.Is4In6():
		// An IPv6 node is quoted and bracketed (RFC 7239 section 6).
		b.WriteString(`"[`)
		b.WriteString(ip)
		b.WriteString(`]"`)
	case addr.Is4In6():
		b.WriteString(addr.Unmap().String())
	default:
		b.WriteString(ip)
	}
	if host != "" {
		b.WriteString(";host=")
		writeForwardedValue(&b, host)
	}
	b.WriteString(";proto=")
	b.WriteString(proto)
	return b.String()
}

// writeForwardedValue writes v as an RFC 7239 value: a token when it is
// one, else a quoted string.
func writeForwardedValue(b *strings.Builder, v string) {
	if isToken(v) {
		b.WriteString(v)
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
}

// isToken reports whether s is a non-empty RFC 9110 token, which is what a
// header field name or a cookie name must be.
func isToken(s string) bool { return httpguts.ValidHeaderFieldName(s) }
