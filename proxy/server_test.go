package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
	if p := srv.Protocols; p == nil || !p.HTTP1() || !p.HTTP2() || !p.UnencryptedHTTP2() {
		t.Errorf("protocols %v, want HTTP1, HTTP2, UnencryptedHTTP2", p)
	}
	if h2 := srv.HTTP2; h2 == nil || h2.MaxConcurrentStreams != 250 || h2.MaxReadFrameSize != 16<<10 ||
		h2.MaxReceiveBufferPerStream != 1<<20 || h2.MaxReceiveBufferPerConnection != 1<<20 || h2.SendPingTimeout != 0 {
		t.Errorf("HTTP/2 defaults: %+v", h2)
	}
	srv = NewServer(":0", http.NotFoundHandler(), ServerConfig{ReadHeaderTimeout: -1, WriteTimeout: time.Minute}, nil)
	if srv.ReadHeaderTimeout != -1 || srv.WriteTimeout != time.Minute {
		t.Errorf("explicit values not kept: %+v", srv)
	}
	srv = NewServer(":0", http.NotFoundHandler(), ServerConfig{
		MaxConcurrentStreams: 10, MaxReadFrameSize: 64 << 10, MaxReceiveBufferPerStream: 256 << 10,
		MaxReceiveBufferPerConnection: 4 << 20, SendPingTimeout: time.Minute, PingTimeout: 5 * time.Second,
		WriteByteTimeout: 30 * time.Second,
	}, nil)
	if h2 := srv.HTTP2; h2.MaxConcurrentStreams != 10 || h2.MaxReadFrameSize != 64<<10 || h2.MaxReceiveBufferPerStream != 256<<10 ||
		h2.MaxReceiveBufferPerConnection != 4<<20 || h2.SendPingTimeout != time.Minute || h2.PingTimeout != 5*time.Second ||
		h2.WriteByteTimeout != 30*time.Second {
		t.Errorf("explicit HTTP/2 values not kept: %+v", h2)
	}
	srv = NewServer(":0", http.NotFoundHandler(), ServerConfig{MaxReadFrameSize: 100, MaxConcurrentStreams: -1}, nil)
	if h2 := srv.HTTP2; h2.MaxReadFrameSize != 16<<10 || h2.MaxConcurrentStreams != 250 {
		t.Errorf("out-of-range HTTP/2 values did not take the defaults: %+v", h2)
	}
}

func TestServerConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		sc   ServerConfig
		want string // "" for valid
	}{
		{"zero", ServerConfig{}, ""},
		{"all set", ServerConfig{MaxConcurrentStreams: 1000, MaxReadFrameSize: 16 << 10, MaxReceiveBufferPerStream: 1,
			MaxReceiveBufferPerConnection: 64 << 10, SendPingTimeout: time.Second, PingTimeout: time.Second, WriteByteTimeout: time.Second}, ""},
		{"streams", ServerConfig{MaxConcurrentStreams: -5}, "invalid MaxConcurrentStreams -5: must be 0 (default) or 1-1048576"},
		{"small frame", ServerConfig{MaxReadFrameSize: 1024}, "invalid MaxReadFrameSize 1024: must be 0 (default) or 16384-16777215"},
		{"huge frame", ServerConfig{MaxReadFrameSize: 1 << 24}, "invalid MaxReadFrameSize 16777216"},
		{"small connection window", ServerConfig{MaxReceiveBufferPerConnection: 1000}, "invalid MaxReceiveBufferPerConnection 1000"},
		{"negative stream window", ServerConfig{MaxReceiveBufferPerStream: -1}, "invalid MaxReceiveBufferPerStream -1"},
		{"negative ping", ServerConfig{SendPingTimeout: -time.Second}, "invalid SendPingTimeout -1s: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.sc.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestLimitBody(t *testing.T) {
	var got string
	h := LimitBody(8, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			got = "error"
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		got = string(b)
	}))
	for _, tc := range []struct {
		name, body string
		declared   bool
		want       int
		wantBody   string
	}{
		{"declared, small", "12345678", true, http.StatusOK, "12345678"},
		{"declared, too large", "123456789", true, http.StatusRequestEntityTooLarge, ""},
		{"chunked, small", "1234", false, http.StatusOK, "1234"},
		{"chunked, too large", "123456789", false, http.StatusRequestEntityTooLarge, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got = ""
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
			if !tc.declared {
				r.ContentLength = -1
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.want || got != tc.wantBody {
				t.Errorf("status %d, handler read %q; want %d, %q", w.Code, got, tc.want, tc.wantBody)
			}
		})
	}
	if next := http.NewServeMux(); LimitBody(0, next) != http.Handler(next) {
		t.Error("LimitBody(0) wraps the handler, want it unchanged")
	}
}
