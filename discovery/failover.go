package discovery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/internal/retry"
	"github.com/meshlb/meshlb/lb"
)

// Failover defaults.
const (
	// DefaultBackupTag is the Consul tag of nginx-style backup instances.
	DefaultBackupTag = "backup"
	// DefaultMinHealthy is how many local instances must pass for the
	// local datacenter to serve first.
	DefaultMinHealthy = 1
	// failoverWaitTime bounds each blocking query to a failover
	// datacenter; the watch's request deadline follows from it, so a
	// datacenter that stops answering costs its own watch, nobody else.
	failoverWaitTime = 30 * time.Second
	// failoverCheckEvery is how often the watches' health is looked at, to
	// leave out (and take back) a datacenter whose reads fail.
	failoverCheckEvery = 200 * time.Millisecond
	// A datacenter is probed every probeEvery with a cheap read
	// (/v1/status/leader?dc=) bounded by probeTimeout: Consul retries a
	// cross-datacenter read for up to rpc_hold_timeout (7s) and a blocking
	// one for its wait time on top, so the watch alone can take 40s to see
	// that a datacenter went away. No answer within probeTimeout: it is
	// left out until a probe answers again.
	probeEvery   = time.Second
	probeTimeout = 1500 * time.Millisecond
	// preparedQueryEvery paces the executions of a prepared query, which
	// Consul does not offer as a blocking query.
	preparedQueryEvery   = time.Second
	preparedQueryTimeout = 5 * time.Second
)

// FailoverConfig says how a service's instances are ranked into tiers:
// the local primaries, the local backups (tag BackupTag), then each
// failover datacenter's primaries and backups in order.
type FailoverConfig struct {
	// Service is the Consul service name; Tag the instance filter of the
	// watches (WatchConfig.Tag), applied in every datacenter.
	Service, Tag string
	// BackupTag marks backup instances: "" means DefaultBackupTag.
	BackupTag string
	// Datacenters are the failover datacenters, in order. Each is watched
	// all the time with blocking queries (?dc=), so a switch needs no
	// Consul read.
	Datacenters []string
	// MinHealthy: while fewer local instances pass, the failover
	// datacenters serve first (the local ones stay as a last resort).
	// 0 means DefaultMinHealthy.
	MinHealthy int
	// PreparedQuery names a Consul prepared query whose own failover
	// (NearestN, Datacenters) picks the failover datacenter; executed every
	// second. Its answer counts only when it comes from another datacenter.
	PreparedQuery string
	// Logger receives switch and watch logs; nil discards them.
	Logger hclog.Logger
}

// Validate checks the configuration; errors name the value and what is
// allowed.
func (c *FailoverConfig) Validate() error {
	if c.MinHealthy < 0 {
		return fmt.Errorf("invalid min_healthy %d for service %q: must be at least 1 (default %d)", c.MinHealthy, c.Service, DefaultMinHealthy)
	}
	seen := map[string]bool{}
	for _, dc := range c.Datacenters {
		if !validDatacenter(dc) {
			return fmt.Errorf("invalid failover datacenter %q for service %q: use letters, digits, '-', '_' and '.'", dc, c.Service)
		}
		if seen[dc] {
			return fmt.Errorf("failover datacenter %q listed twice for service %q", dc, c.Service)
		}
		seen[dc] = true
	}
	if c.PreparedQuery != "" && strings.ContainsAny(c.PreparedQuery, "/?#% ") {
		return fmt.Errorf("invalid prepared_query %q for service %q: a query name or ID cannot contain '/', '?', '#', '%%' or spaces", c.PreparedQuery, c.Service)
	}
	if c.BackupTag != "" && strings.ContainsAny(c.BackupTag, " \t\n") {
		return fmt.Errorf("invalid backup_tag %q for service %q: must not contain whitespace", c.BackupTag, c.Service)
	}
	return nil
}

func validDatacenter(dc string) bool {
	if dc == "" || len(dc) > 64 {
		return false
	}
	for _, r := range dc {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// DatacenterStatus is what a Failover last saw of one failover datacenter.
type DatacenterStatus struct {
	Datacenter string
	// Instances is the number of instances last read (kept while failing).
	Instances int
	// Failing: its last read failed; its instances are left out of the
	// pool until it answers again.
	Failing   bool
	LastError string
}

// Failover ranks a service's instances into tiers and hands them to
// OnTiers whenever they change: from the local watch (SetLocal, fed by the
// agent) and from the watches of the failover datacenters and the prepared
// query, which Run runs. A datacenter whose reads fail is left out (its
// watch retries on its own, and nothing waits for it).
type Failover struct {
	cfg     FailoverConfig
	client  *api.Client
	onTiers func([]lb.Tier)
	log     hclog.Logger

	mu         sync.Mutex
	localDC    string
	local      []lb.Instance
	localSet   bool
	remote     map[string][]lb.Instance
	failing    map[string]string // datacenter → last error, while failing
	probeErr   map[string]string // datacenter → the last probe's error, "" when it answered
	watchers   map[string]*Watcher
	pq         []lb.Instance
	pqDC       string
	failedOver string // the datacenter serving first instead of the local one, "" when local
}

// NewFailover returns the ranking of cfg.Service. client may be nil when
// there is no failover datacenter and no prepared query (backups only).
// onTiers is called with the mutex of the Failover held: it must not call
// back into it.
func NewFailover(client *api.Client, cfg FailoverConfig, onTiers func([]lb.Tier)) (*Failover, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BackupTag == "" {
		cfg.BackupTag = DefaultBackupTag
	}
	if cfg.MinHealthy == 0 {
		cfg.MinHealthy = DefaultMinHealthy
	}
	if client == nil && (len(cfg.Datacenters) > 0 || cfg.PreparedQuery != "") {
		return nil, errors.New("failover needs a consul client, got nil")
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	f := &Failover{cfg: cfg, client: client, onTiers: onTiers, log: log.With("service", cfg.Service),
		remote: map[string][]lb.Instance{}, failing: map[string]string{}, probeErr: map[string]string{},
		watchers: map[string]*Watcher{}}
	for _, dc := range cfg.Datacenters {
		w, err := NewWatcher(client, WatchConfig{
			Service: cfg.Service, Tag: cfg.Tag, Datacenter: dc,
			// Any server of the remote datacenter may answer.
			Stale: true, WaitTime: failoverWaitTime, QueryInterval: 100 * time.Millisecond,
			Logger: log.With("datacenter", dc),
		}, func(insts []lb.Instance) { f.setRemote(dc, insts) })
		if err != nil {
			return nil, err
		}
		f.watchers[dc] = w
	}
	return f, nil
}

// Active reports whether the service has anything beyond its local
// primaries to rank: failover datacenters or a prepared query. Backups
// need no Run.
func (f *Failover) Active() bool { return len(f.cfg.Datacenters) > 0 || f.cfg.PreparedQuery != "" }

// Datacenters returns the status of the failover datacenters, in order.
func (f *Failover) Datacenters() []DatacenterStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]DatacenterStatus, 0, len(f.cfg.Datacenters)+1)
	for _, dc := range f.cfg.Datacenters {
		out = append(out, DatacenterStatus{Datacenter: dc, Instances: len(f.remote[dc]),
			Failing: f.failing[dc] != "", LastError: f.failing[dc]})
	}
	if f.cfg.PreparedQuery != "" && f.pqDC != "" && !slices.Contains(f.cfg.Datacenters, f.pqDC) {
		out = append(out, DatacenterStatus{Datacenter: f.pqDC, Instances: len(f.pq)})
	}
	return out
}

// FailedOver returns the datacenter that serves first because fewer than
// MinHealthy local instances pass, "" while the local one does.
func (f *Failover) FailedOver() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failedOver
}

// SetLocal hands the local datacenter's instances (as the local watch
// delivers them) to the ranking.
func (f *Failover) SetLocal(insts []lb.Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.local, f.localSet = insts, true
	f.publish("local instances changed")
	if !f.Active() {
		// Nothing ranks them again (only another datacenter's change
		// would): the tiers hold the instances, and a copy kept here
		// cost 170 bytes an instance (17 MB at 100,000).
		f.local = nil
	}
}

func (f *Failover) setRemote(dc string, insts []lb.Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.remote[dc] = insts
	if f.localSet {
		f.publish("instances of datacenter " + dc + " changed")
	}
}

// Run runs the failover datacenters' watches and the prepared query until
// ctx is done, and returns ctx.Err(). It learns the local datacenter's name
// first (best effort: tiers name it "" until then).
func (f *Failover) Run(ctx context.Context) error {
	if !f.Active() {
		<-ctx.Done()
		return ctx.Err()
	}
	if self, err := f.client.Agent().Self(); err == nil {
		if dc, ok := self["Config"]["Datacenter"].(string); ok {
			f.mu.Lock()
			f.localDC = dc
			if f.localSet {
				f.publish("local datacenter is " + dc)
			}
			f.mu.Unlock()
		}
	}
	var wg sync.WaitGroup
	for dc, w := range f.watchers {
		wg.Add(2)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
		go func() { defer wg.Done(); f.probe(ctx, dc) }()
	}
	if f.cfg.PreparedQuery != "" {
		wg.Add(1)
		go func() { defer wg.Done(); f.runPreparedQuery(ctx) }()
	}
	t := time.NewTicker(failoverCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		case <-t.C:
			f.checkWatches()
		}
	}
}

// probe reads /v1/status/leader?dc= every probeEvery, each read with its
// own deadline, and records whether the datacenter answered.
func (f *Failover) probe(ctx context.Context, dc string) {
	for {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		_, err := f.client.Status().LeaderWithQueryOptions((&api.QueryOptions{Datacenter: dc}).WithContext(pctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		msg := ""
		if err != nil {
			msg = fmt.Sprintf("no answer from datacenter %s within %v: %v", dc, probeTimeout, err)
		}
		f.mu.Lock()
		f.probeErr[dc] = msg
		f.mu.Unlock()
		if msg != "" {
			f.checkWatches() // leave it out now, not at the next tick
		}
		if sleepCtx(ctx, probeEvery) != nil {
			return
		}
	}
}

// checkWatches leaves out the datacenters whose last read or probe failed,
// and takes them back once both succeed.
func (f *Failover) checkWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := ""
	for dc, w := range f.watchers {
		st := w.Status()
		errMsg := f.probeErr[dc]
		if st.LastError != nil {
			errMsg = st.LastError.Error()
		}
		was := f.failing[dc] != ""
		switch {
		case errMsg != "" && !was:
			f.failing[dc] = errMsg
			f.log.Warn("failover datacenter unreachable: leaving it out until it answers", "datacenter", dc, "error", errMsg)
			changed = "datacenter " + dc + " unreachable"
		case errMsg != "":
			f.failing[dc] = errMsg
		case was:
			delete(f.failing, dc)
			f.log.Info("failover datacenter answers again", "datacenter", dc)
			changed = "datacenter " + dc + " answers again"
		}
	}
	if changed != "" && f.localSet {
		f.publish(changed)
	}
}

func (f *Failover) runPreparedQuery(ctx context.Context) {
	fails := retry.Outage{Every: logEveryNth}
	for {
		qctx, cancel := context.WithTimeout(ctx, preparedQueryTimeout)
		resp, _, err := f.client.PreparedQuery().Execute(f.cfg.PreparedQuery, (&api.QueryOptions{}).WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if log, _ := fails.Fail(time.Now()); log {
				f.log.Warn("cannot execute the prepared query; keeping its last answer", "query", f.cfg.PreparedQuery, "failures", fails.Failures(), "error", err)
			}
		} else {
			if _, _, ok := fails.Recover(time.Now()); ok {
				f.log.Info("prepared query answers again", "query", f.cfg.PreparedQuery)
			}
			f.setPreparedQuery(resp)
		}
		if sleepCtx(ctx, preparedQueryEvery) != nil {
			return
		}
	}
}

func (f *Failover) setPreparedQuery(resp *PreparedQueryAnswer) {
	entries := make([]*api.ServiceEntry, len(resp.Nodes))
	for i := range resp.Nodes {
		entries[i] = &resp.Nodes[i]
	}
	insts := Instances(entries, nil)
	dc := resp.Datacenter
	f.mu.Lock()
	defer f.mu.Unlock()
	if dc == f.localDC || resp.Failovers == 0 {
		// The query answered from the local datacenter, which the local
		// watch follows already.
		insts, dc = nil, ""
	}
	if dc == f.pqDC && sameInstances(insts, f.pq) {
		return
	}
	f.pq, f.pqDC = insts, dc
	if f.localSet {
		f.publish("prepared query " + f.cfg.PreparedQuery + " answered from " + cmpOr(dc, "the local datacenter"))
	}
}

// PreparedQueryAnswer is consul/api's answer to a prepared query execution.
type PreparedQueryAnswer = api.PreparedQueryExecuteResponse

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// publish composes the tiers and hands them on; f.mu is held.
func (f *Failover) publish(why string) {
	tiers, failedOver := RankTiers(TierInput{
		LocalDC: f.localDC, Local: f.local, BackupTag: f.cfg.BackupTag, MinHealthy: f.cfg.MinHealthy,
		Remote: f.remoteInOrder(), RemoteDCs: f.remoteDCs(),
	})
	if failedOver != f.failedOver {
		if failedOver != "" {
			f.log.Warn("failing over to another datacenter: too few local instances pass",
				"datacenter", failedOver, "local_passing", len(f.local), "min_healthy", f.cfg.MinHealthy, "reason", why)
		} else {
			f.log.Info("local datacenter serves again", "local_passing", len(f.local), "min_healthy", f.cfg.MinHealthy,
				"was", f.failedOver, "reason", why)
		}
		f.failedOver = failedOver
	}
	f.onTiers(tiers)
}

// remoteDCs and remoteInOrder list the failover datacenters that answer,
// in order, the prepared query's last.
func (f *Failover) remoteDCs() []string {
	var out []string
	for _, dc := range f.cfg.Datacenters {
		if f.failing[dc] == "" {
			out = append(out, dc)
		}
	}
	if f.pqDC != "" && !slices.Contains(out, f.pqDC) {
		out = append(out, f.pqDC)
	}
	return out
}

func (f *Failover) remoteInOrder() [][]lb.Instance {
	var out [][]lb.Instance
	for _, dc := range f.cfg.Datacenters {
		if f.failing[dc] == "" {
			out = append(out, f.remote[dc])
		}
	}
	if f.pqDC != "" && !slices.Contains(f.cfg.Datacenters, f.pqDC) {
		out = append(out, f.pq)
	}
	return out
}

// TierInput is what RankTiers ranks.
type TierInput struct {
	LocalDC    string
	Local      []lb.Instance
	BackupTag  string
	MinHealthy int
	// Remote[i] are the instances of datacenter RemoteDCs[i].
	Remote    [][]lb.Instance
	RemoteDCs []string
}

// RankTiers returns the tiers in serving order — local primaries, local
// backups, then each remote datacenter's primaries and backups — and, when
// fewer than MinHealthy local instances pass while a remote datacenter has
// some, that datacenter's name: the remote tiers then come first and the
// local ones last, as a last resort.
func RankTiers(in TierInput) (tiers []lb.Tier, failedOver string) {
	split := func(dc string, remote bool, insts []lb.Instance) []lb.Tier {
		// Without backups (the usual case) the primaries are insts
		// itself: UpdateTiers copies what it keeps, and a copy here cost
		// 1.5 MB an update at 10,000 instances.
		prim, backup := insts, []lb.Instance(nil)
		if slices.ContainsFunc(insts, func(x lb.Instance) bool { return slices.Contains(x.Tags, in.BackupTag) }) {
			// Sized up front: at 10,000 instances, growing by append
			// copied the pool about twice over on every update.
			prim = make([]lb.Instance, 0, len(insts))
			for _, x := range insts {
				if slices.Contains(x.Tags, in.BackupTag) {
					backup = append(backup, x)
				} else {
					prim = append(prim, x)
				}
			}
		}
		return []lb.Tier{
			{Datacenter: dc, Remote: remote, Instances: prim},
			{Datacenter: dc, Remote: remote, Backup: true, Instances: backup},
		}
	}
	local := split(in.LocalDC, false, in.Local)
	var remote []lb.Tier
	for i, insts := range in.Remote {
		if len(insts) > 0 && failedOver == "" {
			failedOver = in.RemoteDCs[i]
		}
		remote = append(remote, split(in.RemoteDCs[i], true, insts)...)
	}
	if len(in.Local) >= max(in.MinHealthy, 1) || failedOver == "" {
		return append(local, remote...), ""
	}
	return append(remote, local...), failedOver
}
