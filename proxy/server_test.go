package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestNewServerHeaderLimit(t *testing.T) {
	tests := []struct {
		name       string
		maxHeader  int
		headerSize int
		want       int
	}{
		{"default limit, small header", 0, 1 << 10, http.StatusOK},
		{"default limit, 100 KiB header", 0, 100 << 10, http.StatusRequestHeaderFieldsTooLarge},
		{"raised limit, 100 KiB header", 256 << 10, 100 << 10, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := NewServer(ln.Addr().String(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "ok")
			}), ServerConfig{MaxHeaderBytes: tt.maxHeader}, nil)
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			t.Cleanup(func() {
				srv.Close()
				if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
					t.Errorf("Serve: %v", err)
				}
			})

			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/", nil)
			req.Header.Set("X-Big", strings.Repeat("a", tt.headerSize))
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			res, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tt.want {
				t.Errorf("status %d, want %d", res.StatusCode, tt.want)
			}
		})
	}
}

func TestNewServerDefaults(t *testing.T) {
	srv := NewServer(":0", http.NotFoundHandler(), ServerConfig{}, nil)
	if srv.ReadHeaderTimeout != 10*time.Second || srv.IdleTimeout != 120*time.Second ||
		srv.MaxHeaderBytes != 64<<10 || srv.ReadTimeout != 0 || srv.WriteTimeout != 0 || srv.ErrorLog == nil {
		t.Errorf("defaults: %+v", srv)
	}
	srv = NewServer(":0", http.NotFoundHandler(), ServerConfig{ReadHeaderTimeout: -1, WriteTimeout: time.Minute}, nil)
	if srv.ReadHeaderTimeout != -1 || srv.WriteTimeout != time.Minute {
		t.Errorf("explicit values not kept: %+v", srv)
	}
}
