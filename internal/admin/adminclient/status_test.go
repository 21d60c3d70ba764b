package adminclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/lb"
)

// statusAgent is an admin Server over hand-fed balancers, served the way
// the agent serves it (HTTP/1 and unencrypted HTTP/2 on one listener).
type statusAgent struct {
	addr    string
	web     *lb.Balancer
	stopRun func()
}

func startStatusAgent(t *testing.T, ctx context.Context) *statusAgent {
	t.Helper()
	web, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	web.Update([]lb.Instance{
		{ID: "web-a", Address: "127.0.0.1", Port: 8071, Weight: 2, Meta: map[string]string{"pid": "1111", "host": "h1"}},
		{ID: "web-b", Address: "127.0.0.1", Port: 8072, Meta: map[string]string{"pid": "2222", "host": "h1"}},
	})
	in := web.Pool().Instances[0]
	in.Stats.Requests.Add(7)
	in.Stats.Failures.Add(2)
	in.Stats.InFlight.Add(1)
	if err := web.SetDraining("web-b", true); err != nil {
		t.Fatal(err)
	}
	api, err := lb.NewBalancer("api", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := admin.New(admin.Options{
		Services: []admin.Service{
			{Balancer: web},
			{Balancer: api, Status: func() admin.WatchInfo {
				return admin.WatchInfo{LastError: "connection refused", Errors: 4}
			}},
		},
		Poll: 20 * time.Millisecond,
	})
	runCtx, cancelRun := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		srv.Run(runCtx)
	}()
	stopRun := func() {
		cancelRun()
		<-runDone
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: srv.Handler(nil), Protocols: &p, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() {
		stopRun()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return &statusAgent{addr: ln.Addr().String(), web: web, stopRun: stopRun}
}

func TestStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ag := startStatusAgent(t, ctx)

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	tests := []struct {
		name      string
		args      []string
		code      int
		stdoutHas []string
		stderrHas []string
	}{
		{"table", []string{"--admin", ag.addr}, exitOK, []string{
			"SERVICE", "INSTANCE", "ADDRESS", "PID", "HOST", "STATE", "INFLIGHT", "REQS", "ERRS", "EWMA", "WEIGHT",
			"web web-a 127.0.0.1:8071 1111 h1 serving 1 7 2 - 2",
			"web web-b 127.0.0.1:8072 2222 h1 draining 0 0 0 - 1",
			"api (no pool yet)",
			"api: discovery failing (4 errors, last success never): connection refused",
		}, nil},
		{"one service", []string{"--admin", ag.addr, "web"}, exitOK, []string{"web-a", "web-b"}, nil},
		{"json", []string{"--admin", ag.addr, "--json"}, exitOK, []string{`"id": "web-a"`, `"state": "draining"`, `"in_flight": 1`}, nil},
		{"unknown service", []string{"--admin", ag.addr, "nope"}, exitFailure, nil,
			[]string{`service "nope" is not served by this agent (it serves: web, api)`}},
		{"unreachable", []string{"--admin", dead}, exitFailure, nil,
			[]string{"cannot reach the agent's admin API at " + dead, "--admin " + dead}},
		{"bad address", []string{"--admin", "nonsense"}, exitBadInput, nil, []string{`invalid --admin "nonsense"`, "HOST:PORT"}},
		{"bad port", []string{"--admin", "127.0.0.1:99999"}, exitBadInput, nil, []string{`port "99999"`}},
		{"bad flag", []string{"--nope"}, exitBadInput, nil, []string{"flag provided but not defined"}},
		{"help", []string{"--help"}, exitOK, nil, []string{"Usage: agent status"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := statusMain(ctx, tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tt.code, &stderr)
			}
			// Compare with the columns' padding collapsed to one space.
			var lines []string
			for _, l := range strings.Split(stdout.String(), "\n") {
				lines = append(lines, strings.Join(strings.Fields(l), " "))
			}
			out := strings.Join(lines, "\n")
			for _, s := range tt.stdoutHas {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, &stdout)
				}
			}
			for _, s := range tt.stderrHas {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, &stderr)
				}
			}
		})
	}

	t.Run("json decodes", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := statusMain(ctx, []string{"--admin", ag.addr, "--json", "web"}, &stdout, &stderr); code != exitOK {
			t.Fatalf("exit %d: %s", code, &stderr)
		}
		var v admin.PoolsView
		if err := json.Unmarshal(stdout.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		if len(v.Pools) != 1 || len(v.Pools[0].Instances) != 2 || v.Pools[0].Instances[0].Requests != 7 ||
			v.Pools[0].Instances[0].PID != "1111" {
			t.Errorf("decoded %+v", v)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// watchRun runs `agent status --watch` until its context is cancelled; lines
// delivers its stdout line by line.
type watchRun struct {
	lines  *bufio.Scanner
	stderr *syncBuffer
	cancel context.CancelFunc
	code   chan int
}

func startWatch(t *testing.T, ctx context.Context, args ...string) *watchRun {
	t.Helper()
	pr, pw := io.Pipe()
	wctx, cancel := context.WithCancel(ctx)
	w := &watchRun{lines: bufio.NewScanner(pr), stderr: &syncBuffer{}, cancel: cancel, code: make(chan int, 1)}
	go func() {
		c := statusMain(wctx, args, pw, w.stderr)
		pw.Close()
		w.code <- c
	}()
	t.Cleanup(func() {
		cancel()
		go func() { _, _ = io.Copy(io.Discard, pr) }()
	})
	return w
}

// waitLine reads lines until one contains every part.
func (w *watchRun) waitLine(t *testing.T, parts ...string) string {
	t.Helper()
	for w.lines.Scan() {
		line := w.lines.Text()
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return line
		}
	}
	t.Fatalf("output ended without a line with %q (%v); stderr:\n%s", parts, w.lines.Err(), w.stderr)
	return ""
}

// exit returns the exit code; reading the rest of the output lets the
// command finish.
func (w *watchRun) exit(t *testing.T, ctx context.Context) int {
	t.Helper()
	for w.lines.Scan() {
	}
	select {
	case c := <-w.code:
		return c
	case <-ctx.Done():
		t.Fatal("agent status --watch did not end")
		return -1
	}
}

func TestStatusWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ag := startStatusAgent(t, ctx)

	t.Run("table", func(t *testing.T) {
		w := startWatch(t, ctx, "--admin", ag.addr, "--watch", "web")
		w.waitLine(t, "web-a", "serving") // the table comes first
		ag.web.Update([]lb.Instance{
			{ID: "web-a", Address: "127.0.0.1", Port: 8071},
			{ID: "web-c", Address: "127.0.0.1", Port: 8073, Meta: map[string]string{"pid": "3333", "host": "h2"}},
		})
		line := w.waitLine(t, "joined", "web-c")
		for _, want := range []string{"web", "127.0.0.1:8073", "pid=3333", "host=h2", "state=serving"} {
			if !strings.Contains(line, want) {
				t.Errorf("event line %q lacks %q", line, want)
			}
		}
		w.waitLine(t, "left", "web-b")
		w.cancel()
		if c := w.exit(t, ctx); c != exitOK {
			t.Errorf("interrupted watch exited %d, want 0; stderr:\n%s", c, w.stderr)
		}
		if !strings.Contains(w.stderr.String(), "watching for changes") {
			t.Errorf("stderr %q does not say it is watching", w.stderr)
		}
	})

	t.Run("json", func(t *testing.T) {
		w := startWatch(t, ctx, "--admin", ag.addr, "--watch", "--json")
		var pools admin.PoolsView
		if err := json.Unmarshal([]byte(w.waitLine(t, `"pools"`)), &pools); err != nil {
			t.Fatal(err)
		}
		if len(pools.Pools) != 2 {
			t.Errorf("first line has %d pools, want 2", len(pools.Pools))
		}
		ag.web.Update([]lb.Instance{{ID: "web-d", Address: "127.0.0.1", Port: 8074}})
		var ev admin.EventView
		if err := json.Unmarshal([]byte(w.waitLine(t, `"joined"`, `"web-d"`)), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Service != "web" || ev.Kind != "joined" || ev.Instance.Address != "127.0.0.1:8074" || ev.Seq == 0 {
			t.Errorf("event %+v", ev)
		}
		w.cancel()
		if c := w.exit(t, ctx); c != exitOK {
			t.Errorf("exit %d, want 0", c)
		}
	})

	t.Run("agent goes away", func(t *testing.T) {
		w := startWatch(t, ctx, "--admin", ag.addr, "--watch")
		w.waitLine(t, "SERVICE")
		ag.stopRun() // the agent stopping ends the watch
		if c := w.exit(t, ctx); c != exitFailure {
			t.Errorf("exit %d, want %d", c, exitFailure)
		}
		if s := w.stderr.String(); !strings.Contains(s, "watch ended") || !strings.Contains(s, "shutting down") {
			t.Errorf("stderr %q does not say the watch ended and why", s)
		}
	})
}
