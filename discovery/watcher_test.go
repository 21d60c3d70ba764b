package discovery

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// fakeHealth stands in for Health().Service: every query is handed to the
// test on calls, and answered with what the test sends on replies, so the
// test drives the loop step by step without sleeping. It honours the
// query's context like the real client.
type fakeHealth struct {
	calls   chan fakeCall
	replies chan fakeReply
}

type fakeCall struct {
	service, tag string
	passingOnly  bool
	q            *api.QueryOptions
}

type fakeReply struct {
	entries []*api.ServiceEntry
	index   uint64
	backend string
	err     error
}

func (f *fakeHealth) Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx := q.Context()
	select {
	case f.calls <- fakeCall{service: service, tag: tag, passingOnly: passingOnly, q: q}:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	select {
	case r := <-f.replies:
		if r.err != nil {
			return nil, nil, r.err
		}
		return r.entries, &api.QueryMeta{LastIndex: r.index, QueryBackend: r.backend}, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// lockedBuffer collects log output written from the loop's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count returns how many log lines contain s.
func (l *lockedBuffer) count(s string) int {
	n := 0
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

type loopHarness struct {
	t       *testing.T
	ctx     context.Context
	cancel  context.CancelFunc
	fake    *fakeHealth
	w       *Watcher
	updates chan []lb.Instance
	done    chan error
	logs    *lockedBuffer
}

// startLoop runs a watcher of "web" against a fake source; cfg may set
// anything but Service and Logger. Pacing is fast so that only the script
// decides what happens.
func startLoop(t *testing.T, cfg WatchConfig) *loopHarness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	h := &loopHarness{
		t: t, ctx: ctx, cancel: cancel,
		fake:    &fakeHealth{calls: make(chan fakeCall), replies: make(chan fakeReply)},
		updates: make(chan []lb.Instance, 100),
		done:    make(chan error, 1),
		logs:    &lockedBuffer{},
	}
	cfg.Service = "web"
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "watch", Output: h.logs, Level: hclog.Debug})
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = time.Millisecond, 5*time.Millisecond
	}
	if cfg.QueryInterval == 0 {
		cfg.QueryInterval = time.Microsecond
	}
	w, err := newWatcher(h.fake, cfg, func(p []lb.Instance) { h.updates <- p })
	if err != nil {
		t.Fatalf("newWatcher: %v", err)
	}
	h.w = w
	go func() { h.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

// next waits for the loop's next query, checks it waits on wantIndex and
// that OnUpdate was not called since the last check (the loop calls
// OnUpdate before it queries again, so this is exact), and answers r.
func (h *loopHarness) next(wantIndex uint64, r fakeReply) fakeCall {
	h.t.Helper()
	c := h.call()
	if c.q.WaitIndex != wantIndex {
		h.t.Fatalf("query waits on index %d, want %d", c.q.WaitIndex, wantIndex)
	}
	h.noUpdate()
	h.reply(r)
	return c
}

// in returns the harness reporting to t (a subtest of the one that
// started it).
func (h *loopHarness) in(t *testing.T) *loopHarness {
	c := *h
	c.t = t
	return &c
}

func (h *loopHarness) call() fakeCall {
	h.t.Helper()
	select {
	case c := <-h.fake.calls:
		return c
	case err := <-h.done:
		h.t.Fatalf("Run returned %v while a query was expected", err)
	case <-h.ctx.Done():
		h.t.Fatal("no query within the test's deadline")
	}
	return fakeCall{}
}

func (h *loopHarness) reply(r fakeReply) {
	h.t.Helper()
	select {
	case h.fake.replies <- r:
	case <-h.ctx.Done():
		h.t.Fatal("loop did not take the reply")
	}
}

func (h *loopHarness) noUpdate() {
	h.t.Helper()
	select {
	case p := <-h.updates:
		h.t.Fatalf("unexpected OnUpdate with %v", ids(p))
	default:
	}
}

// update returns the OnUpdate that the query just answered caused: it waits
// for the following query (so OnUpdate has run) without answering it.
func (h *loopHarness) update() ([]lb.Instance, fakeCall) {
	h.t.Helper()
	c := h.call()
	select {
	case p := <-h.updates:
		h.noUpdate()
		return p, c
	default:
		h.t.Fatal("no OnUpdate after a changed pool")
	}
	return nil, c
}

func entries(es ...*api.ServiceEntry) []*api.ServiceEntry { return es }

func TestWatchLoop(t *testing.T) {
	h := startLoop(t, WatchConfig{Tag: "canary", Datacenter: "dc2", Stale: true, Cached: true, WaitTime: 42 * time.Second})
	a := svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing)
	a2 := svcEntry("a", "n1", "10.0.0.1", "", 9090, api.HealthPassing)
	b := svcEntry("b", "n2", "10.0.0.2", "", 8080, api.HealthWarning)

	// First query: not blocking, with the configured options.
	c := h.next(0, fakeReply{entries: entries(a), index: 10, backend: api.QueryBackendStreaming})
	if c.service != "web" || c.tag != "canary" || c.passingOnly {
		t.Errorf("query (%q, %q, passingOnly=%v), want (web, canary, false)", c.service, c.tag, c.passingOnly)
	}
	if q := c.q; q.Datacenter != "dc2" || !q.AllowStale || !q.UseCache || q.WaitTime != 42*time.Second || q.RequireConsistent {
		t.Errorf("query options %+v: want dc2, stale, cached, wait 42s", *q)
	}
	if _, ok := c.q.Context().Deadline(); !ok {
		t.Error("query context has no deadline: a dead connection could hang the loop")
	}

	t.Run("first answer is published", func(t *testing.T) {
		h := h.in(t)
		p, c := h.update()
		if len(p) != 1 || p[0].HostPort != "10.0.0.1:8080" || p[0].Weight != 5 {
			t.Fatalf("OnUpdate(%+v), want [a at 10.0.0.1:8080 weight 5]", p)
		}
		if c.q.WaitIndex != 10 {
			t.Fatalf("second query waits on %d, want 10", c.q.WaitIndex)
		}
		st := h.w.Status()
		if st.Index != 10 || st.Instances != 1 || st.LastSuccess.IsZero() || st.LastError != nil || st.Backend != "streaming" {
			t.Fatalf("Status() = %+v", st)
		}
		// The consumer owns the slice it got (Tags and Meta are shared
		// and read-only): scribbling on it must not confuse the
		// watcher's change detection.
		p[0].Weight, p[0].Port, p[0].Tags = 99, 1, []string{"x"}
		h.reply(fakeReply{entries: entries(a), index: 10}) // wait timed out
	})
	t.Run("same index: no update", func(t *testing.T) {
		h := h.in(t)
		h.next(10, fakeReply{entries: entries(a), index: 11}) // idempotent write
	})
	t.Run("new index, same set: no update", func(t *testing.T) {
		h := h.in(t)
		h.next(11, fakeReply{entries: entries(a2), index: 12})
	})
	t.Run("changed set: update", func(t *testing.T) {
		h := h.in(t)
		p, c := h.update()
		if c.q.WaitIndex != 12 || len(p) != 1 || p[0].Port != 9090 {
			t.Fatalf("OnUpdate(%+v) waiting on %d, want [a:9090] waiting on 12", p, c.q.WaitIndex)
		}
		h.reply(fakeReply{entries: entries(a2), index: 5}) // backwards
	})
	t.Run("index went backwards: reset to a non-blocking read", func(t *testing.T) {
		h := h.in(t)
		h.next(0, fakeReply{entries: entries(a2, b), index: 6})
		p, c := h.update()
		if c.q.WaitIndex != 6 || len(p) != 2 || p[1].ID != "b" || p[1].Weight != 2 {
			t.Fatalf("OnUpdate(%+v) waiting on %d, want [a b(weight 2)] waiting on 6", p, c.q.WaitIndex)
		}
		h.reply(fakeReply{entries: entries(a2, b), index: 0}) // Consul bug: a lower index
	})
	t.Run("index 0: reset, and never wait on 0", func(t *testing.T) {
		h := h.in(t)
		h.next(0, fakeReply{entries: entries(a2, b), index: 0}) // still 0
		h.next(1, fakeReply{err: errors.New("dial tcp 127.0.0.1:8500: connect: connection refused")})
	})
	t.Run("errors: no update, status says so, backoff", func(t *testing.T) {
		h := h.in(t)
		// After an error the loop reads the full state again: the agent
		// that answers next may have restarted.
		h.next(0, fakeReply{err: errors.New("unexpected EOF")})
		c := h.call()
		h.noUpdate()
		st := h.w.Status()
		if st.LastError == nil || !strings.Contains(st.LastError.Error(), "unexpected EOF") || !strings.Contains(st.LastError.Error(), `"web"`) {
			t.Errorf("Status().LastError = %v, want the error naming the service", st.LastError)
		}
		if st.Errors != 2 || st.LastErrorAt.IsZero() || st.DownSince.IsZero() || st.Instances != 2 {
			t.Errorf("Status() = %+v, want 2 errors, down, still 2 instances", st)
		}
		if h.w.fails.backoff.Failures() != 2 {
			t.Errorf("backoff failures = %d, want 2", h.w.fails.backoff.Failures())
		}
		if c.q.WaitIndex != 0 {
			t.Errorf("query after errors waits on %d, want 0 (a fresh read)", c.q.WaitIndex)
		}
		h.reply(fakeReply{entries: nil, index: 20}) // every instance gone
	})
	t.Run("recovery resets backoff; an empty pool is a change", func(t *testing.T) {
		h := h.in(t)
		p, c := h.update()
		if len(p) != 0 || c.q.WaitIndex != 20 {
			t.Fatalf("OnUpdate(%v) waiting on %d, want [] waiting on 20", ids(p), c.q.WaitIndex)
		}
		st := h.w.Status()
		if st.LastError != nil || !st.DownSince.IsZero() || st.Errors != 2 || st.Index != 20 || st.Instances != 0 {
			t.Errorf("Status() = %+v, want recovered, 2 errors, index 20, 0 instances", st)
		}
		if h.w.fails.backoff.Failures() != 0 {
			t.Errorf("backoff failures = %d after a success, want 0", h.w.fails.backoff.Failures())
		}
		if n := h.logs.count("consul answers again"); n != 1 || h.logs.count("down_for=") < 2 {
			t.Errorf("recovery logged %d times, want once with down_for:\n%s", n, h.logs)
		}
	})
	t.Run("cancel stops a blocked query", func(t *testing.T) {
		h := h.in(t)
		start := time.Now()
		h.cancel()
		select {
		case err := <-h.done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Run returned %v, want context.Canceled", err)
			}
			h.done <- err // for the cleanup
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Run took %v to stop", el)
		}
	})
}

// TestWatchRereadsAfterErrors replays what a restarted dev agent did: its
// index reached exactly the one the watcher waited on, with a different
// pool. Comparing indexes alone would call that "no news".
func TestWatchRereadsAfterErrors(t *testing.T) {
	h := startLoop(t, WatchConfig{})
	h.next(0, fakeReply{entries: entries(svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing)), index: 15})
	h.update()
	h.reply(fakeReply{err: errors.New("connection refused")})
	h.next(0, fakeReply{entries: entries(svcEntry("a", "n1", "10.0.0.1", "", 8081, api.HealthPassing)), index: 15})
	p, c := h.update()
	if len(p) != 1 || p[0].Port != 8081 || c.q.WaitIndex != 15 {
		t.Fatalf("OnUpdate(%+v) then waiting on %d, want [a:8081] then 15", p, c.q.WaitIndex)
	}
}

func TestWatchFailureLogging(t *testing.T) {
	h := startLoop(t, WatchConfig{})
	a := svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing)
	h.next(0, fakeReply{entries: entries(a), index: 3})
	h.update()
	acl := api.StatusError{Code: 403, Body: "Permission denied: token with AccessorID '00000000' lacks permission 'service:read' on \"web\""}
	h.reply(fakeReply{err: acl})
	for range 11 { // 12 ACL failures in all
		h.next(0, fakeReply{err: acl})
	}
	h.call()
	if st := h.w.Status(); !IsACLError(st.LastError) || !strings.Contains(st.LastError.Error(), `consul refused the token (ACL): reading health of service "web"`) {
		t.Errorf("Status().LastError = %v, want it named as an ACL refusal", st.LastError)
	}
	h.reply(fakeReply{err: errors.New("connection refused")}) // another kind: logged at once
	for range 3 {
		h.next(0, fakeReply{err: errors.New("connection refused")})
	}
	h.next(0, fakeReply{entries: entries(a), index: 4})
	h.call() // the recovery is logged before this query
	h.noUpdate()

	logs := h.logs.String()
	if n := h.logs.count("consul refused the token (ACL): reading health of service"); n != 2 {
		t.Errorf("ACL refusal logged %d times for 12 failures, want 2 (1st and 10th):\n%s", n, logs)
	}
	if n := h.logs.count("cannot read health of service from consul"); n != 1 {
		t.Errorf("connection failure logged %d times, want once (the kind changed):\n%s", n, logs)
	}
	if h.logs.count("service=web") < 4 {
		t.Errorf("log lines do not name the service:\n%s", logs)
	}
	if n := h.logs.count("consul answers again"); n != 1 || !strings.Contains(logs, "failures=16") {
		t.Errorf("recovery logged %d times, want once with failures=16:\n%s", n, logs)
	}
}

func TestWatchWarnsOncePerBadInstance(t *testing.T) {
	h := startLoop(t, WatchConfig{})
	good := svcEntry("good", "n1", "10.0.0.1", "", 80, api.HealthPassing)
	good2 := svcEntry("good", "n1", "10.0.0.1", "", 81, api.HealthPassing)
	bad := svcEntry("bad", "n1", "10.0.0.1", "", 0, api.HealthPassing)
	fixed := svcEntry("bad", "n1", "10.0.0.1", "", 82, api.HealthPassing)
	const msg = "skipping an instance that cannot be dialled"

	h.next(0, fakeReply{entries: entries(good, bad), index: 1})
	p, _ := h.update()
	if len(p) != 1 || h.logs.count(msg) != 1 {
		t.Fatalf("pool %v and %d warnings, want [good] and 1", ids(p), h.logs.count(msg))
	}
	h.reply(fakeReply{entries: entries(good2, bad), index: 2}) // another poll, still bad
	h.update()
	if n := h.logs.count(msg); n != 1 {
		t.Fatalf("bad instance warned %d times over two polls, want once", n)
	}
	h.reply(fakeReply{entries: entries(good2, fixed), index: 3})
	h.update()
	h.reply(fakeReply{entries: entries(good, bad), index: 4}) // broken again: worth a new warning
	h.update()
	if n := h.logs.count(msg); n != 2 || h.logs.count("instance=bad") != 2 {
		t.Fatalf("warned %d times, want 2 (first time, and again after it was fixed):\n%s", n, h.logs)
	}
}

func TestWatchStopsDuringBackoff(t *testing.T) {
	h := startLoop(t, WatchConfig{MinBackoff: time.Hour, MaxBackoff: time.Hour})
	h.next(0, fakeReply{err: errors.New("connection refused")})
	// The loop now sleeps up to an hour; cancelling must end it at once.
	deadline := time.After(5 * time.Second)
	for h.w.Status().Errors == 0 {
		select {
		case <-deadline:
			t.Fatal("the error was never recorded")
		case <-time.After(time.Millisecond):
		}
	}
	start := time.Now()
	h.cancel()
	select {
	case err := <-h.done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
		h.done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel during backoff")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("Run took %v to stop", el)
	}
}

func TestNewWatcherValidates(t *testing.T) {
	ok := func([]lb.Instance) {}
	for _, tc := range []struct {
		name     string
		cfg      WatchConfig
		onUpdate func([]lb.Instance)
		want     string
	}{
		{"no service", WatchConfig{}, ok, "empty"},
		{"no OnUpdate", WatchConfig{Service: "web"}, nil, "OnUpdate"},
		{"name that breaks the URL", WatchConfig{Service: "web?x=1"}, ok, `"?"`},
		{"name with a slash", WatchConfig{Service: "a/b"}, ok, `"/"`},
		{"wait above Consul's cap", WatchConfig{Service: "web", WaitTime: 11 * time.Minute}, ok, "11m0s"},
		{"negative wait", WatchConfig{Service: "web", WaitTime: -time.Second}, ok, "-1s"},
		{"min backoff above max", WatchConfig{Service: "web", MinBackoff: time.Minute, MaxBackoff: time.Second}, ok, "1m0s..1s"},
		{"negative backoff", WatchConfig{Service: "web", MinBackoff: -time.Second, MaxBackoff: time.Second}, ok, "-1s"},
		{"negative query interval", WatchConfig{Service: "web", QueryInterval: -time.Second}, ok, "-1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newWatcher(&fakeHealth{}, tc.cfg, tc.onUpdate)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("newWatcher = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := NewWatcher(nil, WatchConfig{Service: "web"}, ok); err == nil {
		t.Error("NewWatcher(nil client) succeeded, want an error")
	}
	w, err := newWatcher(&fakeHealth{}, WatchConfig{Service: "web", MinBackoff: time.Minute}, ok)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if w.cfg.WaitTime != DefaultWaitTime || w.cfg.MaxBackoff != time.Minute || w.cfg.QueryInterval != DefaultQueryInterval {
		t.Errorf("defaults = %+v", w.cfg)
	}
}

func TestWatchConfigureTransport(t *testing.T) {
	cfg := api.DefaultConfig()
	ConfigureTransport(cfg, 12)
	if got := cfg.Transport.MaxIdleConnsPerHost; got < 12 {
		t.Fatalf("MaxIdleConnsPerHost = %d for 12 watchers, want at least 12", got)
	}
	if cfg.Transport.MaxConnsPerHost != 0 && cfg.Transport.MaxConnsPerHost < 12 {
		t.Fatalf("MaxConnsPerHost = %d would queue watchers", cfg.Transport.MaxConnsPerHost)
	}
	cfg.Transport.MaxConnsPerHost = 3
	ConfigureTransport(cfg, 12)
	if cfg.Transport.MaxConnsPerHost < 12 {
		t.Fatalf("MaxConnsPerHost = %d after ConfigureTransport, want at least 12", cfg.Transport.MaxConnsPerHost)
	}
	empty := &api.Config{}
	ConfigureTransport(empty, 1)
	if empty.Transport == nil || empty.Transport.MaxIdleConnsPerHost < 1 {
		t.Fatal("ConfigureTransport left an empty config without a sized transport")
	}
}
