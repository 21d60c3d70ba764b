package discovery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// HubThreshold is how many services an agent follows with one Watcher (and
// one long poll) each; above it, a Hub keeps the number of connections to
// Consul bounded. Consul refuses more than limits.http_max_conns_per_client
// (200 by default) connections from one address: measured with the bench,
// 1,000 watchers got 354 pools loaded and "429 too many concurrent
// connections" for the rest.
const HubThreshold = 16

// Defaults of HubConfig.
const (
	DefaultHubConcurrency = 8
	DefaultResyncInterval = 5 * time.Minute
)

// catalogPollInterval paces the hub's catalog long poll under churn: every
// catalog answer costs Consul a walk over every service instance, and under
// 20 changes a second at 1,000 services × 10 those answers were a quarter
// of Consul's CPU (perf, at one answer per 100 ms). What the catalog alone
// tells (tags, services appearing or leaving without a check) can wait
// half a second; checks come through the other poll at the full pace.
const catalogPollInterval = 500 * time.Millisecond

// HubConfig configures a Hub. Per-service settings (tag, logger) come with
// each Add.
type HubConfig struct {
	// Datacenter defaults to the agent's own; every service added must
	// name the same one (or none).
	Datacenter string
	// Stale lets any server answer the hub's two long polls (see
	// WatchConfig.Stale); reads follow each service's own setting.
	Stale bool
	// WaitTime, MinBackoff, MaxBackoff and QueryInterval pace the two long
	// polls as they pace a Watcher; same defaults and limits.
	WaitTime               time.Duration
	MinBackoff, MaxBackoff time.Duration
	QueryInterval          time.Duration
	// Concurrency bounds the service reads in flight: default 8. The hub
	// holds at most Concurrency+2 requests to Consul at once.
	Concurrency int
	// ResyncInterval is how often every service is read again even without
	// a sign of change, in case Consul changed underneath the digests (a
	// stale server answered a read, a change no digest sees): default 5m.
	ResyncInterval time.Duration
	// Logger receives the hub's own logs (the long polls); name it for the
	// component. Nil discards them. Each service logs through the Logger
	// of its WatchConfig.
	Logger hclog.Logger
}

// stateSource is Health().State: needs node:read and service:read on what
// it should see (Consul filters out the rest).
type stateSource interface {
	State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error)
}

// catalogSource is Catalog().Services: needs service:read (filtered the
// same way).
type catalogSource interface {
	Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error)
}

// Hub follows any number of services with a bounded number of connections
// to Consul: two long polls for the whole datacenter instead of one per
// service, and non-blocking reads of only the services that changed.
//
//   - /v1/health/state/any (every check, with its service, node, status and
//     ModifyIndex): a service whose checks changed is read again; a node
//     check that changed (serfHealth, node maintenance) makes every watched
//     service with instances on that node read again.
//   - /v1/catalog/services (names and tags): a watched service that
//     appears, disappears or changes tags is read again at once. The
//     answer names no service whose instances changed (an instance without
//     checks registered, a port changed), and one index may hold such a
//     change beside the ones it names (one transaction, or several writes
//     between two answers), so every catalog change also has every service
//     read again in a full pass; passes are spaced by their cost
//     (hubsched.go). Consul's HTTP API has no cheaper way to learn which
//     service such a change touched: /v1/catalog/services carries no
//     index per service, its filter cannot see ModifyIndex, and a probe
//     per service (a filtered read that returns no entries, only the
//     service's X-Consul-Index) cost 0.6-0.7 of a full read's Consul CPU and
//     0.5-0.6 of the agent's, measured at 1,000 services × 10: still a request
//     per service.
//
// Reads are Health().Service calls like a Watcher's, at most Concurrency at
// once, and each answer goes through the service's Watcher exactly as in
// its own loop: the same conversion, OnUpdate only when the pool changed,
// the same status, logs, ACL reporting and backoff after a failed read.
// While a long poll fails, the services keep their pools, their status
// shows the error, and no reads are made; once Consul answers again every
// service is read afresh (as a Watcher starts over from index 0).
//
// The cost moves from connections to bytes: every check change in the
// datacenter returns the full check list to the hub.
type Hub struct {
	cfg     HubConfig
	health  healthSource
	state   stateSource
	catalog catalogSource
	log     hclog.Logger

	mu       sync.Mutex
	watchers []*Watcher
	started  bool

	// busy mirrors the scheduler's busy after each turn of Run's loop, for
	// tests that must know no read is pending.
	busy atomic.Bool
}

// NewHub returns a hub reading through client; add the services with Add,
// then start it with Run.
func NewHub(client *api.Client, cfg HubConfig) (*Hub, error) {
	if client == nil {
		return nil, errors.New("hub needs a consul client, got nil")
	}
	return newHub(client.Health(), client.Health(), client.Catalog(), cfg)
}

func newHub(health healthSource, state stateSource, catalog catalogSource, cfg HubConfig) (*Hub, error) {
	switch {
	case cfg.WaitTime == 0:
		cfg.WaitTime = DefaultWaitTime
	case cfg.WaitTime < 0 || cfg.WaitTime > MaxWaitTime:
		return nil, fmt.Errorf("invalid hub wait time %v: want more than 0 and at most %v (Consul's cap)", cfg.WaitTime, MaxWaitTime)
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("invalid hub backoff %v..%v: want 0 < min <= max", cfg.MinBackoff, cfg.MaxBackoff)
	}
	switch {
	case cfg.QueryInterval == 0:
		cfg.QueryInterval = DefaultQueryInterval
	case cfg.QueryInterval < 0:
		return nil, fmt.Errorf("invalid hub query interval %v: want more than 0", cfg.QueryInterval)
	}
	switch {
	case cfg.Concurrency == 0:
		cfg.Concurrency = DefaultHubConcurrency
	case cfg.Concurrency < 0:
		return nil, fmt.Errorf("invalid hub concurrency %d: want at least 1", cfg.Concurrency)
	}
	switch {
	case cfg.ResyncInterval == 0:
		cfg.ResyncInterval = DefaultResyncInterval
	case cfg.ResyncInterval < 0:
		return nil, fmt.Errorf("invalid hub resync interval %v: want more than 0", cfg.ResyncInterval)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Hub{cfg: cfg, health: health, state: state, catalog: catalog, log: log}, nil
}

// Add returns the Watcher of one more service, fed by the hub: its Status
// works as usual, its Run must not be called. cfg is checked as NewWatcher
// checks it; its Datacenter must be the hub's, and WaitTime and
// QueryInterval are unused. Add must be called before Run.
func (h *Hub) Add(cfg WatchConfig, onUpdate func([]lb.Instance)) (*Watcher, error) {
	if cfg.Datacenter != "" && cfg.Datacenter != h.cfg.Datacenter {
		return nil, fmt.Errorf("service %q names datacenter %q but the hub follows %q: use one hub per datacenter", cfg.Service, cfg.Datacenter, h.cfg.Datacenter)
	}
	w, err := newWatcher(h.health, cfg, onUpdate)
	if err != nil {
		return nil, err
	}
	w.fed = true
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started {
		return nil, fmt.Errorf("cannot add service %q: the hub is already running", cfg.Service)
	}
	h.watchers = append(h.watchers, w)
	return w, nil
}

// pollKind names the hub's two long polls.
type pollKind int

const (
	pollState pollKind = iota
	pollCatalog
)

func (k pollKind) String() string {
	if k == pollState {
		return "health state"
	}
	return "catalog services"
}

// pollEvent is one answer (or failure) of a long poll.
type pollEvent struct {
	kind     pollKind
	checks   api.HealthChecks
	services map[string][]string
	err      error
	// baseline: the query did not block (first one, or after a failure
	// or an index that went backwards), so changes may have been missed.
	baseline bool
	// news: the index moved (or baseline).
	news bool
	// backend is X-Consul-Query-Backend of the answer.
	backend string
}

// readDone is the end of one service read.
type readDone struct {
	w *Watcher
	// nodes are the nodes of the answer's instances.
	nodes  []string
	failed bool
	// skipped: a probe found the service unchanged; nothing was read.
	skipped bool
	// probeTook is the time the probe took (0 without one).
	probeTook time.Duration
	retry     time.Duration
}

// Run follows every added service until ctx is done and returns ctx.Err().
// Call it once.
func (h *Hub) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.started {
		h.mu.Unlock()
		return errors.New("hub is already running")
	}
	h.started = true
	watchers := slices.Clone(h.watchers)
	h.mu.Unlock()

	byName := map[string][]*Watcher{}
	var names []string
	for _, w := range watchers {
		if byName[w.cfg.Service] == nil {
			names = append(names, w.cfg.Service)
		}
		byName[w.cfg.Service] = append(byName[w.cfg.Service], w)
	}
	tracker := newChangeTracker(names)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	events := make(chan pollEvent)
	wg.Add(2)
	go func() { defer wg.Done(); h.poll(ctx, pollState, events) }()
	go func() { defer wg.Done(); h.poll(ctx, pollCatalog, events) }()

	sched := newReadScheduler(watchers, h.cfg.Concurrency)
	defer sched.stop()
	retry := func(w *Watcher, after time.Duration) *time.Timer {
		return time.AfterFunc(after, func() {
			select {
			case sched.retries <- w:
			case <-ctx.Done():
			}
		})
	}
	results := make(chan readDone, h.cfg.Concurrency)
	polls := pollsState{down: map[pollKind]bool{}, seen: map[pollKind]bool{}}
	resync := time.NewTicker(h.cfg.ResyncInterval)
	defer resync.Stop()

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-events:
			h.apply(ev, &polls, tracker, sched, byName, watchers)
		case <-sched.fullDue():
			sched.readAll(time.Now(), true)
		case <-resync.C:
			sched.readAll(time.Now(), false)
		case r := <-results:
			if ctx.Err() != nil {
				continue
			}
			if !r.failed && !r.skipped {
				tracker.read(r.w.cfg.Service, r.nodes)
			}
			sched.done(r, time.Now(), retry)
		case w := <-sched.retries:
			sched.retried(w)
		}
		// Reads wait for both polls: a read before the polls' baseline
		// could miss a change made between the two.
		for polls.ready() {
			w, probe, ok := sched.next()
			if !ok {
				break
			}
			wg.Add(1)
			go func() { defer wg.Done(); results <- h.read(ctx, w, probe) }()
		}
		h.busy.Store(sched.busy())
	}
}

// pollsState is what the hub's loop knows of its two long polls.
type pollsState struct {
	down map[pollKind]bool // failing
	seen map[pollKind]bool // answered at least once
}

// ready: both polls have answered and neither is failing.
func (p *pollsState) ready() bool { return len(p.down) == 0 && len(p.seen) == 2 }

// apply takes one answer (or failure) of a long poll: the services' status,
// and the reads it calls for.
func (h *Hub) apply(ev pollEvent, polls *pollsState, tracker *changeTracker, sched *readScheduler, byName map[string][]*Watcher, watchers []*Watcher) {
	now := time.Now()
	if ev.err != nil {
		polls.down[ev.kind] = true
		for _, w := range watchers {
			w.hubFailed(ev.err, now)
		}
		return
	}
	delete(polls.down, ev.kind)
	polls.seen[ev.kind] = true
	for _, w := range watchers {
		w.hubAnswered(now)
	}
	if !ev.news {
		return
	}
	if ev.baseline {
		// Something may have changed unseen, Consul may even have
		// restarted with indexes that start over: read everything.
		sched.readAll(now, false)
	}
	var (
		dirty []string
		full  bool
	)
	switch ev.kind {
	case pollState:
		var nodes bool
		dirty, nodes = tracker.stateAnswer(ev.checks, ev.baseline)
		if nodes {
			// A read in flight may show an instance on the node as it
			// was before, and its node is not yet on record to make it
			// dirty.
			sched.rereadInflight()
		}
	case pollCatalog:
		dirty, full = tracker.catalogAnswer(ev.services, ev.baseline)
	}
	// The services named at once; for a catalog change, all the others in
	// a full pass: the same index may hold changes of instances that no
	// answer names.
	for _, s := range dirty {
		for _, w := range byName[s] {
			sched.mark(w)
		}
	}
	if full {
		sched.fullPass(now)
	}
}

// read makes one non-blocking read of w's service and feeds the answer to
// w, as one turn of the Watcher's own loop. With probe it first asks
// Consul only for the service's index (probeFilter): when that is the
// index of w's last good read, nothing changed and the read is skipped.
func (h *Hub) read(ctx context.Context, w *Watcher, probe bool) readDone {
	qctx, cancel := context.WithTimeout(ctx, requestSlack)
	defer cancel()
	var probeTook time.Duration
	if probe {
		start := time.Now()
		same, err := h.unchanged(qctx, w)
		probeTook = time.Since(start)
		if err == nil && same {
			return readDone{w: w, skipped: true, probeTook: probeTook}
		}
		// Changed, or the probe failed: the read says which.
	}
	q := &api.QueryOptions{Datacenter: h.cfg.Datacenter, AllowStale: w.cfg.Stale, UseCache: w.cfg.Cached}
	ans, meta, release, err := w.fetch(qctx, q)
	defer release()
	if ctx.Err() != nil {
		return readDone{w: w, failed: true, probeTook: probeTook}
	}
	_, retry, failed := w.handle(0, ans, meta, err)
	w.mu.Lock()
	w.readFailing = failed
	w.mu.Unlock()
	return readDone{w: w, nodes: answerNodes(ans), failed: failed, retry: retry, probeTook: probeTook}
}

// probeFilter matches no instance (Consul sets a service's ID to its name
// when it is registered without one, so no ID is empty): a read with it
// answers [] with the service's own X-Consul-Index, which moves with every
// change of the service, its checks and its nodes (what a blocking query
// on the service waits for). Measured at 1,000 services × 10 on a dev
// agent: 0.6-0.7 of a full read's Consul CPU and 0.5-0.6 of the agent's;
// at 1,000 instances a service the full read's 0.9 MB are not made, sent
// or decoded at all.
const probeFilter = `Service.ID == ""`

// unchanged asks Consul for the index of w's service and reports whether
// it is that of w's last read, which succeeded.
func (h *Hub) unchanged(ctx context.Context, w *Watcher) (bool, error) {
	w.mu.Lock()
	last, failing := w.status.Index, w.readFailing
	w.mu.Unlock()
	if last == 0 || failing {
		return false, nil
	}
	q := (&api.QueryOptions{Datacenter: h.cfg.Datacenter, AllowStale: w.cfg.Stale, Filter: probeFilter}).WithContext(ctx)
	_, meta, err := w.src.Service(w.cfg.Service, w.cfg.Tag, false, q)
	if err != nil {
		return false, err
	}
	return meta != nil && meta.LastIndex == last, nil
}

// poll runs one of the hub's long polls until ctx is done, with the index
// rules, the limiter and the backoff of a Watcher, and sends every answer
// and failure to out. It logs failures as a Watcher does: the first, every
// Nth, and the recovery.
func (h *Hub) poll(ctx context.Context, kind pollKind, out chan<- pollEvent) {
	log := h.log.With("query", kind.String())
	interval := h.cfg.QueryInterval
	if kind == pollCatalog {
		interval = max(interval, catalogPollInterval)
	}
	limit := newLimiter(interval, queryBurst, nil)
	fails := newReadFailures(h.cfg.MinBackoff, h.cfg.MaxBackoff)
	var index uint64
	send := func(ev pollEvent) bool {
		select {
		case out <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		if limit.wait(ctx) != nil {
			return
		}
		waitedOn := index
		ev, meta, err := h.query(ctx, kind, index)
		if ctx.Err() != nil {
			return
		}
		if err == nil && meta == nil {
			err = errors.New("consul answered without query metadata")
		}
		if err != nil {
			f := fails.fail(err, kind.String()+" for the hub", time.Now())
			if f.log {
				if f.acl {
					log.Error("consul refused the token (ACL): the hub needs node:read and service:read; keeping the last known pools", f.args...)
				} else {
					log.Warn("cannot follow the datacenter's changes from consul; keeping the last known pools", f.args...)
				}
			}
			index = 0 // start over with a fresh read, as a Watcher does
			if !send(pollEvent{kind: kind, err: f.err}) || sleepCtx(ctx, f.retry) != nil {
				return
			}
			continue
		}
		if args := fails.ok(time.Now()); args != nil {
			log.Info("consul answers again: following the datacenter's changes", args...)
		}
		got := meta.LastIndex
		index = NextIndex(waitedOn, got)
		if index == 0 {
			log.Debug("consul index went backwards: reading the full state again", "was", waitedOn, "now", got)
		}
		ev.kind, ev.backend = kind, meta.QueryBackend
		ev.baseline = waitedOn == 0
		ev.news = ev.baseline || got != waitedOn
		if !send(ev) {
			return
		}
	}
}

// query runs one long poll of the given kind.
func (h *Hub) query(ctx context.Context, kind pollKind, index uint64) (pollEvent, *api.QueryMeta, error) {
	qctx, cancel := context.WithTimeout(ctx, h.cfg.WaitTime+h.cfg.WaitTime/16+requestSlack)
	defer cancel()
	q := (&api.QueryOptions{
		Datacenter: h.cfg.Datacenter,
		AllowStale: h.cfg.Stale,
		WaitIndex:  index,
		WaitTime:   h.cfg.WaitTime,
	}).WithContext(qctx)
	if kind == pollState {
		checks, meta, err := h.state.State(api.HealthAny, q)
		return pollEvent{checks: checks}, meta, err
	}
	services, meta, err := h.catalog.Services(q)
	return pollEvent{services: services}, meta, err
}

// hubFailed records on a fed watcher that the hub's long poll failed: the
// service's pool may be out of date. The hub logs it once for all.
func (w *Watcher) hubFailed(err error, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.forgetNext = true // see Watcher.forgetIndexes
	w.status.LastError, w.status.LastErrorAt = err, now
	w.status.Errors++
	if w.status.DownSince.IsZero() {
		w.status.DownSince = now
	}
}

// hubAnswered records on a fed watcher that the hub's long poll answered:
// whatever changed for the service is being read, so the service is as
// current as this answer. A read that is failing keeps its error.
func (w *Watcher) hubAnswered(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.readFailing {
		return
	}
	w.status.LastSuccess = now
	w.status.LastError, w.status.DownSince = nil, time.Time{}
}
