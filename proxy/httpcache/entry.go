package httpcache

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Entry is one stored response. It is never changed once stored: a 304
// builds a new Entry (Updated) that shares the body.
type Entry struct {
	Status int
	Header http.Header // end-to-end fields only
	Body   []byte

	// RequestTime and ResponseTime are when the request that got this
	// response was sent and when its answer arrived (RFC 9111 section
	// 4.2.3).
	RequestTime  time.Time
	ResponseTime time.Time

	cc        Directives
	lifetime  time.Duration
	heuristic bool
	ageValue  time.Duration
	date      time.Time // the Date field, or ResponseTime when absent or invalid

	varyNames []string      // canonical names of the selecting fields
	varyKey   string        // the request's values of those fields, normalized
	surrogate time.Duration // Surrogate-Control max-age; absent when none
	size      int           // weight in the store
	clen      []string      // the body's length, as a field value
	wire      []byte        // a stored 200's wire head (wire.go), built by Store
	wireDate  bool          // wire holds a Date field
}

// NewEntry makes an Entry of a response to req, received at resTime for a
// request sent at reqTime. header must be the response's own copy: the
// fields a qualified no-cache or private names are dropped from it.
func NewEntry(reqHeader http.Header, status int, header http.Header, body []byte, reqTime, resTime time.Time) *Entry {
	cc := ParseCacheControl(header["Cache-Control"])
	surrogate := absent
	if sc, ok := Surrogate(header); ok {
		surrogate = sc.MaxAge
	}
	delete(header, "Surrogate-Control") // for us, not for the clients
	for _, f := range cc.NoCacheFields {
		delete(header, f)
	}
	for _, f := range cc.PrivateFields {
		delete(header, f)
	}
	e := &Entry{Status: status, Header: header, Body: body, RequestTime: reqTime, ResponseTime: resTime, surrogate: surrogate}
	e.varyNames, _ = VaryNames(header)
	e.varyKey = VaryKey(e.varyNames, reqHeader)
	e.init()
	return e
}

func (e *Entry) init() {
	e.cc = ParseCacheControl(e.Header["Cache-Control"])
	e.date = e.ResponseTime
	if v := e.Header["Date"]; len(v) > 0 {
		if t, err := http.ParseTime(v[0]); err == nil {
			e.date = t
		}
	}
	e.ageValue = 0
	if v, ok := e.Header["Age"]; ok {
		// An Age that is not one non-negative integer makes the response
		// stale (draft-ietf-httpbis-cache-bis; RFC 9111 section 5.1 said
		// to use the first member or ignore it): the safe reading.
		if d, valid := parseAge(v); valid {
			e.ageValue = d
		} else {
			e.ageValue = maxDelta
		}
	}
	e.lifetime, e.heuristic = FreshnessLifetime(e.Status, e.Header, &e.cc, e.date)
	if e.surrogate != absent {
		// Surrogate-Control speaks to surrogates over Cache-Control.
		e.lifetime, e.heuristic = e.surrogate, false
		e.cc.NoCache = false
	}
	e.size = len(e.Body) + 256
	e.clen = []string{strconv.Itoa(len(e.Body))}
	for k, vv := range e.Header {
		e.size += len(k) + 16
		for _, v := range vv {
			e.size += len(v) + 16
		}
	}
}

// parseAge parses the Age field lines: valid only as one line holding
// one delta-seconds.
func parseAge(v []string) (time.Duration, bool) {
	if len(v) != 1 {
		return 0, false
	}
	s := strings.TrimSpace(v[0])
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	return parseDelta(s), true
}

// Directives returns the stored response's Cache-Control.
func (e *Entry) Directives() Directives { return e.cc }

// Lifetime returns the freshness lifetime and whether it is heuristic.
func (e *Entry) Lifetime() (time.Duration, bool) { return e.lifetime, e.heuristic }

// Size is the entry's weight in the store: the body plus an estimate of
// the fields and bookkeeping.
func (e *Entry) Size() int { return e.size }

// Age is the current_age of RFC 9111 section 4.2.3 at now.
func (e *Entry) Age(now time.Time) time.Duration {
	apparent := max(0, e.ResponseTime.Sub(e.date))
	delay := max(0, e.ResponseTime.Sub(e.RequestTime))
	initial := max(apparent, e.ageValue+delay)
	return initial + max(0, now.Sub(e.ResponseTime))
}

// TTL is the remaining freshness at now (negative when stale), in step
// with the Age field: the lifetime minus the age in whole seconds.
func (e *Entry) TTL(now time.Time) time.Duration {
	return e.lifetime - e.Age(now).Truncate(time.Second)
}

// AgeHeader formats age for the Age field: whole seconds.
func AgeHeader(age time.Duration) string {
	return strconv.FormatInt(int64(age/time.Second), 10)
}

// FreshnessLifetime computes a response's freshness lifetime for a shared
// cache (RFC 9111 section 4.2.1): s-maxage, else max-age, else Expires
// minus Date (an invalid Expires meaning already expired), else a
// heuristic (section 4.2.2) only for a status that is heuristically
// cacheable or a response marked public: 10 % of the time since
// Last-Modified, at most a day. date is the Date field's value.
func FreshnessLifetime(status int, h http.Header, cc *Directives, date time.Time) (time.Duration, bool) {
	switch {
	case cc.SMaxAge != absent:
		return cc.SMaxAge, false
	case cc.MaxAge != absent:
		return cc.MaxAge, false
	}
	if v, ok := h["Expires"]; ok {
		if len(v) == 0 {
			return 0, false
		}
		t, err := http.ParseTime(v[0])
		if err != nil {
			return 0, false
		}
		return max(0, t.Sub(date)), false
	}
	if !HeuristicallyCacheable(status) && !cc.Public {
		return 0, false
	}
	if v := h["Last-Modified"]; len(v) > 0 {
		if lm, err := http.ParseTime(v[0]); err == nil && lm.Before(date) {
			return min(date.Sub(lm)/10, 24*time.Hour), true
		}
	}
	return 0, false
}

// HeuristicallyCacheable reports whether RFC 9110 section 15.1 lets a
// cache compute a heuristic freshness for status.
func HeuristicallyCacheable(status int) bool {
	switch status {
	case 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// understood reports whether the cache knows status's semantics well
// enough to store it (RFC 9111 section 3: the final statuses of RFC 9110
// it can serve whole; 206 and 304 are never stored).
func understood(status int) bool {
	switch status {
	case 200, 203, 204, 300, 301, 302, 303, 307, 308,
		400, 403, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// Storable reports whether a shared cache may store the response to a GET
// (RFC 9111 section 3) and, when not, why.
func Storable(method string, reqHeader http.Header, reqCC *Directives, status int, resHeader http.Header, resCC *Directives) (bool, string) {
	if method != http.MethodGet {
		return false, "method"
	}
	if status < 200 || status == 206 || status == 304 {
		return false, "status"
	}
	if resCC.MustUnderstand && !understood(status) {
		return false, "status"
	}
	if sc, ok := Surrogate(resHeader); ok {
		// Surrogate-Control, meant for caches like this one, takes
		// precedence over Cache-Control.
		if sc.NoStore {
			return false, "no-store"
		}
		if _, ok := reqHeader["Authorization"]; ok && !resCC.allowsAuthorized() {
			return false, "authorization"
		}
		if _, star := VaryNames(resHeader); star {
			return false, "vary"
		}
		if len(resHeader["Trailer"]) > 0 {
			return false, "trailers"
		}
		return true, ""
	}
	if resCC.NoStore && !(resCC.MustUnderstand && understood(status)) {
		return false, "no-store"
	}
	if reqCC.NoStore {
		return false, "no-store"
	}
	if resCC.Private {
		return false, "private"
	}
	if _, ok := reqHeader["Authorization"]; ok && !resCC.allowsAuthorized() {
		return false, "authorization"
	}
	if _, star := VaryNames(resHeader); star {
		return false, "vary"
	}
	if len(resHeader["Trailer"]) > 0 {
		return false, "trailers"
	}
	if resCC.Public || explicitFreshness(resHeader, resCC) || HeuristicallyCacheable(status) {
		return true, ""
	}
	return false, "not cacheable"
}

// explicitFreshness reports whether the response carries max-age,
// s-maxage or Expires.
func explicitFreshness(h http.Header, cc *Directives) bool {
	_, expires := h["Expires"]
	return cc.MaxAge != absent || cc.SMaxAge != absent || expires
}

// VaryNames returns the canonical field names the Vary field lists, and
// whether it lists "*".
func VaryNames(h http.Header) (names []string, star bool) {
	for _, line := range h["Vary"] {
		for f := range strings.SplitSeq(line, ",") {
			f = strings.TrimSpace(f)
			switch f {
			case "":
				continue
			case "*":
				star = true
				continue
			}
			names = append(names, http.CanonicalHeaderKey(f))
		}
	}
	return names, star
}

// VaryKey is the request's selection for names: each field's lines joined
// with ", ", whitespace around commas normalized, so that a request with
// the same values selects the same variant (RFC 9111 section 4.1). A field
// that is absent differs from one that is empty. Accept-Language is
// compared without case (language tags are case-insensitive, RFC 5646
// section 2.1.1) but in order: among equal weights the order is what an
// app picks by (Tornado's get_browser_locale does), so "en, de" and
// "de, en" stay two variants.
func VaryKey(names []string, h http.Header) string {
	if len(names) == 0 {
		return ""
	}
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		vv, ok := h[n]
		if !ok {
			b.WriteString("\x01")
			continue
		}
		b.WriteByte(':')
		for i, v := range vv {
			if i > 0 {
				b.WriteByte(',')
			}
			for j, part := range strings.Split(v, ",") {
				if j > 0 {
					b.WriteByte(',')
				}
				part = strings.Join(strings.Fields(part), " ")
				if n == "Accept-Language" {
					part = strings.ToLower(part)
				}
				b.WriteString(part)
			}
		}
		b.WriteByte('\x00')
	}
	return b.String()
}

// Validators returns the stored ETag and Last-Modified ("" when absent),
// for a conditional request (RFC 9111 section 4.3.1).
func (e *Entry) Validators() (etag, lastModified string) {
	if v := e.Header["Etag"]; len(v) > 0 {
		etag = v[0]
	}
	if v := e.Header["Last-Modified"]; len(v) > 0 {
		lastModified = v[0]
	}
	return etag, lastModified
}

// Matches304 reports whether a 304 with header h selects this entry
// (RFC 9111 section 4.3.4): its strong ETag equals ours, or, lacking an
// ETag, its Last-Modified does not contradict ours.
func (e *Entry) Matches304(h http.Header) bool {
	etag, lm := e.Validators()
	if v := h["Etag"]; len(v) > 0 {
		return etag != "" && strings.TrimPrefix(v[0], "W/") == strings.TrimPrefix(etag, "W/")
	}
	if v := h["Last-Modified"]; len(v) > 0 && lm != "" {
		return v[0] == lm
	}
	return true
}

// Updated returns a copy of e with the fields of the 304 response h
// merged in (RFC 9111 section 3.2): every field replaces the stored one,
// except Content-Length and the framing fields; the times become the
// validation's.
func (e *Entry) Updated(h http.Header, reqTime, resTime time.Time) *Entry {
	n := *e
	n.wire, n.wireDate = nil, false
	n.Header = e.Header.Clone()
	for k, vv := range h {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Content-Range", "Trailer",
			"Content-Encoding", "Content-Md5", "Etag":
			// Framing, and what describes the stored body, stays
			// (draft-ietf-httpbis-cache-bis section 3.2).
			continue
		}
		n.Header[k] = vv
	}
	if _, ok := h["Age"]; !ok {
		delete(n.Header, "Age")
	}
	if sc, ok := Surrogate(h); ok && sc.MaxAge != absent {
		n.surrogate = sc.MaxAge
	}
	delete(n.Header, "Surrogate-Control")
	n.RequestTime, n.ResponseTime = reqTime, resTime
	n.init()
	return &n
}

// SetBody sets the body of an entry made before its body arrived. Call it
// before Store, never after.
func (e *Entry) SetBody(b []byte) {
	e.Body = b
	e.size += len(b)
	e.clen = []string{strconv.Itoa(len(b))}
}

// ContentLength is the body's length as a Content-Length field value; the
// caller must not change it.
func (e *Entry) ContentLength() []string {
	if e.clen == nil {
		return []string{strconv.Itoa(len(e.Body))}
	}
	return e.clen
}
