package lb

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ErrNoPool is returned by Pick before the first Update: discovery has not
// delivered anything yet (as opposed to ErrNoInstance, an empty or exhausted
// pool).
var ErrNoPool = errors.New("lb: no pool yet")

// ErrUnknownInstance is returned for an instance ID that is not in the pool.
var ErrUnknownInstance = errors.New("lb: unknown instance")

// Passive health defaults, as nginx's max_fails and fail_timeout.
const (
	DefaultMaxFails    = 3
	DefaultFailTimeout = 10 * time.Second
	// MaxEjection caps the doubling ejection period (unless FailTimeout
	// itself is longer).
	MaxEjection = 5 * time.Minute
)

// Config configures a Balancer.
type Config struct {
	// Policy is one of ValidPolicies; "" means round_robin.
	Policy string
	// MaxFails is the number of consecutive failures that ejects an
	// instance (nginx max_fails): 0 means DefaultMaxFails, a negative value
	// turns passive health off.
	MaxFails int
	// FailTimeout is the base ejection period (nginx fail_timeout): 0 means
	// DefaultFailTimeout. It doubles with each consecutive ejection, capped
	// at MaxEjection, and a success resets it.
	FailTimeout time.Duration
	// Logger receives ejection, recovery and drain events; nil logs nothing.
	Logger hclog.Logger
}

// Balancer balances one service. It owns the current Pool, an immutable
// snapshot replaced whole by Update, and the long-lived per-instance Stats.
// Pick and Done are lock-free; Update and SetDraining take a mutex.
type Balancer struct {
	service     string
	policy      policy
	maxFails    int32
	failTimeout time.Duration
	maxEjection time.Duration
	log         hclog.Logger

	// Preformatted errors, so that a failed Pick does not allocate.
	errNoPool     error
	errNoInstance error

	pool atomic.Pointer[Pool]

	serving servingState // which tier serves (tier.go)

	mu      sync.Mutex // guards stats and version (writers only)
	stats   map[string]*Stats
	version uint64
}

// NewBalancer returns a Balancer for service, or an error naming what is
// wrong with cfg.
func NewBalancer(service string, cfg Config) (*Balancer, error) {
	if service == "" {
		return nil, errors.New("lb: the service name must not be empty")
	}
	pol, err := parsePolicy(cfg.Policy)
	if err != nil {
		return nil, err
	}
	if cfg.FailTimeout < 0 {
		return nil, fmt.Errorf("lb: fail timeout %s for service %q: must not be negative (0 means %s)",
			cfg.FailTimeout, service, DefaultFailTimeout)
	}
	b := &Balancer{
		service:       service,
		policy:        pol,
		maxFails:      DefaultMaxFails,
		failTimeout:   cmp.Or(cfg.FailTimeout, DefaultFailTimeout),
		log:           cfg.Logger,
		errNoPool:     fmt.Errorf("%w for service %q", ErrNoPool, service),
		errNoInstance: fmt.Errorf("%w for service %q", ErrNoInstance, service),
		stats:         map[string]*Stats{},
	}
	switch {
	case cfg.MaxFails < 0:
		b.maxFails = -1
	case cfg.MaxFails > 0:
		b.maxFails = int32(min(cfg.MaxFails, 1<<30))
	}
	b.maxEjection = max(MaxEjection, b.failTimeout)
	if b.log == nil {
		b.log = hclog.NewNullLogger()
	}
	return b, nil
}

// Service returns the service name.
func (b *Balancer) Service() string { return b.service }

// Policy returns the normalized policy spec ("round_robin" for "").
func (b *Balancer) Policy() string { return b.policy.spec }

// Pool returns the current snapshot, nil before the first Update.
func (b *Balancer) Pool() *Pool { return b.pool.Load() }

// Update publishes a new snapshot built from insts, which are copied (the
// caller may reuse the slice; Tags and Meta are shared, not copied, and must
// not be modified afterwards). Stats are kept per instance ID, so counters
// survive updates; the stats of instances gone from the pool are dropped.
// Instances with Weight < 1 get 1; of several instances with the same ID only
// the first is kept. Safe for concurrent use with Pick.
func (b *Balancer) Update(insts []Instance) {
	b.update(insts, nil)
}

// update is Update; with t not nil every instance gets t's datacenter and
// backup mark and tier 0 (UpdateTiers' single local tier), so the caller
// need not copy the pool to set them.
func (b *Balancer) update(insts []Instance, t *Tier) {
	if !sortedByID(insts) {
		vals := slices.Clone(insts)
		slices.SortStableFunc(vals, func(x, y Instance) int { return cmp.Compare(x.ID, y.ID) })
		insts = vals
	}
	// One per ID, the first (sorted and stable: duplicates are adjacent).
	n := len(insts)
	for i := 1; i < len(insts); i++ {
		if insts[i].ID == insts[i-1].ID {
			n--
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	// Unchanged instances keep their *Instance; Stats follow the ID.
	list := b.mergeInstances(insts, t, make([]*Instance, 0, n))
	b.version++
	b.pool.Store(newPool(b.service, list, b.version, b.policy, b.pool.Load()))
}

// Pick picks an instance for r, skipping instances in tried (compared by
// identity across snapshots), draining ones and ejected ones; if every
// instance that is neither tried nor draining is ejected, ejection is
// ignored (never eject them all). Instances backing off after a Retry-After
// are avoided while others are available. On success it counts the request
// and one more in flight: the caller must report the outcome with Done.
// It returns an error wrapping ErrNoPool before the first Update and one
// wrapping ErrNoInstance when nothing can serve. It never allocates.
func (b *Balancer) Pick(r *http.Request, tried []*Instance) (*Instance, error) {
	p := b.pool.Load()
	if p == nil {
		return nil, b.errNoPool
	}
	in := p.pickTiers(r, tried, 0)
	if in == nil {
		return nil, b.errNoInstance
	}
	if len(tried) == 0 {
		b.noteServing(p, in)
	}
	in.Stats.InFlight.Add(1)
	in.Stats.Requests.Add(1)
	return in, nil
}

// SetDraining marks (on) or unmarks an instance as draining at this
// balancer: a draining instance gets no new requests. An ID that is not in
// the pool gives an error wrapping ErrUnknownInstance.
func (b *Balancer) SetDraining(id string, on bool) error {
	b.mu.Lock()
	st := b.stats[id]
	b.mu.Unlock()
	if st == nil {
		return fmt.Errorf("%w %q in service %q", ErrUnknownInstance, id, b.service)
	}
	if st.Draining.Swap(on) != on {
		b.log.Info("instance drain changed", "service", b.service, "instance", id, "draining", on)
	}
	return nil
}
