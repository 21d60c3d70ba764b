package proxy

import (
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// recordingUpstream records the headers and Host of the last request.
type recordingUpstream struct {
	*upstream
	mu   sync.Mutex
	hdr  http.Header
	host string
}

func newRecordingUpstream(t *testing.T, respond func(http.ResponseWriter)) *recordingUpstream {
	ru := &recordingUpstream{}
	ru.upstream = newUpstream(t, "rec", func(w http.ResponseWriter, r *http.Request) {
		ru.mu.Lock()
		ru.hdr = r.Header.Clone()
		ru.host = r.Host
		ru.mu.Unlock()
		if respond != nil {
			respond(w)
		}
	})
	return ru
}

func (ru *recordingUpstream) last() (http.Header, string) {
	ru.mu.Lock()
	defer ru.mu.Unlock()
	return ru.hdr, ru.host
}

func TestHopByHopHeaders(t *testing.T) {
	ctx := testCtx(t)
	up := newRecordingUpstream(t, func(w http.ResponseWriter) {
		h := w.Header()
		h.Set("Connection", "X-Resp-Hop")
		h.Set("X-Resp-Hop", "secret")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Connection", "keep-alive")
		h.Set("X-Resp-End", "kept")
		w.WriteHeader(http.StatusOK)
	})
	f := newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", up.instance())})

	res, _ := f.do(t, ctx, "GET", "/", nil, http.Header{
		"Connection":          {"X-Req-Hop, keep-alive"},
		"X-Req-Hop":           {"secret"},
		"Keep-Alive":          {"300"},
		"Proxy-Connection":    {"keep-alive"},
		"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
		"Te":                  {"trailers, deflate"},
		"Upgrade":             {"h2c"},
		"X-Req-End":           {"kept"},
	})
	got, _ := up.last()
	for _, k := range []string{"Connection", "X-Req-Hop", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Upgrade"} {
		if v, ok := got[k]; ok {
			t.Errorf("upstream received hop-by-hop header %s: %q", k, v)
		}
	}
	if v := got.Get("Te"); v != "trailers" {
		t.Errorf("upstream Te %q, want trailers (only)", v)
	}
	if v := got.Get("X-Req-End"); v != "kept" {
		t.Errorf("end-to-end request header lost: X-Req-End %q", v)
	}
	for _, k := range []string{"X-Resp-Hop", "Keep-Alive", "Proxy-Connection"} {
		if v, ok := res.Header[k]; ok {
			t.Errorf("client received hop-by-hop header %s: %q", k, v)
		}
	}
	if v := res.Header.Get("Connection"); v != "" {
		t.Errorf("client received Connection %q", v)
	}
	if v := res.Header.Get("X-Resp-End"); v != "kept" {
		t.Errorf("end-to-end response header lost: X-Resp-End %q", v)
	}
}

func TestForwardedHeaders(t *testing.T) {
	incoming := http.Header{
		"Host":              {"app.example.com"},
		"X-Forwarded-For":   {"203.0.113.9"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"orig.example.com"},
		"Forwarded":         {"for=203.0.113.9;proto=https"},
		"User-Agent":        {"test-agent"},
	}
	tests := []struct {
		name    string
		trusted []netip.Prefix
		want    map[string]string
	}{
		{
			name:    "trusted peer: extended and kept",
			trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			want: map[string]string{
				"X-Forwarded-For":   "203.0.113.9, 127.0.0.1",
				"X-Forwarded-Proto": "https",
				"X-Forwarded-Host":  "orig.example.com",
				"Forwarded":         "for=203.0.113.9;proto=https, for=127.0.0.1;host=app.example.com;proto=http",
			},
		},
		{
			name:    "untrusted peer: replaced",
			trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			want: map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Forwarded-Proto": "http",
				"X-Forwarded-Host":  "app.example.com",
				"Forwarded":         "for=127.0.0.1;host=app.example.com;proto=http",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			up := newRecordingUpstream(t, nil)
			f := newFrontend(t, Config{TrustedProxies: tt.trusted}, Route{Balancer: newBalancer(t, "web", up.instance())})
			f.do(t, ctx, "GET", "/", nil, incoming)
			got, host := up.last()
			for k, want := range tt.want {
				if v := strings.Join(got[k], ", "); v != want {
					t.Errorf("%s = %q, want %q", k, v, want)
				}
			}
			if host != "app.example.com" {
				t.Errorf("upstream Host %q, want the client's app.example.com", host)
			}
			if ua := got.Get("User-Agent"); ua != "test-agent" {
				t.Errorf("User-Agent %q, want the client's", ua)
			}
		})
	}
}

func TestForwardedElement(t *testing.T) {
	tests := []struct {
		remote, host, proto string
		want                string
	}{
		{"192.0.2.1:1234", "example.com", "http", "for=192.0.2.1;host=example.com;proto=http"},
		{"[2001:db8::1]:1234", "example.com:8080", "https", `for="[2001:db8::1]";host="example.com:8080";proto=https`},
		{"[::ffff:192.0.2.1]:1234", "", "http", "for=192.0.2.1;proto=http"},
		{"@", "example.com", "http", "for=unknown;host=example.com;proto=http"},
	}
	p := &Proxy{}
	for _, tt := range tests {
		t.Run(tt.remote, func(t *testing.T) {
			ip, addr, _ := p.peer(tt.remote)
			if got := forwardedElement(ip, addr, tt.host, tt.proto); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestNoGoUserAgent(t *testing.T) {
	ctx := testCtx(t)
	up := newRecordingUpstream(t, nil)
	f := newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", up.instance())})
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/", nil)
	req.Header["User-Agent"] = []string{""} // the test client sends none
	res, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	got, _ := up.last()
	if ua := got.Get("User-Agent"); ua != "" {
		t.Errorf("upstream got User-Agent %q from a client that sent none", ua)
	}
}

func TestNoContentTypeInvented(t *testing.T) {
	ctx := testCtx(t)
	addr := cannedUpstream(t, []byte("HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>"))
	f := newFrontend(t, Config{}, Route{Balancer: newBalancer(t, "web", instanceAt("canned", addr))})
	res, body := f.do(t, ctx, "GET", "/", nil, nil)
	if body != "<html>hi</html>" {
		t.Errorf("body %q", body)
	}
	if v, ok := res.Header["Content-Type"]; ok {
		t.Errorf("the proxy added Content-Type %q the upstream did not send", v)
	}
}
