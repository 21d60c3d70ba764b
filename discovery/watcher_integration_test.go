package discovery

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/lb"
)

// The pool must follow Consul within a second (DESIGN.md).
const maxUpdateDelay = time.Second

// watchReg registers one instance of svc on the dev agent with a passing
// TTL check and weights 5 (passing) / 2 (warning).
func watchReg(t *testing.T, c *api.Client, svc, id string, port int, meta map[string]string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: svc, Address: "127.0.0.1", Port: port, Meta: meta,
		Weights: &api.AgentWeights{Passing: 5, Warning: 2},
		Check:   &api.AgentServiceCheck{CheckID: id + ":ttl", TTL: "5m", Status: api.HealthPassing},
	})
	if err != nil {
		t.Fatalf("registering %s: %v", id, err)
	}
}

func watchTTL(t *testing.T, c *api.Client, id, status string) {
	t.Helper()
	if err := c.Agent().UpdateTTL(id+":ttl", "set by the test", status); err != nil {
		t.Fatalf("setting %s %s: %v", id, status, err)
	}
}

// startWatch runs a watcher until the test ends; its updates arrive on the
// returned channel.
func startWatch(t *testing.T, ctx context.Context, c *api.Client, cfg WatchConfig) (*Watcher, <-chan []lb.Instance) {
	t.Helper()
	updates := make(chan []lb.Instance, 100)
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "watch", Output: tWriter{t}, Level: hclog.Info})
	}
	w, err := NewWatcher(c, cfg, func(p []lb.Instance) { updates <- p })
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
	return w, updates
}

// tWriter sends a watcher's logs to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// waitPool reads updates until one satisfies ok, and returns it with the
// time it took.
func waitPool(t *testing.T, ctx context.Context, updates <-chan []lb.Instance, what string, ok func([]lb.Instance) bool) ([]lb.Instance, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		select {
		case p := <-updates:
			if ok(p) {
				return p, time.Since(start)
			}
		case <-ctx.Done():
			t.Fatalf("no update with %s before the deadline", what)
			return nil, 0
		}
	}
}

func onePool(id string, port, weight int) func([]lb.Instance) bool {
	return func(p []lb.Instance) bool {
		return len(p) == 1 && p[0].ID == id && p[0].Port == port && p[0].Weight == weight &&
			p[0].HostPort == net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
}

func emptyPool(p []lb.Instance) bool { return len(p) == 0 }

func TestWatchIntegration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv := consultest.New(t)
	reg := srv.Client()

	t.Run("follows changes within a second", func(t *testing.T) {
		// Default pacing. The changes below come back to back, faster than
		// the query limiter refills (one token per QueryInterval, 500ms), so
		// this measures the worst case under churn: a change waits for the
		// next token. A change after a quiet spell arrives in milliseconds
		// (see "registered").
		w, updates := startWatch(t, ctx, srv.Client(), WatchConfig{Service: "web"})
		waitPool(t, ctx, updates, "the empty pool of an unknown service", emptyPool)

		steps := []struct {
			name   string
			change func()
			want   func([]lb.Instance) bool
		}{
			{"registered", func() { watchReg(t, reg, "web", "web-1", 8080, map[string]string{"pid": "1"}) }, onePool("web-1", 8080, 5)},
			{"re-registered on another port", func() { watchReg(t, reg, "web", "web-1", 8081, map[string]string{"pid": "1"}) }, onePool("web-1", 8081, 5)},
			{"meta changed", func() { watchReg(t, reg, "web", "web-1", 8081, map[string]string{"pid": "2"}) },
				func(p []lb.Instance) bool { return onePool("web-1", 8081, 5)(p) && p[0].Meta["pid"] == "2" }},
			{"check warning: warning weight", func() { watchTTL(t, reg, "web-1", api.HealthWarning) }, onePool("web-1", 8081, 2)},
			{"check critical: dropped", func() { watchTTL(t, reg, "web-1", api.HealthCritical) }, emptyPool},
			{"check passing again", func() { watchTTL(t, reg, "web-1", api.HealthPassing) }, onePool("web-1", 8081, 5)},
			{"deregistered", func() {
				if err := reg.Agent().ServiceDeregister("web-1"); err != nil {
					t.Fatal(err)
				}
			}, emptyPool},
		}
		for _, s := range steps {
			start := time.Now()
			s.change()
			waitPool(t, ctx, updates, s.name, s.want)
			d := time.Since(start)
			t.Logf("%-30s update arrived in %v", s.name+":", d.Round(100*time.Microsecond))
			if d > maxUpdateDelay {
				t.Errorf("%s: update took %v, want under %v", s.name, d, maxUpdateDelay)
			}
		}
		st := w.Status()
		if st.LastError != nil || st.Index == 0 || st.Errors != 0 || st.LastSuccess.IsZero() {
			t.Errorf("Status() = %+v", st)
		}
		t.Logf("answered by the %q backend at index %d", st.Backend, st.Index)
	})

	t.Run("cached and stale", func(t *testing.T) {
		watchReg(t, reg, "cached", "cached-1", 9000, nil)
		w, updates := startWatch(t, ctx, srv.Client(), WatchConfig{Service: "cached", Cached: true, Stale: true})
		waitPool(t, ctx, updates, "the registered instance", onePool("cached-1", 9000, 5))
		start := time.Now()
		watchTTL(t, reg, "cached-1", api.HealthWarning)
		_, d := waitPool(t, ctx, updates, "the warning weight", onePool("cached-1", 9000, 2))
		t.Logf("cached watch: update arrived in %v (backend %q)", time.Since(start).Round(100*time.Microsecond), w.Status().Backend)
		if d > maxUpdateDelay {
			t.Errorf("cached update took %v, want under %v", d, maxUpdateDelay)
		}
	})

	t.Run("several services share one client", func(t *testing.T) {
		var dials atomic.Int64
		cfg := api.DefaultConfig()
		cfg.Address = srv.HTTPAddr
		cfg.Token = ""
		ConfigureTransport(cfg, 3)
		dial := cfg.Transport.DialContext
		cfg.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, network, addr)
		}
		shared, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		services := []string{"svc-a", "svc-b", "svc-c"}
		updates := map[string]<-chan []lb.Instance{}
		for _, s := range services {
			_, updates[s] = startWatch(t, ctx, shared, WatchConfig{Service: s})
			waitPool(t, ctx, updates[s], s+" empty", emptyPool)
		}
		for round := range 4 {
			for i, s := range services {
				port := 10000 + 10*i + round
				watchReg(t, reg, s, s+"-1", port, nil)
			}
			for i, s := range services {
				port := 10000 + 10*i + round
				waitPool(t, ctx, updates[s], s+" on port "+strconv.Itoa(port), onePool(s+"-1", port, 5))
			}
		}
		// Each watcher holds one long poll; 12 rounds of answers must not
		// have dialled more than one connection per watcher (plus slack
		// for a dial racing a connection coming back to the pool).
		if n := dials.Load(); n > int64(len(services))+2 {
			t.Errorf("%d dials for %d watchers over 12 updates: connections are not reused", n, len(services))
		} else {
			t.Logf("%d watchers, 12 updates, %d connections dialled", len(services), n)
		}
	})
}

func TestWatchConsulRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv := consultest.New(t)
	reg := srv.Client()
	watchReg(t, reg, "web", "web-1", 8080, nil)
	w, updates := startWatch(t, ctx, srv.Client(), WatchConfig{
		Service: "web", WaitTime: 5 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	})
	waitPool(t, ctx, updates, "the registered instance", onePool("web-1", 8080, 5))

	// Taken before Stop: a slow stop (seen under load) had the watcher
	// fail three times while Consul was shutting down, all before Stop
	// returned.
	stopped := time.Now()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// Wait until the watcher has failed a few times (polling its status:
	// the failures happen on the watcher's goroutine with nothing to
	// signal them).
	for w.Status().Errors < 3 {
		select {
		case <-ctx.Done():
			t.Fatal("the watcher never noticed Consul was gone")
		case <-time.After(20 * time.Millisecond):
		}
	}
	st := w.Status()
	if st.LastError == nil || st.DownSince.IsZero() || st.LastErrorAt.Before(stopped) {
		t.Fatalf("Status() while Consul is down = %+v, want LastError and DownSince set", st)
	}
	t.Logf("while down: %d errors, last: %v", st.Errors, st.LastError)
	select {
	case p := <-updates:
		t.Fatalf("OnUpdate(%v) while Consul was down: the last known pool must stay", ids(p))
	default:
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	// A restarted dev agent is empty. Register the instance again, as the
	// registrar does, on another port so that the pool really changes (the
	// same registration would rightly cause no update, unless the watcher
	// saw the empty agent in between, which it publishes as it is).
	watchReg(t, reg, "web", "web-1", 8081, nil)
	waitPool(t, ctx, updates, "the re-registered instance", onePool("web-1", 8081, 5))
	t.Logf("recovered %v after Consul was back (down %v in all)", time.Since(restarted).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	if st := w.Status(); st.LastError != nil || !st.DownSince.IsZero() || st.LastSuccess.Before(restarted) {
		t.Errorf("Status() after recovery = %+v", st)
	}

	// And it keeps following.
	start := time.Now()
	watchTTL(t, reg, "web-1", api.HealthCritical)
	waitPool(t, ctx, updates, "the instance dropped", emptyPool)
	if d := time.Since(start); d > maxUpdateDelay {
		t.Errorf("update after recovery took %v, want under %v", d, maxUpdateDelay)
	}
}
