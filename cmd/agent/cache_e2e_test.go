package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// cacheCluster is one Tornado instance behind an agent with --cache: every
// test asks /respond for the response it needs under its own key and reads
// the instance's request count for that key directly, so it can tell a hit
// (the count does not move) from a forward.
type cacheCluster struct {
	*cluster
	app string // the instance's address, for /hits
}

func newCacheCluster(t *testing.T, agentArgs ...string) *cacheCluster {
	c := newCluster(t, "cachesvc", 1, append([]string{"--cache", "8m"}, agentArgs...)...)
	cc := &cacheCluster{cluster: c}
	for port := range c.regs {
		cc.app = fmt.Sprintf("127.0.0.1:%d", port)
	}
	return cc
}

// respondPath is the /respond URL answering with the fields hs under key.
func respondPath(key string, extra string, hs ...string) string {
	q := url.Values{}
	for _, h := range hs {
		q.Add("h", h)
	}
	p := "/respond?key=" + url.QueryEscape(key) // first, for the prefix purge
	if len(hs) > 0 {
		p += "&" + q.Encode()
	}
	if extra != "" {
		p += "&" + extra
	}
	return p
}

// do sends a request through the agent.
func (c *cacheCluster) do(t *testing.T, method, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+c.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	res, err := c.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// upstream returns how many requests the instance saw for key.
func (c *cacheCluster) upstream(t *testing.T, key string) int {
	t.Helper()
	res, err := http.Get("http://" + c.app + "/hits?key=" + url.QueryEscape(key))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var v struct{ Hits int }
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v.Hits
}

func (c *cacheCluster) wantUpstream(t *testing.T, key string, n int) {
	t.Helper()
	if got := c.upstream(t, key); got != n {
		t.Fatalf("instance saw %d requests for %s, want %d", got, key, n)
	}
}

func wantStatus(t *testing.T, res *http.Response, prefix string) {
	t.Helper()
	if got := res.Header.Get("Cache-Status"); !strings.HasPrefix(got, prefix) {
		t.Fatalf("Cache-Status %q, want it to start with %q", got, prefix)
	}
}

// TestCacheRules runs the RFC 9111 rules through a real agent and a real
// Tornado process, checking the instance's request count each time.
func TestCacheRules(t *testing.T) {
	c := newCacheCluster(t)
	const maxAge = "Cache-Control:max-age=60"

	t.Run("fresh response is served from the cache with Age", func(t *testing.T) {
		p := respondPath("fresh", "", maxAge)
		r1, b1 := c.do(t, "GET", p)
		wantStatus(t, r1, "meshlb; fwd=uri-miss; stored")
		r2, b2 := c.do(t, "GET", p)
		wantStatus(t, r2, "meshlb; hit; ttl=")
		if b1 != b2 || r2.Header.Get("Age") == "" {
			t.Fatalf("hit body %q (first %q), Age %q", b2, b1, r2.Header.Get("Age"))
		}
		r3, b3 := c.do(t, "HEAD", p)
		wantStatus(t, r3, "meshlb; hit")
		if b3 != "" || r3.ContentLength != int64(len(b1)) {
			t.Fatalf("HEAD from the cache: body %q, Content-Length %d", b3, r3.ContentLength)
		}
		c.wantUpstream(t, "fresh", 1)
	})

	t.Run("the example's /cached answers with the same PID", func(t *testing.T) {
		_, b1 := c.do(t, "GET", "/cached?max_age=60")
		_, b2 := c.do(t, "GET", "/cached?max_age=60")
		if !pidRE.MatchString(b1) || b1 != b2 {
			t.Fatalf("bodies %q, %q: want the same PID twice", b1, b2)
		}
		c.wantUpstream(t, "/cached", 1)
	})

	for _, tc := range []struct {
		name, key string
		hs        []string
		reqHdr    []string
	}{
		{"no-store is not stored", "nostore", []string{"Cache-Control:max-age=60, no-store"}, nil},
		{"private is not stored", "private", []string{"Cache-Control:max-age=60, private"}, nil},
		{"Authorization without public is not stored", "auth", []string{maxAge}, []string{"Authorization", "Basic dTpw"}},
		{"request no-store is not stored", "reqnostore", []string{maxAge}, []string{"Cache-Control", "no-store"}},
		{"no freshness information is not stored", "nofresh", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := respondPath(tc.key, "", tc.hs...)
			c.do(t, "GET", p, tc.reqHdr...)
			r, _ := c.do(t, "GET", p, tc.reqHdr...)
			wantStatus(t, r, "meshlb; fwd=")
			c.wantUpstream(t, tc.key, 2)
		})
	}

	t.Run("Authorization with public is stored", func(t *testing.T) {
		p := respondPath("authpub", "", "Cache-Control:max-age=60, public")
		c.do(t, "GET", p, "Authorization", "Basic dTpw")
		r, _ := c.do(t, "GET", p, "Authorization", "Basic dTpw")
		wantStatus(t, r, "meshlb; hit")
		c.wantUpstream(t, "authpub", 1)
	})

	t.Run("no-cache revalidates and merges the 304", func(t *testing.T) {
		p := respondPath("nocache", "", `Cache-Control:no-cache`, `ETag:"v1"`, "X-Version:1")
		_, b1 := c.do(t, "GET", p)
		r, b2 := c.do(t, "GET", p)
		wantStatus(t, r, "meshlb; fwd=stale; fwd-status=304")
		if r.StatusCode != 200 || b1 != b2 || r.Header.Get("ETag") != `"v1"` {
			t.Fatalf("after 304: status %d body %q (want %q) ETag %q", r.StatusCode, b2, b1, r.Header.Get("ETag"))
		}
		// The client's own validator gets a 304 from the cache.
		r, _ = c.do(t, "GET", p, "If-None-Match", `"v1"`)
		if r.StatusCode != http.StatusNotModified {
			t.Fatalf("conditional request: status %d, want 304", r.StatusCode)
		}
		c.wantUpstream(t, "nocache", 3)
	})

	t.Run("Vary keeps a variant per selecting header", func(t *testing.T) {
		p := respondPath("vary", "echo=Accept-Language", maxAge, "Vary:Accept-Language")
		_, en := c.do(t, "GET", p, "Accept-Language", "en")
		_, de := c.do(t, "GET", p, "Accept-Language", "de")
		r, en2 := c.do(t, "GET", p, "Accept-Language", "en")
		wantStatus(t, r, "meshlb; hit")
		r, _ = c.do(t, "GET", p, "Accept-Language", "fr")
		wantStatus(t, r, "meshlb; fwd=vary-miss")
		if en != en2 || !strings.HasSuffix(en, "=en") || !strings.HasSuffix(de, "=de") {
			t.Fatalf("variants en %q de %q en again %q", en, de, en2)
		}
		c.wantUpstream(t, "vary", 3)
	})

	t.Run("request directives", func(t *testing.T) {
		p := respondPath("reqdir", "", maxAge)
		c.do(t, "GET", p)
		r, _ := c.do(t, "GET", p, "Cache-Control", "max-age=0")
		wantStatus(t, r, "meshlb; fwd=request")
		r, _ = c.do(t, "GET", p, "Cache-Control", "min-fresh=120")
		wantStatus(t, r, "meshlb; fwd=request")
		r, _ = c.do(t, "GET", p, "Cache-Control", "no-cache")
		wantStatus(t, r, "meshlb; fwd=request")
		r, _ = c.do(t, "GET", p, "Cache-Control", "only-if-cached")
		wantStatus(t, r, "meshlb; hit")
		c.wantUpstream(t, "reqdir", 4)
		r, _ = c.do(t, "GET", respondPath("notcached", "", maxAge), "Cache-Control", "only-if-cached")
		if r.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("only-if-cached on a miss: status %d, want 504", r.StatusCode)
		}
		c.wantUpstream(t, "notcached", 0)
	})

	t.Run("max-stale serves a stale response", func(t *testing.T) {
		// Age 100 > max-age 60: stored stale.
		p := respondPath("maxstale", "", maxAge, "Age:100")
		c.do(t, "GET", p)
		r, _ := c.do(t, "GET", p, "Cache-Control", "max-stale=120")
		wantStatus(t, r, "meshlb; hit; ttl=-")
		c.wantUpstream(t, "maxstale", 1)
		r, _ = c.do(t, "GET", p)
		wantStatus(t, r, "meshlb; fwd=stale")
		c.wantUpstream(t, "maxstale", 2)
	})

	t.Run("unsafe methods invalidate the URL and Location", func(t *testing.T) {
		other := respondPath("inval2", "", maxAge)
		p := respondPath("inval", "", maxAge, "Location:"+other)
		c.do(t, "GET", p)
		c.do(t, "GET", other)
		c.do(t, "POST", p)
		// inval saw the POST too: GET, POST, then the GET after.
		for _, u := range []string{p, other} {
			r, _ := c.do(t, "GET", u)
			wantStatus(t, r, "meshlb; fwd=uri-miss")
		}
		c.wantUpstream(t, "inval", 3)
		c.wantUpstream(t, "inval2", 2)
	})

	t.Run("stale-while-revalidate serves stale and refreshes in the background", func(t *testing.T) {
		p := respondPath("swr", "", "Cache-Control:max-age=60, stale-while-revalidate=600", "Age:100")
		c.do(t, "GET", p)
		r, _ := c.do(t, "GET", p)
		wantStatus(t, r, "meshlb; hit; ttl=-")
		testproc.WaitFor(t, 5*time.Second, "the background revalidation", func() bool { return c.upstream(t, "swr") == 2 })
	})

	t.Run("stale-if-error serves stale in place of a 500", func(t *testing.T) {
		p := respondPath("sie", "fail_after=1", "Cache-Control:max-age=60, stale-if-error=600", "Age:100")
		_, b1 := c.do(t, "GET", p)
		r, b2 := c.do(t, "GET", p)
		wantStatus(t, r, "meshlb; fwd=stale; fwd-status=500")
		if r.StatusCode != 200 || b1 != b2 {
			t.Fatalf("status %d body %q, want the stored 200 %q", r.StatusCode, b2, b1)
		}
		c.wantUpstream(t, "sie", 2)
	})

	t.Run("ranges are served from a complete stored response", func(t *testing.T) {
		p := respondPath("range", "body=0123456789", maxAge)
		r, b := c.do(t, "GET", p, "Range", "bytes=2-4")
		if r.StatusCode != http.StatusPartialContent && r.StatusCode != http.StatusOK {
			t.Fatalf("range on a miss: status %d", r.StatusCode)
		}
		c.do(t, "GET", p)
		c.wantUpstream(t, "range", 2) // the range was passed through, not stored
		r, b = c.do(t, "GET", p, "Range", "bytes=2-4")
		if r.StatusCode != http.StatusPartialContent || b != "234" || r.Header.Get("Content-Range") != "bytes 2-4/10" {
			t.Fatalf("range from the cache: %d %q %q", r.StatusCode, b, r.Header.Get("Content-Range"))
		}
		c.wantUpstream(t, "range", 2)
	})

	t.Run("objects over max_object_size stream through unstored", func(t *testing.T) {
		p := respondPath("big", "size=2000000", maxAge) // default max object: 8m / 8
		for range 2 {
			r, b := c.do(t, "GET", p)
			if len(b) != 2000000 || r.Header.Get("Cache-Status") == "" {
				t.Fatalf("body %d bytes", len(b))
			}
		}
		c.wantUpstream(t, "big", 2)
	})

	t.Run("concurrent misses collapse into one upstream request", func(t *testing.T) {
		p := respondPath("collapse", "ms=300", maxAge)
		var wg sync.WaitGroup
		bodies := make([]string, 8)
		for i := range bodies {
			wg.Go(func() {
				res, err := c.client.Get("http://" + c.addr + p)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				bodies[i] = string(b)
			})
		}
		wg.Wait()
		for _, b := range bodies {
			if b != bodies[0] {
				t.Fatalf("bodies differ: %q", bodies)
			}
		}
		c.wantUpstream(t, "collapse", 1)
	})

	t.Run("purge by URL and by prefix", func(t *testing.T) {
		p1, p2 := respondPath("purge1", "", maxAge), respondPath("purge2", "", maxAge)
		c.do(t, "GET", p1)
		c.do(t, "GET", p2)
		out, err := exec.Command(bin(t, "agent"), "cache", "purge", "--admin", c.admin, "http://127.0.0.1"+p1).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "purged 1 URL") {
			t.Fatalf("agent cache purge: %v: %s", err, out)
		}
		r, _ := c.do(t, "GET", p1)
		wantStatus(t, r, "meshlb; fwd=uri-miss")
		r, _ = c.do(t, "GET", p2)
		wantStatus(t, r, "meshlb; hit")
		out, err = exec.Command(bin(t, "agent"), "cache", "purge", "--prefix", "--admin", c.admin, "http://127.0.0.1/respond?key=purge").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "purged 2 URL") {
			t.Fatalf("agent cache purge --prefix: %v: %s", err, out)
		}
		r, _ = c.do(t, "GET", p2)
		wantStatus(t, r, "meshlb; fwd=uri-miss")
		c.wantUpstream(t, "purge1", 2)
		c.wantUpstream(t, "purge2", 2)
	})

	t.Run("metrics and the status page count hits", func(t *testing.T) {
		res, err := http.Get("http://" + c.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, m := range []string{`meshlb_cache_hits_total{cache="listener \"cli\""}`, "meshlb_cache_collapsed_waits_total", "meshlb_cache_objects"} {
			if !bytes.Contains(b, []byte(m)) {
				t.Fatalf("/metrics lacks %s", m)
			}
		}
		res, err = http.Get("http://" + c.admin + "/api/events")
		if err != nil {
			t.Fatal(err)
		}
		var ev struct {
			Caches []struct {
				Objects  int64   `json:"objects"`
				HitRatio float64 `json:"hit_ratio"`
			} `json:"caches"`
		}
		err = json.NewDecoder(res.Body).Decode(&ev)
		res.Body.Close()
		if err != nil || len(ev.Caches) != 1 || ev.Caches[0].Objects == 0 || ev.Caches[0].HitRatio <= 0 {
			t.Fatalf("status API caches %+v (%v)", ev.Caches, err)
		}
	})

	// Last: it stops the only instance.
	t.Run("stale is served when no instance answers, unless must-revalidate", func(t *testing.T) {
		p := respondPath("down", "", maxAge, "Age:100")
		mr := respondPath("downmr", "", "Cache-Control:max-age=60, must-revalidate", "Age:100")
		_, b1 := c.do(t, "GET", p)
		c.do(t, "GET", mr)
		res, err := http.Get("http://" + c.app + "/hits")
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ PID int }
		json.NewDecoder(res.Body).Decode(&v)
		res.Body.Close()
		for _, reg := range c.regs {
			reg.Signal(syscall.SIGKILL) // no drain, no deregistration
		}
		if err := syscall.Kill(v.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for port := range c.regs {
			testproc.WaitFor(t, 10*time.Second, "the instance gone", func() bool {
				_, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
				return err != nil
			})
		}
		r, b2 := c.do(t, "GET", p)
		if r.StatusCode != 200 || b1 != b2 {
			t.Fatalf("instance down: status %d body %q, want the stale %q", r.StatusCode, b2, b1)
		}
		wantStatus(t, r, "meshlb; fwd=stale")
		r, _ = c.do(t, "GET", mr)
		if r.StatusCode < 500 {
			t.Fatalf("must-revalidate served stale with no instance: status %d", r.StatusCode)
		}
	})
}
