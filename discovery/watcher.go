package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// Defaults and limits of WatchConfig.
const (
	DefaultWaitTime      = 60 * time.Second
	MaxWaitTime          = 10 * time.Minute // Consul's own cap on ?wait
	DefaultMinBackoff    = 250 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultQueryInterval = 500 * time.Millisecond
	queryBurst           = 2
	// logEveryNth: after the first failure of an outage, log every Nth.
	logEveryNth = 10
	// requestSlack is added to the wait time (plus Consul's wait/16 jitter)
	// for the whole request, so a connection that died silently cannot
	// hold the long poll forever.
	requestSlack = 10 * time.Second
)

// WatchConfig configures a Watcher.
type WatchConfig struct {
	// Service is the Consul service name to follow.
	Service string
	// Tag, when set, keeps only instances carrying this tag.
	Tag string
	// Datacenter defaults to the agent's own.
	Datacenter string
	// Stale allows any Consul server to answer (?stale), not only the
	// leader: reads scale across servers and keep working without a leader,
	// at the price of lagging the leader a little (usually under 50ms).
	Stale bool
	// Cached asks the local agent to answer from its cache (?cached).
	// /v1/health/service supports background-refresh caching: the agent
	// keeps one blocking watch per service towards the servers and answers
	// every local watcher from it, and keeps answering (with a growing Age)
	// when it loses the servers. On Consul 1.10 and later the agent serves
	// health queries from its streaming backend (use_streaming_backend,
	// true by default) whenever ?index or ?cached is set, so a blocking
	// query uses streaming anyway; Cached changes only the first,
	// non-blocking read. A dev agent is a server with streaming on: it
	// answers ?cached from a streaming view of its own state (measured on
	// 1.16: X-Consul-Query-Backend: streaming, X-Cache: MISS then HIT), so
	// the behaviour is the same as without Cached. WatchStatus.Backend
	// shows which backend answered.
	Cached bool
	// WaitTime bounds each blocking query (?wait): default 60s, at most 10m
	// (Consul's cap; it adds up to WaitTime/16 of jitter).
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the wait after failed queries:
	// capped exponential with full jitter, reset by a success. Defaults
	// 250ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// QueryInterval is the refill period of the token bucket (burst 2)
	// that paces queries: default 500ms. A long poll that lasts longer
	// never waits for it; a result that churns is read at most once per
	// interval instead of in a busy loop.
	QueryInterval time.Duration
	// Logger receives the watcher's logs, with "service" added; name it
	// for the component (e.g. root.Named("watch")). Nil discards logs.
	Logger hclog.Logger
}

// WatchStatus is what a Watcher last saw of Consul.
type WatchStatus struct {
	Service string
	// Index is the X-Consul-Index of the last successful answer.
	Index       uint64
	LastSuccess time.Time
	// LastError is the error of the last query while it is failing, nil
	// once a query succeeds again; LastErrorAt keeps when it last failed.
	LastError   error
	LastErrorAt time.Time
	// Errors counts failed queries since the watcher started.
	Errors uint64
	// Instances is the size of the pool last handed to OnUpdate.
	Instances int
	// DownSince is when the current run of failures began; zero while
	// queries succeed.
	DownSince time.Time
	// Backend is the query backend that last answered ("streaming" or
	// "blocking-query", from X-Consul-Query-Backend; empty when Consul did
	// not say).
	Backend string
}

// healthSource is the part of consul/api the watch loop needs: one call,
// Health().Service, which needs an ACL token with service:read on the
// service and node:read on the nodes.
type healthSource interface {
	Service(service, tag string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

// Watcher follows the healthy instances of one service with blocking
// queries on /v1/health/service and calls OnUpdate with a fresh slice only
// when the set (IDs, addresses, ports, weights, tags, meta) changes.
//
// It keeps serving: when Consul fails or refuses, OnUpdate is not called and
// the consumer keeps the last known pool; the watcher retries with backoff.
// Several Watchers may share one api.Client (and so one HTTP connection
// pool): see ConfigureTransport.
type Watcher struct {
	cfg      WatchConfig
	src      healthSource
	onUpdate func([]lb.Instance)
	log      hclog.Logger
	limit    *limiter
	// fails is the failure bookkeeping of the loop feeding the watcher
	// (Run, or the hub's reads); only that goroutine touches it.
	fails readFailures
	// warned holds the instances already logged as unusable, with the
	// reason; only the Run goroutine touches it.
	warned map[string]string
	// loop is the watch loop's memory; see loopState.
	loop loopState
	// fed: made by Hub.Add, which reads for it; Run refuses to start.
	fed bool
	// slots hold the answers of the watcher's own loop (leanread.go):
	// slots[1] the last one decoded.
	slots [2]*leanSlot

	mu     sync.Mutex
	status WatchStatus
	// readFailing: the hub's last read of a fed watcher failed.
	readFailing bool

	failedIDs atomic.Pointer[map[string]bool] // see Failed
	// forgetNext: Consul failed since the last answer; the next one may
	// come from a restarted agent whose ModifyIndexes start over, so the
	// builder must not reuse instances by index (instbuild.go).
	forgetNext bool
}

// forgetIndexes makes the next conversion rebuild every instance once
// (compared by value, so no spurious update). Safe from any goroutine.
func (w *Watcher) forgetIndexes() {
	w.mu.Lock()
	w.forgetNext = true
	w.mu.Unlock()
}

// NewWatcher returns a watcher of cfg.Service; Run starts it. onUpdate is
// called from Run's goroutine with a slice that the watcher never touches
// again; the instances' Tags and Meta are shared with the watcher's later
// pools (an unchanged instance is not decoded again) and must not be
// modified. onUpdate should not block for long, since the next query
// waits for it.
func NewWatcher(client *api.Client, cfg WatchConfig, onUpdate func([]lb.Instance)) (*Watcher, error) {
	if client == nil {
		return nil, errors.New("watcher needs a consul client, got nil")
	}
	return newWatcher(client.Health(), cfg, onUpdate)
}

func newWatcher(src healthSource, cfg WatchConfig, onUpdate func([]lb.Instance)) (*Watcher, error) {
	if cfg.Service == "" {
		return nil, errors.New("watcher needs a service name, got an empty one")
	}
	// consul/api puts the name into the URL path unescaped.
	if i := strings.IndexFunc(cfg.Service, func(r rune) bool {
		return r == '/' || r == '?' || r == '#' || r == '%' || r <= ' ' || r == 0x7f
	}); i >= 0 {
		return nil, fmt.Errorf("invalid service name %q: %q cannot be part of a Consul URL path", cfg.Service, cfg.Service[i:i+1])
	}
	if onUpdate == nil {
		return nil, fmt.Errorf("watcher of service %q needs an OnUpdate function, got nil", cfg.Service)
	}
	switch {
	case cfg.WaitTime == 0:
		cfg.WaitTime = DefaultWaitTime
	case cfg.WaitTime < 0 || cfg.WaitTime > MaxWaitTime:
		return nil, fmt.Errorf("invalid wait time %v for service %q: want more than 0 and at most %v (Consul's cap)", cfg.WaitTime, cfg.Service, MaxWaitTime)
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("invalid backoff %v..%v for service %q: want 0 < min <= max", cfg.MinBackoff, cfg.MaxBackoff, cfg.Service)
	}
	switch {
	case cfg.QueryInterval == 0:
		cfg.QueryInterval = DefaultQueryInterval
	case cfg.QueryInterval < 0:
		return nil, fmt.Errorf("invalid query interval %v for service %q: want more than 0", cfg.QueryInterval, cfg.Service)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Watcher{
		cfg:      cfg,
		src:      src,
		onUpdate: onUpdate,
		log:      log.With("service", cfg.Service),
		limit:    newLimiter(cfg.QueryInterval, queryBurst, nil),
		fails:    newReadFailures(cfg.MinBackoff, cfg.MaxBackoff),
		warned:   map[string]string{},
		status:   WatchStatus{Service: cfg.Service},
	}, nil
}

// Status returns what the watcher last saw; safe for concurrent use.
func (w *Watcher) Status() WatchStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// Run watches until ctx is done and returns ctx.Err(). Call it once. A
// watcher made by Hub.Add has no loop of its own: its Run returns an error
// at once, and the hub's Run feeds it.
func (w *Watcher) Run(ctx context.Context) error {
	if w.fed {
		return fmt.Errorf("watcher of service %q is fed by a hub: run the hub instead", w.cfg.Service)
	}
	var index uint64 // what the next query waits on; 0 = do not block
	for {
		if err := w.limit.wait(ctx); err != nil {
			return err
		}
		waitedOn := index
		ans, meta, release, err := w.query(ctx, index)
		if ctx.Err() != nil {
			release()
			return ctx.Err()
		}
		next, retry, failed := w.handle(waitedOn, ans, meta, err)
		size := answerSize(ans)
		release()
		index = next
		if failed {
			retry = max(retry, 0)
		} else {
			retry = paceFor(size)
		}
		if retry > 0 {
			if err := sleepCtx(ctx, retry); err != nil {
				return err
			}
		}
	}
}

// loopState is what the watch loop remembers between answers. Only the
// goroutine feeding the watcher (Run, or the hub for one read at a time)
// touches it.
type loopState struct {
	// builder holds the instances of the last answer, for reuse.
	builder   *instanceBuilder
	published bool
	filtered  bool // the last answer was filtered by ACLs
}

// handle applies one answer of Consul to the watcher: status, logs, and
// OnUpdate when the pool changed. waitedOn is the index the query waited on
// (0: it did not block). It returns the index to wait on next; on failure,
// failed is true, next is 0 and retry is how long to back off.
func (w *Watcher) handle(waitedOn uint64, ans *healthAnswer, meta *api.QueryMeta, err error) (next uint64, retry time.Duration, failed bool) {
	st := &w.loop
	if err == nil && meta == nil {
		err = errors.New("consul answered without query metadata")
	}
	if err != nil {
		now := time.Now()
		f := w.fails.fail(err, fmt.Sprintf("health of service %q", w.cfg.Service), now)
		w.mu.Lock()
		w.status.LastError, w.status.LastErrorAt = f.err, now
		w.status.Errors++
		w.status.DownSince = w.fails.downSince()
		w.mu.Unlock()
		if f.log {
			w.logFailure(f.acl, f.args)
		}
		w.forgetIndexes()
		// Start over with a non-blocking read once Consul answers again:
		// the agent that answers may have restarted or be another one,
		// and its index has nothing to do with ours. Measured with a
		// restarted dev agent: waiting on the old, higher index blocked
		// for the whole WaitTime before the answer went backwards, and
		// when the new agent's index reached the old one exactly, the
		// equal index hid a changed pool until the next write.
		return 0, f.retry, true
	}

	if args := w.fails.ok(time.Now()); args != nil {
		w.log.Info("consul answers again: following the service", args...)
	}
	if meta.ResultsFilteredByACLs != st.filtered {
		st.filtered = meta.ResultsFilteredByACLs
		if st.filtered {
			// Consul answers 200 with the entries the token may not
			// read left out: without this the pool just looks empty.
			w.log.Error("consul refused the token (ACL): reading health of service; results were filtered, the token needs service:read on the service and node:read")
		} else {
			w.log.Info("consul no longer filters the service's results by ACL")
		}
	}
	got := meta.LastIndex
	next = NextIndex(waitedOn, got)
	if next == 0 {
		// Debug: with Stale, answers from servers that lag each other
		// go backwards now and then.
		w.log.Debug("consul index went backwards: reading the full state again", "was", waitedOn, "now", got)
		w.forgetIndexes()
	}
	w.mu.Lock()
	w.status.Index, w.status.LastSuccess = got, time.Now()
	w.status.LastError, w.status.DownSince = nil, time.Time{}
	w.status.Backend = meta.QueryBackend
	w.mu.Unlock()
	if st.published && waitedOn != 0 && got == waitedOn {
		return next, 0, false // equal index: the wait timed out, no news
	}

	insts, changed := w.convert(ans)
	if st.published && !changed {
		return next, 0, false
	}
	st.published = true
	w.mu.Lock()
	w.status.Instances = len(insts)
	w.mu.Unlock()
	w.log.Debug("pool changed", "instances", len(insts), "index", got)
	w.onUpdate(insts) // fresh from the builder, which keeps no reference
	return next, 0, false
}

// query runs one blocking query, bounded by the wait time plus Consul's
// jitter and some slack, and cancelled with ctx. release must be called
// once the answer is handled.
func (w *Watcher) query(ctx context.Context, index uint64) (*healthAnswer, *api.QueryMeta, func(), error) {
	qctx, cancel := context.WithTimeout(ctx, w.cfg.WaitTime+w.cfg.WaitTime/16+requestSlack)
	defer cancel()
	q := &api.QueryOptions{
		Datacenter: w.cfg.Datacenter,
		AllowStale: w.cfg.Stale,
		UseCache:   w.cfg.Cached,
		WaitIndex:  index,
		WaitTime:   w.cfg.WaitTime,
	}
	return w.fetch(qctx, q)
}

// convert builds the pool of an answer, reusing the unchanged instances of
// the last one, and logs each unusable instance once: again only if its
// reason changes, or after it was fine or gone for a poll. changed is
// false when the pool is the same as the last one.
func (w *Watcher) convert(ans *healthAnswer) (insts []lb.Instance, changed bool) {
	if w.loop.builder == nil {
		w.loop.builder = newInstanceBuilder()
	}
	w.mu.Lock()
	forget := w.forgetNext
	w.forgetNext = false
	w.mu.Unlock()
	if forget {
		w.loop.builder.forget()
	}
	bad := make(map[string]string)
	insts, changed = w.loop.builder.build(ans, func(id, reason string) {
		bad[id] = reason
		if w.warned[id] != reason {
			w.log.Warn("skipping an instance that cannot be dialled", "instance", id, "reason", reason)
		}
	})
	w.warned = bad
	failed := failedInAnswer(ans)
	w.failedIDs.Store(&failed)
	return insts, changed
}

func (w *Watcher) logFailure(acl bool, args []any) {
	if acl {
		w.log.Error("consul refused the token (ACL): reading health of service; it needs service:read on the service and node:read; keeping the last known pool", args...)
		return
	}
	w.log.Warn("cannot read health of service from consul; keeping the last known pool", args...)
}

// ConfigureTransport sizes the HTTP connection pool of a Consul client
// configuration for the given number of watchers; call it before
// api.NewClient. Each watcher keeps one long poll open, so watchers sharing
// a client need that many connections at once. consul/api's DefaultConfig
// uses go-cleanhttp's pooled transport, which keeps only GOMAXPROCS+1 idle
// connections per host: with more watchers than that, connections would be
// closed and dialled again as polls return. MaxConnsPerHost, if set, must
// not be lower either, or watchers would queue behind each other's polls.
func ConfigureTransport(cfg *api.Config, watchers int) {
	need := watchers + 2 // plus registration and status calls
	var t *http.Transport
	switch {
	case cfg.HttpClient != nil:
		t, _ = cfg.HttpClient.Transport.(*http.Transport)
	case cfg.Transport != nil:
		t = cfg.Transport
	default:
		cfg.Transport = api.DefaultConfig().Transport
		t = cfg.Transport
	}
	if t == nil {
		return // a custom RoundTripper: its owner sizes it
	}
	if t.MaxIdleConnsPerHost < need {
		t.MaxIdleConnsPerHost = need
	}
	if t.MaxIdleConns != 0 && t.MaxIdleConns < need {
		t.MaxIdleConns = need
	}
	if t.MaxConnsPerHost != 0 && t.MaxConnsPerHost < need {
		t.MaxConnsPerHost = need
	}
}
