package admin

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

func get(t *testing.T, client *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// TestHTTPRoutes checks the non-gRPC side of the admin port over HTTP/1.1:
// the page, its JSON API, and what goes to the agent's own handler.
func TestHTTPRoutes(t *testing.T) {
	ctx := testContext(t, testTimeout)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	extra := http.NewServeMux()
	extra.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "extra ok") })
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}}, extra)
	srv.RecordFailure("web", "web-a", "4bf92f3577b34da6a3ce929d0e0e4736", 502, time.Now())
	client := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + srv.addr

	tests := []struct {
		path, ctype string
		code        int
		has         []string
	}{
		{"/", "text/html", 200, []string{"<title>meshlb agent</title>", "api/stream"}},
		{"/api/pools", "application/json", 200, []string{`"service": "web"`, `"id": "web-a"`, `"state": "serving"`, `"pid": "4242"`}},
		{"/api/events", "application/json", 200, []string{`"kind": "joined"`, `"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"`, `"status": 502`}},
		{"/healthz", "", 200, []string{"extra ok"}},
		{"/nope", "", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, body := get(t, client, base+tt.path)
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.code, body)
			}
			if resp.ProtoMajor != 1 {
				t.Errorf("served over %s, want HTTP/1.1 for a plain client", resp.Proto)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tt.ctype) {
				t.Errorf("content type %q, want %s", ct, tt.ctype)
			}
			for _, h := range tt.has {
				if !strings.Contains(body, h) {
					t.Errorf("body lacks %s:\n%s", h, body)
				}
			}
		})
	}

	t.Run("page is self-contained", func(t *testing.T) {
		resp, body := get(t, client, base+"/")
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'sha256-") {
			t.Errorf("CSP %q does not pin the page to itself", csp)
		}
		for _, ext := range []string{"http://", "https://", "//cdn", "src=", "@import"} {
			if strings.Contains(body, ext) {
				t.Errorf("page refers to something outside itself: %q", ext)
			}
		}
	})
}

// TestStream reads the page's event stream: a state at once, and a new one
// as soon as the pool changes.
func TestStream(t *testing.T) {
	ctx := testContext(t, testTimeout)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}}, nil)
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+srv.addr+"/api/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	next := func() StateView {
		t.Helper()
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var st StateView
				if err := json.Unmarshal([]byte(data), &st); err != nil {
					t.Fatal(err)
				}
				return st
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return StateView{}
	}
	ids := func(st StateView) string {
		var s []string
		for _, p := range st.Pools {
			for _, in := range p.Instances {
				s = append(s, in.ID)
			}
		}
		return strings.Join(s, ",")
	}
	if got := ids(next()); got != "web-a" {
		t.Fatalf("first state has %q, want web-a", got)
	}
	web.Update([]lb.Instance{inst("web", "web-a", 8071), inst("web", "web-b", 8072)})
	for {
		st := next()
		if ids(st) == "web-a,web-b" {
			if len(st.Events) == 0 || st.Events[0].Kind != "joined" || st.Events[0].Instance.ID != "web-b" {
				t.Errorf("latest event = %+v, want web-b joined", st.Events)
			}
			break
		}
	}
	// Stopping Run ends the stream, so the listener can shut down.
	srv.stopRun()
	for sc.Scan() {
	}
	if err := sc.Err(); err != nil {
		t.Errorf("stream ended with %v, want a clean end", err)
	}
}

// TestRecordFailure checks the failure ring under concurrent writers: the
// last maxFailures are kept, newest first.
func TestRecordFailure(t *testing.T) {
	s := New(Options{Services: []Service{{Balancer: newBalancer(t, "web")}}})
	if got := s.recentFailures(); len(got) != 0 {
		t.Fatalf("fresh server has %d failures", len(got))
	}
	const writers, each = 4, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				s.RecordFailure("web", fmt.Sprintf("w%d", w), fmt.Sprintf("trace-%d-%d", w, i), 503, time.Now())
			}
		}()
	}
	wg.Wait()
	s.RecordFailure("web", "last", "trace-last", 504, time.Now())
	got := s.recentFailures()
	if len(got) != maxFailures {
		t.Fatalf("kept %d failures, want %d", len(got), maxFailures)
	}
	if got[0].TraceID != "trace-last" || got[0].Status != 504 {
		t.Errorf("newest = %+v, want trace-last", got[0])
	}
	for i := 1; i < len(got); i++ {
		if got[i].seq >= got[i-1].seq {
			t.Fatalf("not newest first at %d: %d after %d", i, got[i].seq, got[i-1].seq)
		}
	}
	if oldest := got[len(got)-1].seq; oldest != writers*each+1-maxFailures+1 {
		t.Errorf("oldest kept seq = %d, want %d", oldest, writers*each+1-maxFailures+1)
	}
}

func BenchmarkRecordFailure(b *testing.B) {
	s := New(Options{})
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.RecordFailure("web", "web-a", "4bf92f3577b34da6a3ce929d0e0e4736", 502, now)
		}
	})
}
