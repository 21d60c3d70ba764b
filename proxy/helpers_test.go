package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// testCtx bounds a test.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// upstream is a test instance: an httptest server counting its requests.
type upstream struct {
	id   string
	srv  *httptest.Server
	hits atomic.Int64
}

func newUpstream(t *testing.T, id string, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{id: id}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// nameUpstream answers every request with its id.
func nameUpstream(t *testing.T, id string) *upstream {
	return newUpstream(t, id, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, id)
	})
}

func (u *upstream) instance() lb.Instance {
	return instanceAt(u.id, u.srv.Listener.Addr().String())
}

func instanceAt(id, hostport string) lb.Instance {
	host, port, _ := net.SplitHostPort(hostport)
	p, _ := strconv.Atoi(port)
	return lb.Instance{
		ID:      id,
		Service: "web",
		Address: host,
		Port:    p,
		Weight:  1,
		Meta:    map[string]string{"pid": "4242", "host": "host-" + id},
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func newBalancer(t testing.TB, service string, insts ...lb.Instance) *lb.Balancer {
	t.Helper()
	b, err := lb.NewBalancer(service, lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b.Update(insts)
	return b
}

// frontend serves p on a loopback httptest server and returns a client for
// it with its own keep-alive pool.
type frontend struct {
	srv    *httptest.Server
	client *http.Client
	p      *Proxy
}

func newFrontend(t *testing.T, cfg Config, routes ...Route) *frontend {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "proxy", Level: hclog.Debug, Output: testWriter{t}})
	}
	p, err := New(cfg, routes)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		p.CloseIdleConnections()
	})
	return &frontend{srv: srv, client: &http.Client{Transport: tr}, p: p}
}

// do sends a request through the proxy and returns status and body.
func (f *frontend) do(t *testing.T, ctx context.Context, method, path string, body io.Reader, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, f.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vv := range hdr {
		req.Header[k] = vv
	}
	if h := hdr.Get("Host"); h != "" {
		req.Host = h
	}
	res, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return res, string(b)
}

func (f *frontend) url() *url.URL {
	u, _ := url.Parse(f.srv.URL)
	return u
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// resetAfterRead is a handler that reads the request (body included) and
// then drops the connection with a TCP reset, without answering.
func resetAfterRead(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		conn.Close()
	}
}
