package httpcache

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseCacheControl(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want func(d Directives) bool
	}{
		{"max-age=60", func(d Directives) bool { return d.MaxAge == time.Minute && d.SMaxAge == absent }},
		{"MAX-AGE=60, s-maxage=5", func(d Directives) bool { return d.MaxAge == time.Minute && d.SMaxAge == 5*time.Second }},
		{`max-age="30"`, func(d Directives) bool { return d.MaxAge == 30*time.Second }},
		{"max-age=60, max-age=10", func(d Directives) bool { return d.MaxAge == time.Minute }}, // the first counts
		{"max-age=abc", func(d Directives) bool { return d.MaxAge == 0 }},
		{"max-age=-5", func(d Directives) bool { return d.MaxAge == 0 }},
		{"max-age=99999999999999", func(d Directives) bool { return d.MaxAge == maxDelta }},
		{`no-cache="Set-Cookie, X-Foo", private`, func(d Directives) bool {
			return !d.NoCache && d.Private && len(d.NoCacheFields) == 2 && d.NoCacheFields[1] == "X-Foo"
		}},
		{`private="set-cookie"`, func(d Directives) bool { return !d.Private && d.PrivateFields[0] == "Set-Cookie" }},
		{"public,no-store , must-revalidate", func(d Directives) bool { return d.Public && d.NoStore && d.MustRevalidate }},
		{"max-stale", func(d Directives) bool { return d.MaxStaleAny && d.MaxStale == absent }},
		{"max-stale=10, min-fresh=3, only-if-cached", func(d Directives) bool {
			return d.MaxStale == 10*time.Second && d.MinFresh == 3*time.Second && d.OnlyIfCached
		}},
		{"stale-while-revalidate=30, stale-if-error=60", func(d Directives) bool {
			return d.StaleWhileRevalidate == 30*time.Second && d.StaleIfError == time.Minute
		}},
		{"", func(d Directives) bool { return d.MaxAge == absent && !d.NoCache }},
	} {
		if d := ParseCacheControl([]string{tc.in}); !tc.want(d) {
			t.Errorf("ParseCacheControl(%q) = %+v", tc.in, d)
		}
	}
}

func TestFreshnessLifetime(t *testing.T) {
	date := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fmtT := func(t time.Time) string { return t.Format(http.TimeFormat) }
	for _, tc := range []struct {
		name      string
		status    int
		h         http.Header
		want      time.Duration
		heuristic bool
	}{
		{"s-maxage wins", 200, hdr("Cache-Control", "max-age=10, s-maxage=20"), 20 * time.Second, false},
		{"max-age over Expires", 200, hdr("Cache-Control", "max-age=10", "Expires", fmtT(date.Add(time.Hour))), 10 * time.Second, false},
		{"Expires minus Date", 200, hdr("Expires", fmtT(date.Add(time.Hour))), time.Hour, false},
		{"invalid Expires is stale", 200, hdr("Expires", "0", "Last-Modified", fmtT(date.Add(-100*time.Hour))), 0, false},
		{"heuristic 10% of age", 200, hdr("Last-Modified", fmtT(date.Add(-100*time.Minute))), 10 * time.Minute, true},
		{"heuristic capped at a day", 200, hdr("Last-Modified", fmtT(date.Add(-9000*time.Hour))), 24 * time.Hour, true},
		{"no heuristic for 302", 302, hdr("Last-Modified", fmtT(date.Add(-100*time.Minute))), 0, false},
		{"heuristic for public 302", 302, hdr("Cache-Control", "public", "Last-Modified", fmtT(date.Add(-100*time.Minute))), 10 * time.Minute, true},
		{"nothing", 200, hdr(), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := ParseCacheControl(tc.h["Cache-Control"])
			got, heur := FreshnessLifetime(tc.status, tc.h, &cc, date)
			if got != tc.want || heur != tc.heuristic {
				t.Errorf("got %v (heuristic %v), want %v (%v)", got, heur, tc.want, tc.heuristic)
			}
		})
	}
}

func TestAge(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	h := hdr("Date", now.Add(-10*time.Second).Format(http.TimeFormat), "Age", "30", "Cache-Control", "max-age=100")
	// Sent at now-2s, answered at now-1s: age = max(apparent 9s, 30s + 1s delay) + 1s resident.
	e := NewEntry(http.Header{}, 200, h, nil, now.Add(-2*time.Second), now.Add(-time.Second))
	if got := e.Age(now); got != 32*time.Second {
		t.Errorf("Age = %v, want 32s", got)
	}
	if got := e.TTL(now); got != 68*time.Second {
		t.Errorf("TTL = %v, want 68s", got)
	}
}

func TestStorable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		req    http.Header
		status int
		res    http.Header
		want   bool
	}{
		{"max-age", "GET", hdr(), 200, hdr("Cache-Control", "max-age=60"), true},
		{"POST", "POST", hdr(), 200, hdr("Cache-Control", "max-age=60"), false},
		{"no-store", "GET", hdr(), 200, hdr("Cache-Control", "max-age=60, no-store"), false},
		{"request no-store", "GET", hdr("Cache-Control", "no-store"), 200, hdr("Cache-Control", "max-age=60"), false},
		{"private", "GET", hdr(), 200, hdr("Cache-Control", "max-age=60, private"), false},
		{"authorization", "GET", hdr("Authorization", "Basic eA=="), 200, hdr("Cache-Control", "max-age=60"), false},
		{"authorization public", "GET", hdr("Authorization", "Basic eA=="), 200, hdr("Cache-Control", "max-age=60, public"), true},
		{"authorization s-maxage", "GET", hdr("Authorization", "Basic eA=="), 200, hdr("Cache-Control", "s-maxage=60"), true},
		{"authorization must-revalidate", "GET", hdr("Authorization", "Basic eA=="), 200, hdr("Cache-Control", "max-age=60, must-revalidate"), true},
		{"vary star", "GET", hdr(), 200, hdr("Cache-Control", "max-age=60", "Vary", "*"), false},
		{"heuristic 404", "GET", hdr(), 404, hdr(), true},
		{"no freshness 302", "GET", hdr(), 302, hdr(), false},
		{"302 with max-age", "GET", hdr(), 302, hdr("Cache-Control", "max-age=60"), true},
		{"206 never", "GET", hdr(), 206, hdr("Cache-Control", "max-age=60"), false},
		{"unknown status explicit", "GET", hdr(), 299, hdr("Cache-Control", "max-age=60"), true},
		{"unknown status public", "GET", hdr(), 599, hdr("Cache-Control", "public"), true},
		{"unknown status must-understand", "GET", hdr(), 299, hdr("Cache-Control", "max-age=60, must-understand"), false},
		{"must-understand overrides no-store", "GET", hdr(), 200, hdr("Cache-Control", "max-age=60, no-store, must-understand"), true},
		{"no-cache stores", "GET", hdr(), 200, hdr("Cache-Control", "no-cache", "ETag", `"a"`), true},
		{"500 not without freshness", "GET", hdr(), 500, hdr(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rq, rs := RequestDirectives(tc.req), ParseCacheControl(tc.res["Cache-Control"])
			if got, why := Storable(tc.method, tc.req, &rq, tc.status, tc.res, &rs); got != tc.want {
				t.Errorf("Storable = %v (%s), want %v", got, why, tc.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	// entry of age ageS with response Cache-Control cc.
	entry := func(cc string, ageS int) *Entry {
		at := now.Add(-time.Duration(ageS) * time.Second)
		return NewEntry(http.Header{}, 200, hdr("Cache-Control", cc, "Date", at.Format(http.TimeFormat)), nil, at, at)
	}
	for _, tc := range []struct {
		name, res, req string
		age            int
		want           Verdict
		reason         string
	}{
		{"fresh", "max-age=60", "", 10, Fresh, ""},
		{"stale", "max-age=60", "", 70, Validate, "stale"},
		{"response no-cache", "max-age=60, no-cache", "", 10, Validate, "stale"},
		{"request no-cache", "max-age=60", "no-cache", 10, Validate, "request"},
		{"request max-age", "max-age=60", "max-age=5", 10, Validate, "request"},
		{"request max-age ok", "max-age=60", "max-age=15", 10, Fresh, ""},
		{"min-fresh", "max-age=60", "min-fresh=55", 10, Validate, "request"},
		{"max-stale", "max-age=60", "max-stale=20", 70, Stale, ""},
		{"max-stale too stale", "max-age=60", "max-stale=5", 70, Validate, "stale"},
		{"max-stale any", "max-age=60", "max-stale", 7000, Stale, ""},
		{"max-stale vs must-revalidate", "max-age=60, must-revalidate", "max-stale", 70, Validate, "stale"},
		{"max-stale vs s-maxage", "s-maxage=60", "max-stale", 70, Validate, "stale"},
		{"max-stale vs proxy-revalidate", "max-age=60, proxy-revalidate", "max-stale", 70, Validate, "stale"},
		{"swr", "max-age=60, stale-while-revalidate=30", "", 70, StaleRevalidate, ""},
		{"swr expired", "max-age=60, stale-while-revalidate=5", "", 70, Validate, "stale"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := ParseCacheControl([]string{tc.req})
			v, reason := Decide(entry(tc.res, tc.age), &req, now)
			if v != tc.want || reason != tc.reason {
				t.Errorf("Decide = %v %q, want %v %q", v, reason, tc.want, tc.reason)
			}
		})
	}
	none := ParseCacheControl(nil)
	if !StaleIfError(entry("max-age=60, stale-if-error=30", 70), &none, now) {
		t.Error("stale-if-error=30 at 10s stale: want true")
	}
	if StaleIfError(entry("max-age=60, stale-if-error=5", 70), &none, now) {
		t.Error("stale-if-error=5 at 10s stale: want false")
	}
	if StaleIfError(entry("max-age=60, must-revalidate, stale-if-error=30", 70), &none, now) {
		t.Error("must-revalidate forbids stale-if-error")
	}
	if !Disconnected(entry("max-age=60", 7000)) || Disconnected(entry("max-age=60, must-revalidate", 70)) {
		t.Error("Disconnected: plain max-age may, must-revalidate may not")
	}
}

func TestVaryKey(t *testing.T) {
	names, star := VaryNames(hdr("Vary", "accept-encoding, Accept-Language", "Vary", "*"))
	if len(names) != 2 || names[0] != "Accept-Encoding" || !star {
		t.Fatalf("VaryNames = %v %v", names, star)
	}
	names = names[:1]
	a := VaryKey(names, hdr("Accept-Encoding", "gzip,  br"))
	b := VaryKey(names, hdr("Accept-Encoding", "gzip, br"))
	c := VaryKey(names, hdr("Accept-Encoding", "gzip", "Accept-Encoding", "br"))
	if a != b || a != c {
		t.Errorf("normalized selections differ: %q %q %q", a, b, c)
	}
	if VaryKey(names, hdr()) == VaryKey(names, hdr("Accept-Encoding", "")) {
		t.Error("an absent field must not match an empty one")
	}
	if VaryKey(names, hdr("Accept-Encoding", "gzip")) == a {
		t.Error("different values must differ")
	}
	lang := []string{"Accept-Language"}
	if VaryKey(lang, hdr("Accept-Language", "en-US, de;q=0.5")) != VaryKey(lang, hdr("Accept-Language", "EN-us,De;Q=0.5")) {
		t.Error("Accept-Language must be compared without case")
	}
	if VaryKey(lang, hdr("Accept-Language", "en, de")) == VaryKey(lang, hdr("Accept-Language", "de, en")) {
		t.Error("Accept-Language in another order must select another variant")
	}
	if VaryKey(names, hdr("Accept-Encoding", "GZIP")) == VaryKey(names, hdr("Accept-Encoding", "gzip")) {
		t.Error("only Accept-Language is folded")
	}
}

func TestUpdated304(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	e := NewEntry(http.Header{}, 200, hdr("Cache-Control", "max-age=1", "ETag", `"v1"`, "Content-Length", "3", "X-A", "old"),
		[]byte("abc"), t0, t0)
	if !e.Matches304(hdr("ETag", `"v1"`)) || e.Matches304(hdr("ETag", `"v2"`)) {
		t.Fatal("Matches304 by ETag")
	}
	t1 := t0.Add(time.Hour)
	var n *Entry
	n = e.Updated(hdr("Cache-Control", "max-age=100", "ETag", `"v2"`, "X-A", "new", "Content-Length", "0", "Date", t1.Format(http.TimeFormat)), t1, t1)
	if n.Header.Get("X-A") != "new" || n.Header.Get("Content-Length") != "3" || string(n.Body) != "abc" || n.Header.Get("ETag") != `"v1"` {
		t.Errorf("merged header %v body %q", n.Header, n.Body)
	}
	if n.TTL(t1) != 100*time.Second {
		t.Errorf("TTL after 304 = %v, want 100s", n.TTL(t1))
	}
	if e.Header.Get("X-A") != "old" {
		t.Error("the stored entry changed")
	}
}

func TestQualifiedFieldsAndBadAge(t *testing.T) {
	now := time.Now()
	e := NewEntry(http.Header{}, 200, hdr("Cache-Control", `max-age=60, no-cache="X-A", private="X-B"`, "X-A", "1", "X-B", "2", "X-C", "3"), nil, now, now)
	if e.Header.Get("X-A") != "" || e.Header.Get("X-B") != "" || e.Header.Get("X-C") != "3" {
		t.Errorf("stored fields %v: want X-A and X-B dropped", e.Header)
	}
	for _, age := range [][]string{{"abc"}, {"-5"}, {"1.0"}, {"0, 0"}, {"0", "0"}} {
		e := NewEntry(http.Header{}, 200, http.Header{"Cache-Control": {"max-age=3600"}, "Age": age}, nil, now, now)
		if e.TTL(now) > 0 {
			t.Errorf("Age %q: fresh, want stale", age)
		}
	}
}

func TestInvalidation(t *testing.T) {
	if Invalidates("GET", 200) || Invalidates("POST", 500) || !Invalidates("POST", 201) || !Invalidates("DELETE", 302) {
		t.Error("Invalidates: unsafe methods with 2xx/3xx only")
	}
	base, _ := url.Parse("/a/b?x=1")
	got := InvalidationTargets(base, "example.com:8070", hdr("Location", "c", "Content-Location", "http://other.example/d"))
	if len(got) != 1 || got[0] != "/a/c" {
		t.Errorf("targets = %v, want [/a/c] (the other host is not invalidated)", got)
	}
	got = InvalidationTargets(base, "example.com", hdr("Location", "http://EXAMPLE.com:80/z"))
	if len(got) != 1 || got[0] != "/z" {
		t.Errorf("targets = %v, want [/z]", got)
	}
}

func TestStatusString(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		want string
	}{
		{Status{Hit: true, TTL: 42 * time.Second, HasTTL: true}, "meshlb; hit; ttl=42"},
		{Status{Fwd: "uri-miss", Stored: true, TTL: 60 * time.Second, HasTTL: true}, "meshlb; fwd=uri-miss; stored; ttl=60"},
		{Status{Fwd: "stale", FwdStatus: 304, TTL: 60 * time.Second, HasTTL: true}, "meshlb; fwd=stale; fwd-status=304; ttl=60"},
		{Status{Fwd: "miss", Collapsed: true}, "meshlb; fwd=miss; collapsed"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestSurrogateControl(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name     string
		h        http.Header
		storable bool
		ttl      time.Duration
	}{
		{"max-age over Cache-Control", hdr("Cache-Control", "max-age=1", "Surrogate-Control", "max-age=3600"), true, time.Hour},
		{"short max-age wins", hdr("Cache-Control", "max-age=3600", "Surrogate-Control", "max-age=1"), true, time.Second},
		{"over no-store", hdr("Cache-Control", "no-store", "Surrogate-Control", "max-age=60"), true, time.Minute},
		{"no-store", hdr("Cache-Control", "max-age=60", "Surrogate-Control", "no-store"), false, 0},
		{"targeted at us", hdr("Surrogate-Control", "max-age=60;meshlb"), true, time.Minute},
		{"targeted elsewhere", hdr("Cache-Control", "max-age=5", "Surrogate-Control", "max-age=60;other"), true, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rq, rs := RequestDirectives(hdr()), ParseCacheControl(tc.h["Cache-Control"])
			if ok, _ := Storable("GET", hdr(), &rq, 200, tc.h, &rs); ok != tc.storable {
				t.Fatalf("Storable = %v", ok)
			}
			if !tc.storable {
				return
			}
			e := NewEntry(hdr(), 200, tc.h, nil, now, now)
			if e.TTL(now) != tc.ttl || e.Header.Get("Surrogate-Control") != "" {
				t.Fatalf("TTL %v (want %v), stored Surrogate-Control %q", e.TTL(now), tc.ttl, e.Header.Get("Surrogate-Control"))
			}
		})
	}
}
