package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

func TestRoundRobin(t *testing.T) {
	ctx := testCtx(t)
	ups := []*upstream{nameUpstream(t, "a"), nameUpstream(t, "b"), nameUpstream(t, "c")}
	bal := newBalancer(t, "web", ups[0].instance(), ups[1].instance(), ups[2].instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal})

	got := map[string]int{}
	var order []string
	for range 9 {
		res, body := f.do(t, ctx, "GET", "/", nil, nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %q", res.StatusCode, body)
		}
		got[body]++
		order = append(order, body)
	}
	for _, u := range ups {
		if got[u.id] != 3 {
			t.Errorf("instance %s served %d of 9 requests, want 3 (order %v)", u.id, got[u.id], order)
		}
	}
	// Strict rotation: no instance twice in a row.
	for i := 1; i < len(order); i++ {
		if order[i] == order[i-1] {
			t.Errorf("not round robin: %v", order)
			break
		}
	}
}

func TestRetryOnDialError(t *testing.T) {
	for _, method := range []string{"GET", "POST"} {
		t.Run(method, func(t *testing.T) {
			ctx := testCtx(t)
			live := newUpstream(t, "live", func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.Write(b)
			})
			dead := instanceAt("dead", closedAddr(t))
			bal := newBalancer(t, "web", dead, live.instance())
			f := newFrontend(t, Config{}, Route{Balancer: bal})

			for i := range 4 {
				want := "payload-" + method + "-" + string(rune('0'+i))
				var body io.Reader
				if method == "POST" {
					body = strings.NewReader(want)
				} else {
					want = ""
				}
				res, got := f.do(t, ctx, method, "/", body, nil)
				if res.StatusCode != http.StatusOK || got != want {
					t.Fatalf("request %d: status %d body %q, want 200 %q", i, res.StatusCode, got, want)
				}
			}
			if live.hits.Load() != 4 {
				t.Errorf("live instance got %d requests, want 4", live.hits.Load())
			}
			deadInst := bal.Pool().Instances[0]
			if deadInst.ID != "dead" || deadInst.Stats.Failures.Load() == 0 {
				t.Errorf("the dead instance was never tried (failures %d)", deadInst.Stats.Failures.Load())
			}
		})
	}
}

func TestPostNotRetriedAfterWrite(t *testing.T) {
	ctx := testCtx(t)
	var mu sync.Mutex
	var executed []string
	dies := newUpstream(t, "dies", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		executed = append(executed, "dies:"+string(b))
		mu.Unlock()
		resetAfterRead(t)(w, r)
	})
	ok := newUpstream(t, "ok", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		executed = append(executed, "ok:"+string(b))
		mu.Unlock()
		io.WriteString(w, "done")
	})
	bal := newBalancer(t, "web", dies.instance(), ok.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal})

	// Round robin sends one of two consecutive requests to "dies" first.
	statuses := map[int]int{}
	for _, payload := range []string{"order-1", "order-2"} {
		res, body := f.do(t, ctx, "POST", "/", strings.NewReader(payload), nil)
		statuses[res.StatusCode]++
		if res.StatusCode == http.StatusBadGateway && body != "upstream of service web failed\n" {
			t.Errorf("502 body %q", body)
		}
	}
	if statuses[http.StatusOK] != 1 || statuses[http.StatusBadGateway] != 1 {
		t.Errorf("statuses %v, want one 200 and one 502", statuses)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(executed) != 2 {
		t.Errorf("executions %v, want each POST executed exactly once", executed)
	}
	seen := map[string]bool{}
	for _, e := range executed {
		payload := e[strings.IndexByte(e, ':')+1:]
		if seen[payload] {
			t.Errorf("POST %q executed twice: %v", payload, executed)
		}
		seen[payload] = true
	}
}

func TestIdempotentRetriedAfterReset(t *testing.T) {
	ctx := testCtx(t)
	dies := newUpstream(t, "dies", resetAfterRead(t))
	ok := nameUpstream(t, "ok")
	bal := newBalancer(t, "web", dies.instance(), ok.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal})

	for i := range 2 {
		res, body := f.do(t, ctx, "GET", "/", nil, nil)
		if res.StatusCode != http.StatusOK || body != "ok" {
			t.Fatalf("request %d: status %d body %q", i, res.StatusCode, body)
		}
	}
	// Round robin meets "dies" once or twice in two requests (the retry
	// advances it too); every request ends on "ok".
	if dies.hits.Load() < 1 || ok.hits.Load() != 2 {
		t.Errorf("hits: dies %d ok %d, want at least 1 and 2", dies.hits.Load(), ok.hits.Load())
	}
}

func TestBodyReplay(t *testing.T) {
	const payload = "replace the whole resource"
	tests := []struct {
		name          string
		method        string
		chunked       bool
		maxReplayBody int64
		replayed      bool // requests that met "dies" are replayed on "ok"
	}{
		{name: "PUT with length", method: "PUT", replayed: true},
		{name: "PUT chunked", method: "PUT", chunked: true, replayed: true},
		{name: "DELETE with body", method: "DELETE", replayed: true},
		{name: "PUT over the replay limit", method: "PUT", maxReplayBody: 8},
		{name: "PUT chunked over the replay limit", method: "PUT", chunked: true, maxReplayBody: 8},
		{name: "PATCH is not idempotent", method: "PATCH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			dies := newUpstream(t, "dies", resetAfterRead(t))
			var mu sync.Mutex
			var bodies []string
			ok := newUpstream(t, "ok", func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies = append(bodies, string(b))
				mu.Unlock()
				w.Write(b)
			})
			bal := newBalancer(t, "web", dies.instance(), ok.instance())
			f := newFrontend(t, Config{MaxReplayBody: tt.maxReplayBody}, Route{Balancer: bal})

			failed := 0
			for range 2 {
				var body io.Reader = strings.NewReader(payload)
				if tt.chunked {
					body = io.MultiReader(body) // unknown length: sent chunked
				}
				res, got := f.do(t, ctx, tt.method, "/", body, nil)
				switch {
				case res.StatusCode == http.StatusBadGateway:
					failed++
				case res.StatusCode != http.StatusOK || got != payload:
					t.Errorf("status %d body %q, want 200 %q", res.StatusCode, got, payload)
				}
			}
			met := int(dies.hits.Load())
			if met == 0 {
				t.Fatal("no request met the dying instance")
			}
			if want := map[bool]int{true: 0, false: met}[tt.replayed]; failed != want {
				t.Errorf("%d requests failed with %d meeting the dying instance, want %d", failed, met, want)
			}
			if want := 2 - failed; int(ok.hits.Load()) != want {
				t.Errorf("ok instance got %d requests, want %d", ok.hits.Load(), want)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, b := range bodies {
				if b != payload {
					t.Errorf("upstream received body %q, want %q", b, payload)
				}
			}
		})
	}
}

func TestPickErrors(t *testing.T) {
	noPool, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	empty := newBalancer(t, "api")
	ctx := testCtx(t)
	f := newFrontend(t, Config{},
		Route{PathPrefix: "/web", Balancer: noPool},
		Route{PathPrefix: "/api", Balancer: empty},
	)
	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/web/x", http.StatusServiceUnavailable, "service web: no pool yet, waiting for Consul\n"},
		{"/api/x", http.StatusServiceUnavailable, "no instance available for service api\n"},
		{"/other", http.StatusNotFound, "no route\n"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			res, body := f.do(t, ctx, "GET", tt.path, nil, nil)
			if res.StatusCode != tt.status || body != tt.body {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, body, tt.status, tt.body)
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q, want text/plain", ct)
			}
		})
	}
}

func TestDrainingHeader(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		status   int  // what the draining instance answers
		alone    bool // the draining instance is the only one
		requests int
		want     map[int]int // statuses the client sees
	}{
		{name: "503 retried elsewhere", method: "GET", status: 503, requests: 2, want: map[int]int{200: 2}},
		{name: "200 passed on", method: "GET", status: 200, requests: 2, want: map[int]int{200: 2}},
		{name: "503 to a POST passed on", method: "POST", status: 503, requests: 2, want: map[int]int{200: 1, 503: 1}},
		{name: "503 with nobody else passed on", method: "GET", status: 503, alone: true, requests: 1, want: map[int]int{503: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			draining := newUpstream(t, "draining", func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set(wire.DrainingHeader, "1")
				w.WriteHeader(tt.status)
				io.WriteString(w, "draining")
			})
			ok := nameUpstream(t, "ok")
			insts := []lb.Instance{draining.instance()}
			if !tt.alone {
				insts = append(insts, ok.instance())
			}
			bal := newBalancer(t, "web", insts...)
			f := newFrontend(t, Config{}, Route{Balancer: bal})

			got := map[int]int{}
			for range tt.requests {
				var body io.Reader
				if tt.method == "POST" {
					body = strings.NewReader("x")
				}
				res, _ := f.do(t, ctx, tt.method, "/", body, nil)
				got[res.StatusCode]++
				if res.Header.Get(wire.DrainingHeader) != "" {
					t.Errorf("the drain header reached the client")
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("statuses %v, want %v", got, tt.want)
			}
			// Round robin meets the draining instance once in two requests;
			// once marked draining it gets no more.
			if draining.hits.Load() != 1 {
				t.Errorf("draining instance got %d requests, want exactly 1", draining.hits.Load())
			}
			if in := bal.Pool().Instances[0]; in.ID != "draining" || !in.Stats.Draining.Load() {
				t.Errorf("instance %s not marked draining", in.ID)
			}
		})
	}
}

func TestResponseHeaderTimeout(t *testing.T) {
	ctx := testCtx(t)
	release := make(chan struct{})
	defer close(release)
	slow := newUpstream(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	bal := newBalancer(t, "web", slow.instance())
	f := newFrontend(t, Config{ResponseHeaderTimeout: 100 * time.Millisecond}, Route{Balancer: bal})
	res, body := f.do(t, ctx, "GET", "/", nil, nil)
	if res.StatusCode != http.StatusGatewayTimeout || body != "upstream of service web timed out\n" {
		t.Errorf("got %d %q, want 504", res.StatusCode, body)
	}
}

func TestClientCancelPropagates(t *testing.T) {
	ctx := testCtx(t)
	arrived := make(chan struct{})
	canceled := make(chan struct{})
	up := newUpstream(t, "up", func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-ctx.Done():
		}
	})
	bal := newBalancer(t, "web", up.instance())
	f := newFrontend(t, Config{}, Route{Balancer: bal})

	reqCtx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(reqCtx, "GET", f.srv.URL+"/", nil)
	errc := make(chan error, 1)
	go func() {
		res, err := f.client.Do(req)
		if err == nil {
			res.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("request never reached the upstream")
	}
	cancel()
	select {
	case <-canceled:
	case <-ctx.Done():
		t.Fatal("the upstream request was not canceled with the client's")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client error %v, want context.Canceled", err)
	}
	// The cancellation is no failure of the instance.
	if n := bal.Pool().Instances[0].Stats.Failures.Load(); n != 0 {
		t.Errorf("instance failures %d after a client cancel, want 0", n)
	}
}

func TestEveryAttemptDone(t *testing.T) {
	ctx := testCtx(t)
	dies := newUpstream(t, "dies", resetAfterRead(t))
	ok := nameUpstream(t, "ok")
	dead := instanceAt("dead", closedAddr(t))
	bal := newBalancer(t, "web", dies.instance(), ok.instance(), dead)
	f := newFrontend(t, Config{}, Route{Balancer: bal})
	for range 6 {
		f.do(t, ctx, "GET", "/", nil, nil)
		f.do(t, ctx, "POST", "/", bytes.NewReader([]byte("x")), nil)
	}
	for _, in := range bal.Pool().Instances {
		if n := in.Stats.InFlight.Load(); n != 0 {
			t.Errorf("instance %s: %d in flight after all requests ended", in.ID, n)
		}
	}
}

func TestNewValidates(t *testing.T) {
	bal := newBalancer(t, "web")
	tests := []struct {
		name   string
		cfg    Config
		routes []Route
		want   string
	}{
		{"no routes", Config{}, nil, "no routes"},
		{"nil balancer", Config{}, []Route{{Host: "a.example.com"}}, `host "a.example.com" path prefix "": nil balancer`},
		{"duplicate", Config{}, []Route{{PathPrefix: "/api", Balancer: bal}, {PathPrefix: "/api/", Balancer: bal}}, `route 1: duplicate route host "" path prefix "/api/"`},
		{"duplicate host case", Config{}, []Route{{Host: "A.example.com", Balancer: bal}, {Host: "a.example.com", Balancer: bal}}, "duplicate route"},
		{"relative prefix", Config{}, []Route{{PathPrefix: "api", Balancer: bal}}, `invalid path prefix "api"`},
		{"host with port", Config{}, []Route{{Host: "a.example.com:80", Balancer: bal}}, `invalid route host "a.example.com:80"`},
		{"inner wildcard", Config{}, []Route{{Host: "a.*.com", Balancer: bal}}, `invalid route host "a.*.com"`},
		{"negative attempts", Config{MaxAttempts: -1}, []Route{{Balancer: bal}}, "invalid MaxAttempts -1"},
		{"negative timeout", Config{ConnectTimeout: -time.Second}, []Route{{Balancer: bal}}, "invalid ConnectTimeout -1s"},
		{"unknown protocol", Config{}, []Route{{Balancer: bal, Protocol: "h2"}}, `route 0: invalid protocol "h2": want "" (auto`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, tt.routes)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: error %v, want one containing %q", err, tt.want)
			}
		})
	}
	p, err := New(Config{}, []Route{{Balancer: bal}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetRoutes([]Route{{Balancer: bal}, {Balancer: bal}}); err == nil {
		t.Error("SetRoutes accepted duplicate routes")
	}
}

func TestOnFailureReportsFailedRequests(t *testing.T) {
	ctx := testCtx(t)
	type failure struct {
		service, instance, trace string
		status                   int
	}
	got := make(chan failure, 4)
	ok := nameUpstream(t, "ok")
	bal := newBalancer(t, "svc", instanceAt("dead", closedAddr(t)))
	f := newFrontend(t, Config{MaxAttempts: 1, OnFailure: func(s, i, tr string, st int) { got <- failure{s, i, tr, st} }},
		Route{PathPrefix: "/ok", Balancer: newBalancer(t, "good", ok.instance())}, Route{Balancer: bal})

	hdr := http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	res, _ := f.do(t, ctx, http.MethodGet, "/", nil, hdr)
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", res.StatusCode)
	}
	select {
	case fl := <-got:
		want := failure{"svc", "dead", "4bf92f3577b34da6a3ce929d0e0e4736", http.StatusBadGateway}
		if fl != want {
			t.Errorf("OnFailure got %+v, want %+v", fl, want)
		}
	default:
		t.Fatal("OnFailure not called for a 502")
	}
	if res, _ := f.do(t, ctx, http.MethodGet, "/ok", nil, nil); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	select {
	case fl := <-got:
		t.Errorf("OnFailure called for a success: %+v", fl)
	default:
	}
}
