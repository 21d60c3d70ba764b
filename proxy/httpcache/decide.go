package httpcache

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Verdict is what to do with a stored response for a request.
type Verdict uint8

const (
	// Fresh: serve it.
	Fresh Verdict = iota
	// Stale: serve it stale, the client allowed it (max-stale).
	Stale
	// StaleRevalidate: serve it stale and revalidate in the background
	// (stale-while-revalidate).
	StaleRevalidate
	// Validate: forward, conditionally when the entry has validators.
	Validate
)

// Decide says whether e may answer a request with directives req at now
// (RFC 9111 section 4.2, 5.2.1; RFC 5861 section 3). reason is the
// Cache-Status fwd value when the verdict is Validate: "request" when the
// client's directives caused it, "stale" otherwise.
func Decide(e *Entry, req *Directives, now time.Time) (v Verdict, reason string) {
	if req.NoCache {
		return Validate, "request"
	}
	if e.cc.NoCache {
		return Validate, "stale"
	}
	age := e.Age(now)
	if req.MaxAge != absent && age > req.MaxAge {
		return Validate, "request"
	}
	left := e.lifetime - age
	if left > 0 {
		if req.MinFresh != absent && left < req.MinFresh {
			return Validate, "request"
		}
		return Fresh, ""
	}
	if e.cc.noStaleServing() {
		return Validate, "stale"
	}
	stale := -left
	if req.MaxStaleAny || (req.MaxStale != absent && stale <= req.MaxStale) {
		if req.MinFresh != absent {
			return Validate, "request"
		}
		return Stale, ""
	}
	if e.cc.StaleWhileRevalidate != absent && stale <= e.cc.StaleWhileRevalidate {
		return StaleRevalidate, ""
	}
	return Validate, "stale"
}

// StaleIfError reports whether e may be served stale at now in place of
// an error answer (RFC 5861 section 4): the response's stale-if-error
// covers its staleness, or the request's does.
func StaleIfError(e *Entry, req *Directives, now time.Time) bool {
	if e.cc.noStaleServing() {
		return false
	}
	stale := e.Age(now) - e.lifetime
	return (e.cc.StaleIfError != absent && stale <= e.cc.StaleIfError) ||
		(req.StaleIfError != absent && stale <= req.StaleIfError)
}

// Disconnected reports whether e may be served stale because no instance
// of the origin can be reached (RFC 9111 section 4.2.4: a disconnected
// cache may, unless the response forbids it).
func Disconnected(e *Entry) bool {
	return !e.cc.noStaleServing()
}

// ErrorStatus reports whether status is an error stale-if-error covers:
// 500, 502, 503 and 504.
func ErrorStatus(status int) bool {
	switch status {
	case 500, 502, 503, 504:
		return true
	}
	return false
}

// Invalidates reports whether a response to method with status
// invalidates stored responses (RFC 9111 section 4.4): an unsafe method
// answered with a non-error status.
func Invalidates(method string, status int) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return status >= 200 && status < 400
}

// InvalidationTargets lists the request-targets (path and query) on host
// that a response with header h invalidates besides the request's own: the
// Location and Content-Location URLs that resolve to the same host
// (RFC 9111 section 4.4). base is the request's URL.
func InvalidationTargets(base *url.URL, host string, h http.Header) []string {
	var out []string
	for _, f := range []string{"Location", "Content-Location"} {
		v := h[f]
		if len(v) == 0 {
			continue
		}
		u, err := base.Parse(v[0])
		if err != nil {
			continue
		}
		if u.Host != "" && !strings.EqualFold(stripPort(u.Host), stripPort(host)) {
			continue
		}
		out = append(out, u.RequestURI())
	}
	return out
}

// stripPort drops a ":port" from a host.
func stripPort(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}

// Status is a Cache-Status field value (RFC 9211) for one response.
type Status struct {
	Hit       bool
	Fwd       string // "", "uri-miss", "vary-miss", "miss", "request", "stale", "method", "bypass"
	FwdStatus int    // the status the forward got, when it differs from the one sent
	Stored    bool
	Collapsed bool
	TTL       time.Duration
	HasTTL    bool
	Detail    string
}

// Name is the cache's name in Cache-Status.
const Name = "meshlb"

// String formats s as a Cache-Status list member.
func (s Status) String() string {
	return string(s.Append(make([]byte, 0, 64)))
}

// Append appends s, formatted as a Cache-Status list member, to b.
func (s Status) Append(b []byte) []byte {
	b = append(b, Name...)
	if s.Hit {
		b = append(b, "; hit"...)
	}
	if s.Fwd != "" {
		b = append(b, "; fwd="...)
		b = append(b, s.Fwd...)
	}
	if s.FwdStatus != 0 {
		b = append(b, "; fwd-status="...)
		b = strconv.AppendInt(b, int64(s.FwdStatus), 10)
	}
	if s.Stored {
		b = append(b, "; stored"...)
	}
	if s.Collapsed {
		b = append(b, "; collapsed"...)
	}
	if s.HasTTL {
		b = append(b, "; ttl="...)
		b = strconv.AppendInt(b, int64(s.TTL/time.Second), 10)
	}
	if s.Detail != "" {
		b = append(b, "; detail="...)
		b = append(b, s.Detail...)
	}
	return b
}
