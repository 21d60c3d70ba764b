package admin

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

var accessCases = []struct {
	name   string
	remote string
	allow  []netip.Prefix
	ok     bool
}{
	{"ipv4 loopback", "127.0.0.1:5000", nil, true},
	{"other loopback address", "127.0.0.53:5000", nil, true},
	{"ipv6 loopback", "[::1]:5000", nil, true},
	{"ipv4-mapped loopback", "[::ffff:127.0.0.1]:5000", nil, true},
	{"remote", "203.0.113.5:5000", nil, false},
	{"remote ipv6", "[2001:db8::1]:5000", nil, false},
	{"remote allowed", "10.1.2.3:5000", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, true},
	{"remote outside allowed", "10.1.2.3:5000", []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, false},
	{"ipv4-mapped remote allowed", "[::ffff:10.1.2.3]:5000", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, true},
	{"unparsable", "somewhere", nil, false},
	{"empty", "", nil, false},
}

// TestAccessMiddleware calls the HTTP middleware with fake peer addresses,
// for the page and for gRPC requests (refused with a gRPC status).
func TestAccessMiddleware(t *testing.T) {
	for _, tt := range accessCases {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Options{Services: []Service{{Balancer: newBalancer(t, "web")}}, AllowRemote: tt.allow})
			h := s.Handler(nil)

			r := httptest.NewRequest("GET", "/api/pools", nil)
			r.RemoteAddr = tt.remote
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if tt.ok && w.Code != http.StatusOK {
				t.Errorf("page: status %d, want 200: %s", w.Code, w.Body)
			}
			if !tt.ok && (w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "refused")) {
				t.Errorf("page: status %d %q, want 403 refused", w.Code, w.Body)
			}

			r = httptest.NewRequest("POST", "/meshlb.admin.v1.Admin/ListPools", nil)
			r.ProtoMajor, r.ProtoMinor, r.Proto = 2, 0, "HTTP/2.0"
			r.Header.Set("Content-Type", "application/grpc")
			r.RemoteAddr = tt.remote
			w = httptest.NewRecorder()
			h.ServeHTTP(w, r)
			refused := w.Header().Get("Grpc-Status") == "7"
			if refused == tt.ok {
				t.Errorf("grpc: grpc-status %q, message %q; want refused = %v",
					w.Header().Get("Grpc-Status"), w.Header().Get("Grpc-Message"), !tt.ok)
			}
			if refused && !strings.Contains(w.Header().Get("Grpc-Message"), "refused") {
				t.Errorf("grpc-message %q does not say why", w.Header().Get("Grpc-Message"))
			}
		})
	}
}

// TestAccessInterceptors calls the gRPC interceptors with fake peers.
func TestAccessInterceptors(t *testing.T) {
	for _, tt := range accessCases {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Options{Services: []Service{{Balancer: newBalancer(t, "web")}}, AllowRemote: tt.allow})
			ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: fakeAddr(tt.remote)})
			called := false
			_, err := s.unaryAccess(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/y"},
				func(context.Context, any) (any, error) { called = true; return nil, nil })
			checkAccess(t, "unary", tt.ok, called, err)

			called = false
			err = s.streamAccess(nil, fakeStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: "/x/z"},
				func(any, grpc.ServerStream) error { called = true; return nil })
			checkAccess(t, "stream", tt.ok, called, err)
		})
	}
	t.Run("no peer", func(t *testing.T) {
		s := New(Options{Services: []Service{{Balancer: newBalancer(t, "web")}}})
		_, err := s.unaryAccess(context.Background(), nil, &grpc.UnaryServerInfo{},
			func(context.Context, any) (any, error) { return nil, nil })
		checkAccess(t, "unary", false, false, err)
	})
}

func checkAccess(t *testing.T, what string, ok, called bool, err error) {
	t.Helper()
	if ok && (err != nil || !called) {
		t.Errorf("%s: err = %v, called = %v; want the call through", what, err, called)
	}
	if !ok && (status.Code(err) != codes.PermissionDenied || called) {
		t.Errorf("%s: err = %v, called = %v; want PermissionDenied", what, err, called)
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

var _ net.Addr = fakeAddr("")

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f fakeStream) Context() context.Context { return f.ctx }
