package discovery

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/lb"
)

// LocalFeed carries the answers of a service's local watch to its Failover
// (which ranks them with the backups and failover datacenters and hands the
// tiers to the balancer). An answer that would empty a non-empty pool is
// held for the grace period when Consul may have lost its state: a Consul
// agent that restarted empty answers "no instances" until the registrars
// have registered again, and dropping every instance meanwhile would turn a
// Consul restart into an outage. Instances that really are gone are still
// avoided by passive health during the grace.
type LocalFeed struct {
	failover *Failover
	grace    time.Duration // 0: no hold
	log      hclog.Logger

	mu      sync.Mutex // serializes updates; never taken on the request path
	watcher *Watcher
	timer   *time.Timer // pending "pool became empty", see Update
	// local is the size of the last set applied, lastIndex and lastErrors
	// the local watch's index and error count then (see mayHaveLostState).
	local      int
	lastIndex  uint64
	lastErrors uint64
}

// NewLocalFeed returns the feed of f. grace 0 applies empty answers at
// once; logger is the service's.
func NewLocalFeed(f *Failover, grace time.Duration, logger hclog.Logger) *LocalFeed {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &LocalFeed{failover: f, grace: grace, log: logger}
}

// SetWatcher names the local watch whose answers Update is given; its
// status tells whether Consul may have lost its state. Call it before the
// watch runs.
func (l *LocalFeed) SetWatcher(w *Watcher) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.watcher = w
}

// Update applies an answer of the local watch, or holds an empty one for
// the grace period (see LocalFeed); it reports whether it applied insts.
// A held answer is applied when the grace ends unless another answer came
// first, or ctx ended.
func (l *LocalFeed) Update(ctx context.Context, insts []lb.Instance) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if len(insts) == 0 && l.local > 0 && l.grace > 0 && l.mayHaveLostState() {
		l.log.Warn("consul reports no instances; keeping the last pool for the grace period in case Consul lost its state",
			"instances", l.local, "grace", l.grace)
		l.timer = time.AfterFunc(l.grace, func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if ctx.Err() != nil || l.timer == nil {
				return
			}
			l.timer = nil
			l.log.Warn("pool emptied: consul still reports no instances after the grace period")
			l.setLocal(nil)
		})
		return false
	}
	l.setLocal(insts)
	return true
}

// Restore applies instances read from a snapshot file, before Consul
// answered.
func (l *LocalFeed) Restore(insts []lb.Instance) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setLocal(insts)
}

// setLocal hands the local instances to the ranking; l.mu is held.
func (l *LocalFeed) setLocal(insts []lb.Instance) {
	l.local = len(insts)
	if l.watcher != nil {
		st := l.watcher.Status()
		l.lastIndex, l.lastErrors = st.Index, st.Errors
	}
	l.failover.SetLocal(insts)
}

// mayHaveLostState reports whether an empty local answer may come from a
// Consul agent that lost its state (restarted empty) rather than from
// instances that failed or were deregistered: the watch failed since the
// last applied answer, its index went backwards, or nothing came from
// Consul yet (a pool restored from the snapshot). Only then is an empty
// answer held; instances that really failed leave at once, so a switch to
// the backups or another datacenter is not delayed. l.mu is held.
func (l *LocalFeed) mayHaveLostState() bool {
	if l.watcher == nil || l.lastIndex == 0 {
		return true
	}
	st := l.watcher.Status()
	return st.Errors != l.lastErrors || st.Index < l.lastIndex
}
