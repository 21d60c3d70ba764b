package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestProbe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/busy":
			w.WriteHeader(http.StatusTooManyRequests)
		case "/broken":
			w.WriteHeader(http.StatusInternalServerError)
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}
	}))
	defer app.Close()
	addr := strings.TrimPrefix(app.URL, "http://")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"http ok", Config{Kind: "http", Addr: addr, Path: "/"}, api.HealthPassing},
		{"http redirect not followed", Config{Kind: "http", Addr: addr, Path: "/moved"}, api.HealthPassing},
		{"http 429", Config{Kind: "http", Addr: addr, Path: "/busy"}, api.HealthWarning},
		{"http 500", Config{Kind: "http", Addr: addr, Path: "/broken"}, api.HealthCritical},
		{"http refused", Config{Kind: "http", Addr: dead, Path: "/"}, api.HealthCritical},
		{"tcp ok", Config{Kind: "tcp", Addr: addr}, api.HealthPassing},
		{"tcp refused", Config{Kind: "tcp", Addr: dead}, api.HealthCritical},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Timeout = 2 * time.Second
			p := New(tc.cfg)
			defer p.Close()
			if h := p.Probe(ctx); h.Status != tc.want || !strings.Contains(h.Output, tc.cfg.Addr) {
				t.Errorf("Probe = %+v; want %s, output naming %s", h, tc.want, tc.cfg.Addr)
			}
		})
	}
}
