// Package httpcache is the HTTP semantics of meshlb's shared cache (RFC 9111,
// RFC 5861, RFC 9211) and the size-bounded store it keeps responses in.
//
// The rules are pure functions over header fields and times, so they can be
// tested without a network: which responses may be stored, how long they
// stay fresh, whether a stored response may answer a request, how a 304
// updates it and which URLs an unsafe method invalidates. The package does
// not forward requests or write responses: the proxy does, and asks the
// package at two points (before forwarding, after the answer).
package httpcache

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// absent marks a delta-seconds directive that is not present.
const absent = time.Duration(-1)

// maxDelta is what a delta-seconds too large to represent becomes
// (RFC 9111 section 1.2.2: 2^31 seconds).
const maxDelta = time.Duration(math.MaxInt32+1) * time.Second

// Directives is a parsed Cache-Control field, of a request or a response.
// Delta-seconds directives are -1 when absent.
type Directives struct {
	NoStore         bool
	NoCache         bool // unqualified: reuse only after validation
	Private         bool // unqualified: a shared cache must not store
	Public          bool
	MustRevalidate  bool
	ProxyRevalidate bool
	MustUnderstand  bool
	OnlyIfCached    bool
	MaxStaleAny     bool // max-stale without a value: any staleness

	MaxAge               time.Duration
	SMaxAge              time.Duration
	MaxStale             time.Duration
	MinFresh             time.Duration
	StaleWhileRevalidate time.Duration
	StaleIfError         time.Duration

	// NoCacheFields and PrivateFields are the field names of qualified
	// no-cache="..." and private="...": the response may be stored and
	// reused without them (RFC 9111 sections 5.2.2.4, 5.2.2.7).
	NoCacheFields []string
	PrivateFields []string
}

// ParseCacheControl parses the Cache-Control field lines vals. Unknown
// directives are ignored. When a delta-seconds directive repeats, the first
// occurrence counts (RFC 9111 section 4.2.1); an invalid value makes it 0,
// which errs on the side of staleness.
func ParseCacheControl(vals []string) Directives {
	d := Directives{MaxAge: absent, SMaxAge: absent, MaxStale: absent, MinFresh: absent,
		StaleWhileRevalidate: absent, StaleIfError: absent}
	for _, line := range vals {
		for line != "" {
			var name, val string
			name, val, line = nextDirective(line)
			if name == "" {
				continue
			}
			switch strings.ToLower(name) {
			case "no-store":
				d.NoStore = true
			case "no-cache":
				if val == "" {
					d.NoCache = true
				} else {
					d.NoCacheFields = appendFields(d.NoCacheFields, val)
				}
			case "private":
				if val == "" {
					d.Private = true
				} else {
					d.PrivateFields = appendFields(d.PrivateFields, val)
				}
			case "public":
				d.Public = true
			case "must-revalidate":
				d.MustRevalidate = true
			case "proxy-revalidate":
				d.ProxyRevalidate = true
			case "must-understand":
				d.MustUnderstand = true
			case "only-if-cached":
				d.OnlyIfCached = true
			case "max-age":
				setDelta(&d.MaxAge, val)
			case "s-maxage":
				setDelta(&d.SMaxAge, val)
			case "max-stale":
				if val == "" {
					d.MaxStaleAny = true
				} else {
					setDelta(&d.MaxStale, val)
				}
			case "min-fresh":
				setDelta(&d.MinFresh, val)
			case "stale-while-revalidate":
				setDelta(&d.StaleWhileRevalidate, val)
			case "stale-if-error":
				setDelta(&d.StaleIfError, val)
			}
		}
	}
	return d
}

// nextDirective splits the first directive off s: its name, its value
// (unquoted) and the rest after the next comma outside a quoted string.
func nextDirective(s string) (name, val, rest string) {
	i := 0
	for i < len(s) && s[i] != ',' && s[i] != '=' {
		i++
	}
	name = strings.TrimSpace(s[:i])
	if i == len(s) {
		return name, "", ""
	}
	if s[i] == ',' {
		return name, "", s[i+1:]
	}
	s = strings.TrimLeft(s[i+1:], " \t")
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		j := 1
		for ; j < len(s) && s[j] != '"'; j++ {
			if s[j] == '\\' && j+1 < len(s) {
				j++
			}
			b.WriteByte(s[j])
		}
		rest = s[min(j+1, len(s)):]
		if k := strings.IndexByte(rest, ','); k >= 0 {
			rest = rest[k+1:]
		} else {
			rest = ""
		}
		return name, b.String(), rest
	}
	if k := strings.IndexByte(s, ','); k >= 0 {
		return name, strings.TrimSpace(s[:k]), s[k+1:]
	}
	return name, strings.TrimSpace(s), ""
}

// appendFields adds the canonical field names of a qualified directive's
// value ("Set-Cookie, X-Foo").
func appendFields(dst []string, v string) []string {
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			dst = append(dst, http.CanonicalHeaderKey(f))
		}
	}
	return dst
}

// setDelta stores a delta-seconds value into *d unless one was seen already.
func setDelta(d *time.Duration, v string) {
	if *d != absent {
		return
	}
	*d = parseDelta(v)
}

// parseDelta parses delta-seconds (RFC 9111 section 1.2.2): digits only;
// too large saturates at 2^31 s; anything else is 0.
func parseDelta(v string) time.Duration {
	if v == "" {
		return 0
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > math.MaxInt32 {
		return maxDelta
	}
	return time.Duration(n) * time.Second
}

// hasDirective reports whether d names any of the directives that let a
// shared cache store a response to a request carrying Authorization
// (RFC 9111 section 3.5).
func (d *Directives) allowsAuthorized() bool {
	return d.Public || d.SMaxAge != absent || d.MustRevalidate
}

// noStaleServing reports whether the response forbids serving it stale
// (RFC 9111 section 4.2.4): must-revalidate, proxy-revalidate, s-maxage
// (which implies proxy-revalidate) or no-cache.
func (d *Directives) noStaleServing() bool {
	return d.MustRevalidate || d.ProxyRevalidate || d.SMaxAge != absent || d.NoCache
}

// SurrogateTarget is the device token that Surrogate-Control directives
// targeted at meshlb carry ("max-age=60;meshlb").
const SurrogateTarget = "meshlb"

// Surrogate parses a response's Surrogate-Control field (W3C Edge
// Architecture): its untargeted directives and those targeted at
// SurrogateTarget. ok is false when the field is absent or names no
// directive for us. Only max-age and no-store matter to the cache.
func Surrogate(h http.Header) (d Directives, ok bool) {
	vals := h["Surrogate-Control"]
	if len(vals) == 0 {
		return Directives{}, false
	}
	var mine []string
	for _, line := range vals {
		for m := range strings.SplitSeq(line, ",") {
			m = strings.TrimSpace(m)
			if name, target, targeted := strings.Cut(m, ";"); targeted {
				if !strings.EqualFold(strings.TrimSpace(target), SurrogateTarget) {
					continue
				}
				m = name
			}
			if m != "" {
				mine = append(mine, m)
			}
		}
	}
	if len(mine) == 0 {
		return Directives{}, false
	}
	d = ParseCacheControl(mine)
	return d, d.MaxAge != absent || d.NoStore
}

// RequestDirectives parses a request's Cache-Control. Pragma is not
// consulted: RFC 9111 deprecates it.
func RequestDirectives(h http.Header) Directives {
	return ParseCacheControl(h["Cache-Control"])
}
