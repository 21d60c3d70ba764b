package discovery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// WatchConfig configures a Watcher.
type WatchConfig struct {
	Service    string
	Tag        string // only instances with this tag, if set
	Datacenter string
	// Stale allows any Consul server to answer (lower load on the leader,
	// may lag it by a little).
	Stale bool
	// Cached answers from the local agent's cache, which uses Consul's
	// streaming backend for health queries where the agent has it
	// (use_streaming_backend, the default on client agents since 1.10). A
	// dev agent is a server and answers from its own state.
	Cached bool
	// WaitTime bounds each blocking query (default 60s; Consul caps it at 10m).
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after errors
	// (defaults 250ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	Logger                 hclog.Logger
}

// WatchStatus is what a Watcher last saw of Consul.
type WatchStatus struct {
	Service     string
	Index       uint64
	LastSuccess time.Time
	LastError   error
	LastErrorAt time.Time
	Errors      uint64
	Instances   int
}

// healthAPI is the part of Consul's health endpoint the watcher needs
// (ACL: service:read on the service, node:read).
type healthAPI interface {
	Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

// Watcher follows the healthy (passing or warning) instances of one service
// with blocking queries on /v1/health/service and calls OnUpdate with a
// fresh slice whenever the set changes. On errors it keeps quiet towards
// OnUpdate, so the last known pool stays in use, and retries with backoff.
type Watcher struct {
	cfg      WatchConfig
	src      healthAPI
	onUpdate func([]lb.Instance)
	log      hclog.Logger
	limit    *limiter

	mu     sync.Mutex
	status WatchStatus
	warned map[string]string // instance ID → reason already logged
}

// NewWatcher returns a watcher for cfg.Service; Run starts it.
func NewWatcher(client *api.Client, cfg WatchConfig, onUpdate func([]lb.Instance)) (*Watcher, error) {
	return newWatcher(client.Health(), cfg, onUpdate)
}

func newWatcher(src healthAPI, cfg WatchConfig, onUpdate func([]lb.Instance)) (*Watcher, error) {
	if err := ValidateServiceName(cfg.Service); err != nil {
		return nil, err
	}
	if onUpdate == nil {
		return nil, errors.New("watcher needs an OnUpdate function")
	}
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = 60 * time.Second
	}
	if cfg.WaitTime > 10*time.Minute {
		return nil, fmt.Errorf("invalid wait time %v: Consul allows at most 10m", cfg.WaitTime)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("invalid backoff: max %v < min %v", cfg.MaxBackoff, cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Watcher{
		cfg: cfg, src: src, onUpdate: onUpdate, log: cfg.Logger,
		// At most 10 queries a second after a burst of 2: a fast-changing
		// index cannot make the loop spin, and a change still lands within
		// 100ms.
		limit:  newLimiter(100*time.Millisecond, 2),
		status: WatchStatus{Service: cfg.Service},
		warned: map[string]string{},
	}, nil
}

// Status returns what the watcher last saw; safe for concurrent use.
func (w *Watcher) Status() WatchStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// Run watches until ctx is done and returns ctx's error.
func (w *Watcher) Run(ctx context.Context) error {
	var (
		index    uint64
		last     []lb.Instance
		first    = true
		failures int
		downAt   time.Time
	)
	for {
		if err := w.limit.wait(ctx); err != nil {
			return err
		}
		q := (&api.QueryOptions{
			Datacenter: w.cfg.Datacenter,
			AllowStale: w.cfg.Stale,
			UseCache:   w.cfg.Cached,
			WaitIndex:  index,
			WaitTime:   w.cfg.WaitTime,
		}).WithContext(ctx)
		entries, meta, err := w.src.Service(w.cfg.Service, w.cfg.Tag, false, q)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && meta == nil {
			err = errors.New("consul answered without query metadata")
		}
		if err != nil {
			failures++
			if failures == 1 {
				downAt = time.Now()
			}
			w.mu.Lock()
			w.status.LastError, w.status.LastErrorAt = err, time.Now()
			w.status.Errors++
			w.mu.Unlock()
			w.logFailure(failures, err)
			t := time.NewTimer(backoff(failures, w.cfg.MinBackoff, w.cfg.MaxBackoff))
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			continue
		}
		if failures > 0 {
			w.log.Info("consul reachable again", "failures", failures, "down_for", time.Since(downAt).Round(time.Millisecond))
			failures = 0
		}
		next := NextIndex(index, meta.LastIndex)
		if next == 0 && index != 0 {
			w.log.Info("consul index went backwards, starting over", "was", index, "now", meta.LastIndex)
		}
		index = next
		insts := Instances(entries, w.warnOnce)
		w.mu.Lock()
		w.status.Index, w.status.LastSuccess, w.status.LastError, w.status.Instances = meta.LastIndex, time.Now(), nil, len(insts)
		w.mu.Unlock()
		if first || !sameInstances(insts, last) {
			first = false
			last = insts
			w.log.Debug("pool changed", "instances", len(insts), "index", meta.LastIndex)
			w.onUpdate(cloneInstances(insts))
		}
	}
}

func cloneInstances(in []lb.Instance) []lb.Instance {
	out := make([]lb.Instance, len(in))
	copy(out, in)
	return out
}

// warnOnce logs a skipped instance once per ID and reason.
func (w *Watcher) warnOnce(id, reason string) {
	w.mu.Lock()
	seen := w.warned[id] == reason
	w.warned[id] = reason
	w.mu.Unlock()
	if !seen {
		w.log.Warn("skipping instance with an unusable address", "instance", id, "reason", reason)
	}
}

// logFailure logs the first failure, then every 10th.
func (w *Watcher) logFailure(n int, err error) {
	if n != 1 && n%10 != 0 {
		return
	}
	if IsACLError(err) {
		w.log.Error("consul refused the token (ACL): reading health of service; the token needs service:read on it and node:read",
			"failures", n, "error", err)
		return
	}
	w.log.Warn("cannot query consul; serving the last known pool and retrying with backoff", "failures", n, "error", err)
}
