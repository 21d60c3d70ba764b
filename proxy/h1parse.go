package proxy

// The HTTP/1 head parsing shared by the event loop (request heads) and
// h1Client (response heads): one field loop, one set of rules for what is
// clean enough to parse without net/http's reader.

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

var crlfcrlf = []byte("\r\n\r\n")

// reqHead is what parseRequestHead fills: the request, its URL, its
// header map and the backing array of the header values, in one
// allocation.
type reqHead struct {
	req  http.Request
	url  url.URL
	h    http.Header
	vals [16]string
}

// parseRequestHead builds the request from its raw head (up to and with the
// blank line) when it is one the event loop serves itself: GET or HEAD over
// HTTP/1.1, with no body, no upgrade, no Expect, a clean head (see
// cleanHead) and one valid Host. ok is false for anything else, which
// net/http (behind httpguard) then serves or refuses exactly as it would
// alone.
func parseRequestHead(raw []byte, remote string) (r *http.Request, ok bool) {
	if !cleanHead(raw) {
		return nil, false
	}
	// One allocation holds every name and value.
	return parseRequestHeadInto(string(raw[:len(raw)-2]), remote, new(reqHead))
}

// parseRequestHeadInto is parseRequestHead on a head cleanHead vouched
// for, as a string without its last CRLF (names and values are cut from
// it), parsed into rh, whose header map is reused when it has one.
func parseRequestHeadInto(head, remote string, rh *reqHead) (r *http.Request, ok bool) {
	eol := strings.IndexByte(head, '\n')
	line := head[:eol-1]
	var method string
	switch {
	case strings.HasPrefix(line, "GET "):
		method, line = http.MethodGet, line[4:]
	case strings.HasPrefix(line, "HEAD "):
		method, line = http.MethodHead, line[5:]
	default:
		return nil, false
	}
	target, ok := strings.CutSuffix(line, " HTTP/1.1")
	if !ok || target == "" || target[0] != '/' || strings.IndexByte(target, ' ') >= 0 {
		return nil, false
	}
	s := head[eol+1:] // the fields, each ending with CRLF
	n := strings.Count(s, "\r\n")
	h := rh.h
	if h == nil {
		h = make(http.Header, n)
		rh.h = h
	} else {
		clear(h)
	}
	var vals []string
	if n <= len(rh.vals) {
		vals = rh.vals[:n] // the values' backing, as net/http does
	} else {
		vals = make([]string, n)
	}
	var host string
	hosts := 0
	closeConn := false
	for s != "" {
		key, v, rest, ok := nextField(s)
		if !ok {
			return nil, false
		}
		s = rest
		switch key {
		case "Host":
			host = v
			hosts++
			continue // net/http keeps it in Request.Host only
		case "Content-Length":
			if v != "0" {
				return nil, false
			}
		case "Transfer-Encoding", "Upgrade", "Expect", "Http2-Settings":
			return nil, false
		case "Connection":
			if hasToken([]string{v}, "upgrade") {
				return nil, false
			}
			if hasToken([]string{v}, "close") {
				closeConn = true
			}
		case "Content-Type":
			if strings.HasPrefix(v, "application/grpc") {
				return nil, false
			}
		}
		vals = addValue(h, vals, key, v)
	}
	if hosts != 1 || !validHost(host) {
		return nil, false
	}
	u, err := parseTarget(target, &rh.url)
	if err != nil {
		return nil, false
	}
	r = &rh.req
	*r = http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Body:       http.NoBody,
		Host:       host,
		RemoteAddr: remote,
		RequestURI: target,
		Close:      closeConn,
	}
	return r, true
}

// nextField cuts the first field line off s, a head's fields each ending
// in CRLF (cleanHead has vouched for the bytes), and returns its canonical
// name, its trimmed value and the rest; ok is false for a line that is not
// a valid field.
func nextField(s string) (key, value, rest string, ok bool) {
	i := strings.Index(s, "\r\n")
	f, rest := s[:i], s[i+2:]
	colon := strings.IndexByte(f, ':')
	if colon <= 0 || !httpguts.ValidHeaderFieldName(f[:colon]) {
		return "", "", "", false
	}
	return textproto.CanonicalMIMEHeaderKey(f[:colon]), textproto.TrimString(f[colon+1:]), rest, true
}

// addValue appends v to h[key]. A key's first value takes its one-element
// slice from vals, a backing array for every value of the head (net/http's
// way: one allocation for all); it returns what is left of vals.
func addValue(h http.Header, vals []string, key, v string) []string {
	if vv, ok := h[key]; ok {
		h[key] = append(vv, v)
		return vals
	}
	vals[0] = v
	h[key] = vals[:1:1]
	return vals[1:]
}

// cleanHead reports whether every line of raw ends with CRLF, no CR or LF
// stands alone, no other control byte but tab appears, and no field is
// folded: the heads net/http would read the same way.
func cleanHead(raw []byte) bool {
	for i, c := range raw {
		switch {
		case c == '\r':
			if i+1 >= len(raw) || raw[i+1] != '\n' {
				return false
			}
		case c == '\n':
			if i == 0 || raw[i-1] != '\r' {
				return false
			}
			if i+1 < len(raw) && (raw[i+1] == ' ' || raw[i+1] == '\t') {
				return false // obs-fold
			}
		case c < 0x20 && c != '\t', c == 0x7f:
			return false
		}
	}
	return true
}

// parseTarget parses an origin-form request target; plain ones without
// escapes take no parser.
// u is where a plain target's URL is stored.
func parseTarget(t string, u *url.URL) (*url.URL, error) {
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case c == '?':
			if i == len(t)-1 || strings.ContainsAny(t[i+1:], "#") {
				// "/?" has ForceQuery; a fragment is net/url's to split.
				return url.ParseRequestURI(t)
			}
			*u = url.URL{Path: t[:i], RawQuery: t[i+1:]}
			return u, nil
		case !plainPath[c]:
			// Escapes and characters net/url would escape: it keeps
			// RawPath so the target goes upstream as it came.
			return url.ParseRequestURI(t)
		}
	}
	*u = url.URL{Path: t}
	return u, nil
}

// plainPath holds the bytes a path may have for url.URL{Path: p} to give
// back p itself as its EscapedPath: those net/url does not escape in a
// path.
var plainPath = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~/$&+,:;=@" {
		t[c] = true
	}
	return t
}()

// validHost reports whether h is a host[:port] made of the characters a
// Host header may hold; anything else is the fallback's to refuse.
func validHost(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~:[]!$&'()*+,;=%", c) >= 0:
		default:
			return false
		}
	}
	return true
}
