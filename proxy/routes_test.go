package proxy

import (
	"net/http"
	"testing"

	"github.com/meshlb/meshlb/lb"
)

func TestRouteMatch(t *testing.T) {
	bals := map[string]*lb.Balancer{}
	b := func(name string) *lb.Balancer {
		if bals[name] == nil {
			bals[name] = newBalancer(t, name)
		}
		return bals[name]
	}
	rt, err := compileRoutes([]Route{
		{Balancer: b("default")},
		{PathPrefix: "/static", Balancer: b("static")},
		{PathPrefix: "/static/img/", Balancer: b("img")},
		{Host: "api.example.com", Balancer: b("api")},
		{Host: "api.example.com", PathPrefix: "/v2", Balancer: b("api-v2")},
		{Host: "*.example.com", PathPrefix: "/", Balancer: b("wild")},
		{Host: "*.eu.example.com", Balancer: b("wild-eu")},
		{Host: "only.example.org", PathPrefix: "/app", Balancer: b("only-app")},
		{Host: "[::1]", PathPrefix: "/v6", Balancer: b("v6")},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host, path string
		want       string
	}{
		{"localhost:8070", "/", "default"},
		{"localhost", "", "default"},
		{"localhost", "/static", "static"},
		{"localhost", "/static/", "static"},
		{"localhost", "/static/a.css", "static"},
		{"localhost", "/staticx", "default"},
		{"localhost", "/static/img", "img"},
		{"localhost", "/static/img/a.png", "img"},
		{"localhost", "/static/imgx", "static"},
		{"api.example.com", "/users", "api"},
		{"API.Example.COM:443", "/users", "api"},
		{"api.example.com.", "/users", "api"},
		{"api.example.com", "/v2", "api-v2"},
		{"api.example.com", "/v2/users", "api-v2"},
		{"api.example.com", "/v20", "api"},
		{"www.example.com", "/", "wild"},
		{"a.b.example.com", "/x", "wild"},
		{"x.eu.example.com", "/x", "wild-eu"},
		{"eu.example.com", "/x", "wild"},
		{"example.com", "/x", "default"},
		{"badexample.com", "/x", "default"},
		{"only.example.org", "/app/x", "only-app"},
		{"only.example.org", "/static/x", "static"}, // falls through to any host
		{"[::1]:8070", "/v6/x", "v6"},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.path, func(t *testing.T) {
			cr := rt.match(tt.host, tt.path)
			if cr == nil || cr.service != tt.want {
				got := "<nil>"
				if cr != nil {
					got = cr.service
				}
				t.Errorf("match(%q, %q) = %s, want %s", tt.host, tt.path, got, tt.want)
			}
		})
	}
}

func TestRouteNoMatch(t *testing.T) {
	ctx := testCtx(t)
	up := nameUpstream(t, "a")
	f := newFrontend(t, Config{}, Route{Host: "app.example.com", PathPrefix: "/app", Balancer: newBalancer(t, "web", up.instance())})
	tests := []struct {
		host, path string
		status     int
	}{
		{"app.example.com", "/app/x", http.StatusOK},
		{"app.example.com", "/other", http.StatusNotFound},
		{"other.example.com", "/app/x", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.host+tt.path, func(t *testing.T) {
			res, body := f.do(t, ctx, "GET", tt.path, nil, http.Header{"Host": {tt.host}})
			if res.StatusCode != tt.status {
				t.Errorf("status %d (body %q), want %d", res.StatusCode, body, tt.status)
			}
		})
	}
}

func TestSetRoutesSwaps(t *testing.T) {
	ctx := testCtx(t)
	a, b := nameUpstream(t, "a"), nameUpstream(t, "b")
	balA, balB := newBalancer(t, "svc-a", a.instance()), newBalancer(t, "svc-b", b.instance())
	f := newFrontend(t, Config{}, Route{Balancer: balA})
	if _, body := f.do(t, ctx, "GET", "/", nil, nil); body != "a" {
		t.Fatalf("before swap: body %q, want a", body)
	}
	if err := f.p.SetRoutes([]Route{{Balancer: balB}}); err != nil {
		t.Fatal(err)
	}
	if _, body := f.do(t, ctx, "GET", "/", nil, nil); body != "b" {
		t.Fatalf("after swap: body %q, want b", body)
	}
}

func FuzzRouteMatch(f *testing.F) {
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		f.Fatal(err)
	}
	rt, err := compileRoutes([]Route{
		{Host: "*.example.com", PathPrefix: "/api", Balancer: bal},
		{Host: "a.example.com", Balancer: bal},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("a.example.com:80", "/api/x")
	f.Add("[::1", "/")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, host, path string) {
		cr := rt.match(host, path)
		if cr != nil && cr.prefix != "" && !(path == cr.prefix || len(path) > len(cr.prefix) && path[len(cr.prefix)] == '/') {
			t.Errorf("route prefix %q matched path %q off a segment boundary", cr.prefix, path)
		}
	})
}
