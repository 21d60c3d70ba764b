package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// TestGRPCManyStreams opens 10,000 calls at once from one gRPC client: the
// agent lets MaxConcurrentStreams of them run, the client queues the rest,
// the agent keeps serving other clients meanwhile, and every call succeeds.
func TestGRPCManyStreams(t *testing.T) {
	// A bound, not a speed check: 10,000 calls under -race took over 90 s
	// on a 2-core machine busy with other work.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const calls, limit = 10000, 250
	g := newGRPCInstance(t, "g0")
	web := nameUpstream(t, "web")
	a := newAgentServer(t, Config{}, ServerConfig{}, nil,
		Route{Balancer: newBalancer(t, "greeter", g.instance())},
		Route{Host: "web.example.com", Balancer: newBalancer(t, "web", web.instance())},
	)
	client := dialGRPC(t, a.addr)

	var failed atomic.Int64
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(cmdHold)}}); err != nil {
				if failed.Add(1) == 1 {
					t.Errorf("call failed: %v", err)
				}
			}
		})
	}
	waitFor(t, ctx, "the instance to hold MaxConcurrentStreams calls", func() bool { return g.inFlight.Load() == limit })

	// Meanwhile an HTTP/1.1 client and another gRPC client are served.
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+a.addr+"/", nil)
	req.Host = "web.example.com"
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "web" {
		t.Errorf("HTTP/1.1 request during the flood: %d %q", res.StatusCode, body)
	}
	if _, err := dialGRPC(t, a.addr).UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Errorf("another client's call during the flood: %v", err)
	}

	close(g.hold)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed", n, calls)
	}
	if got := g.calls.Load(); got != calls+1 {
		t.Errorf("instance got %d calls, want %d", got, calls+1)
	}
	if m := g.maxIn.Load(); m > limit+1 {
		t.Errorf("instance saw %d calls at once, want at most %d (MaxConcurrentStreams, plus the other client's)", m, limit+1)
	}
}

// TestHTTP2Abuse sends what a broken or hostile HTTP/2 client might over
// raw frames: 10,000 streams ignoring the stream limit, oversized frames,
// frames where none may be, undecodable headers. Each costs the client its
// streams or connection, never the agent: the upstream sees no more than
// the limit, and the agent serves a normal gRPC call and HTTP/1.1 request
// afterwards.
func TestHTTP2Abuse(t *testing.T) {
	const limit = 20
	tests := []struct {
		name string
		// abuse writes to a raw connection that has sent the preface and
		// its SETTINGS.
		abuse func(t *testing.T, rc *rawH2)
		// want reports whether the server's reaction was seen.
		want func(rc *rawH2) bool
	}{
		{
			name: "10,000 streams beyond the limit",
			abuse: func(t *testing.T, rc *rawH2) {
				for i := range 10000 {
					if err := rc.openStream(uint32(2*i+1), false); err != nil {
						return // the server may close the connection
					}
				}
			},
			// Every stream beyond the limit refused, or the connection.
			want: func(rc *rawH2) bool { return rc.resets.Load() >= 10000-limit || rc.goAway.Load() != nil },
		},
		{
			name: "frame larger than MaxReadFrameSize",
			abuse: func(t *testing.T, rc *rawH2) {
				rc.openStream(1, false)
				rc.raw(http2.FrameData, 0, 1, make([]byte, 2<<20))
			},
			want: func(rc *rawH2) bool { return rc.goAwayCode() == http2.ErrCodeFrameSize },
		},
		{
			name: "DATA on stream 0",
			abuse: func(t *testing.T, rc *rawH2) {
				rc.raw(http2.FrameData, 0, 0, []byte("gRPC?"))
			},
			want: func(rc *rawH2) bool { return rc.goAwayCode() == http2.ErrCodeProtocol },
		},
		{
			name: "undecodable header block",
			abuse: func(t *testing.T, rc *rawH2) {
				rc.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
			},
			want: func(rc *rawH2) bool { return rc.goAwayCode() == http2.ErrCodeCompression },
		},
		{
			name: "garbage instead of a frame",
			abuse: func(t *testing.T, rc *rawH2) {
				rc.mu.Lock()
				rc.c.Write(bytes.Repeat([]byte{0x7f}, 4096))
				rc.mu.Unlock()
			},
			want: func(rc *rawH2) bool { return rc.goAway.Load() != nil },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			up := newH2CUpstream(t, "up", func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
			})
			g := newGRPCInstance(t, "g0")
			web := nameUpstream(t, "web")
			a := newAgentServer(t, Config{}, ServerConfig{MaxConcurrentStreams: limit}, nil,
				Route{PathPrefix: "/abuse", Balancer: newBalancer(t, "abuse", up.instance())},
				Route{Balancer: newBalancer(t, "greeter", g.instance())},
				Route{Host: "web.example.com", Balancer: newBalancer(t, "web", web.instance())},
			)
			rc := dialRawH2(t, a.addr)
			tt.abuse(t, rc)
			waitFor(t, ctx, "the server's reaction", func() bool { return tt.want(rc) })

			if m := up.maxIn.Load(); m > limit {
				t.Errorf("upstream saw %d requests at once, want at most %d", m, limit)
			}
			if _, err := dialGRPC(t, a.addr).UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
				t.Errorf("gRPC call after the abuse: %v", err)
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+a.addr+"/", nil)
			req.Host = "web.example.com"
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			res, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("HTTP/1.1 request after the abuse: %v", err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Errorf("HTTP/1.1 request after the abuse: status %d", res.StatusCode)
			}
			// Once the client is gone, nothing it started stays open.
			rc.c.Close()
			waitFor(t, ctx, "the abusive client's requests to end upstream", func() bool { return up.inFlight.Load() == 0 })
		})
	}
}

// TestGRPCMalformedMessage sends a gRPC call whose message prefix claims
// 1 GiB and then ends: the proxy passes it on untouched, and the instance's
// verdict reaches the client as a gRPC status.
func TestGRPCMalformedMessage(t *testing.T) {
	ctx := testCtx(t)
	g := newGRPCInstance(t, "g0")
	a := newAgentServer(t, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(t, "greeter", g.instance())})
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+a.addr+"/grpc.testing.TestService/UnaryCall",
		bytes.NewReader([]byte{0, 0x40, 0, 0, 0, 1, 2, 3}))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	res, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	st := res.Header.Get("Grpc-Status")
	if st == "" {
		st = res.Trailer.Get("Grpc-Status")
	}
	if res.StatusCode != http.StatusOK || st == "" || st == "0" {
		t.Errorf("got HTTP %d grpc-status %q, want 200 and an error status from the instance", res.StatusCode, st)
	}
	// The instance is fine, and so is the agent.
	if _, err := dialGRPC(t, a.addr).UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.OK {
		t.Errorf("call after the malformed one: %v", err)
	}
}

// rawH2 is an HTTP/2 client connection driven frame by frame. A reader
// goroutine acknowledges the server's SETTINGS and records the stream
// resets and the GOAWAY it receives.
type rawH2 struct {
	c      net.Conn
	mu     sync.Mutex // guards writes: fr, enc, hbuf
	fr     *http2.Framer
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	addr   string
	resets atomic.Int64
	goAway atomic.Pointer[http2.ErrCode]
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawH2{c: c, addr: addr}
	rc.fr = http2.NewFramer(c, c)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	rd := http2.NewFramer(io.Discard, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					rc.mu.Lock()
					rc.fr.WriteSettingsAck()
					rc.mu.Unlock()
				}
			case *http2.RSTStreamFrame:
				rc.resets.Add(1)
			case *http2.GoAwayFrame:
				code := f.ErrCode
				rc.goAway.Store(&code)
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return rc
}

// openStream sends the HEADERS of a gRPC call to /abuse.
func (rc *rawH2) openStream(id uint32, endStream bool) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.hbuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", rc.addr}, {":path", "/abuse/Svc/Call"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndHeaders: true, EndStream: endStream})
}

// raw writes one frame as given, valid or not.
func (rc *rawH2) raw(typ http2.FrameType, flags http2.Flags, stream uint32, payload []byte) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.fr.WriteRawFrame(typ, flags, stream, payload)
}

// goAwayCode is the error code of the GOAWAY received, or an impossible
// code when none was.
func (rc *rawH2) goAwayCode() http2.ErrCode {
	if c := rc.goAway.Load(); c != nil {
		return *c
	}
	return ^http2.ErrCode(0)
}

// waitFor polls cond until it holds, failing the test when ctx ends first.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
