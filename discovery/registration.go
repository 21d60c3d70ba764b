package discovery

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/meshlb/meshlb/internal/retry"
)

// Consul's limits on service metadata (agent/structs: metaKeyFormat,
// metaKeyMaxLength, metaValueMaxLength, metaMaxKeyPairs).
const (
	MetaMaxPairs       = 64
	MetaKeyMaxLength   = 128
	MetaValueMaxLength = 512
	serviceNameMaxLen  = 63
)

var (
	metaKeyRE     = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$`)
)

// Service is the instance a Registration keeps registered with the local
// Consul agent.
type Service struct {
	Name string
	// ID defaults to NAME-HOST-PORT.
	ID string
	// Address is left empty by default so that Consul uses the agent's node
	// address, which other hosts can reach.
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	// Weights are Consul's Service.Weights (passing, warning); zero → Consul's defaults (1, 1).
	Weights api.AgentWeights
	// TTL is the check's TTL; the registration refreshes it every TTL/3.
	// If the registrar vanishes the instance goes critical after TTL.
	TTL time.Duration
	// DeregisterAfter is DeregisterCriticalServiceAfter: Consul removes an
	// instance critical for this long (its registrar is gone).
	DeregisterAfter time.Duration
}

// CheckID is the ID of the registration's TTL check.
func (s Service) CheckID() string { return "meshlb:" + s.ID }

// ValidateServiceName checks a Consul service name as meshlb accepts it:
// letters, digits, '-' and '_', starting and ending with a letter or digit,
// at most 63 characters (so it is also a valid DNS label in Consul DNS).
func ValidateServiceName(name string) error {
	if name == "" {
		return errors.New("service name is empty: give --service NAME (letters, digits, '-' and '_')")
	}
	if len(name) > serviceNameMaxLen || !serviceNameRE.MatchString(name) {
		return fmt.Errorf("invalid service name %q: use letters, digits, '-' and '_', starting and ending with a letter or digit, at most %d characters", name, serviceNameMaxLen)
	}
	return nil
}

// ValidateMeta checks metadata against Consul's rules: keys [A-Za-z0-9_-]
// of at most 128 characters and not starting with "consul-", values of at
// most 512 characters, at most 64 pairs.
func ValidateMeta(meta map[string]string) error {
	if len(meta) > MetaMaxPairs {
		return fmt.Errorf("too many meta pairs: %d, Consul allows at most %d", len(meta), MetaMaxPairs)
	}
	keys := make([]string, 0, len(meta))
	for k := range meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := meta[k]
		switch {
		case k == "":
			return errors.New("meta key is empty: keys are 1-128 characters of [A-Za-z0-9_-]")
		case len(k) > MetaKeyMaxLength:
			return fmt.Errorf("meta key %q is %d characters long: Consul allows at most %d", k, len(k), MetaKeyMaxLength)
		case !metaKeyRE.MatchString(k):
			return fmt.Errorf("invalid meta key %q: Consul allows only letters, digits, '_' and '-'", k)
		case strings.HasPrefix(k, "consul-"):
			return fmt.Errorf("invalid meta key %q: the prefix \"consul-\" is reserved by Consul", k)
		case len(v) > MetaValueMaxLength:
			return fmt.Errorf("meta value for key %q is %d characters long: Consul allows at most %d", k, len(v), MetaValueMaxLength)
		}
	}
	return nil
}

// Validate checks the whole service definition; the error names the bad
// value and what is allowed.
func (s Service) Validate() error {
	if err := ValidateServiceName(s.Name); err != nil {
		return err
	}
	if s.Port < 1 || s.Port > 65535 {
		return fmt.Errorf("invalid port %d: must be 1-65535", s.Port)
	}
	if s.ID == "" {
		return errors.New("service ID is empty")
	}
	if err := ValidateMeta(s.Meta); err != nil {
		return err
	}
	if s.TTL < time.Second {
		return fmt.Errorf("invalid TTL %v: must be at least 1s", s.TTL)
	}
	if s.DeregisterAfter < time.Minute {
		return fmt.Errorf("invalid deregister-after %v: Consul's minimum is 1m", s.DeregisterAfter)
	}
	if s.Weights.Passing < 0 || s.Weights.Warning < 0 {
		return fmt.Errorf("invalid weights passing=%d warning=%d: must be >= 0", s.Weights.Passing, s.Weights.Warning)
	}
	return nil
}

// Health is the status reported through the TTL check.
type Health struct {
	Status string // api.HealthPassing, api.HealthWarning or api.HealthCritical
	Output string
}

// agentAPI is the part of Consul's agent endpoint the registration needs
// (ACL: service:write on the service).
type agentAPI interface {
	ServiceRegisterOpts(*api.AgentServiceRegistration, api.ServiceRegisterOpts) error
	ServiceDeregisterOpts(string, *api.QueryOptions) error
	UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error
	Service(string, *api.QueryOptions) (*api.AgentService, *api.QueryMeta, error)
}

// Registration keeps one service instance registered with its local Consul
// agent. One goroutine (Run) owns the desired state; SetHealth and
// SetService hand changes to it through a channel. It refreshes the TTL,
// re-registers when Consul has lost the instance (a restarted agent), and
// re-syncs periodically because the agent's state may change underneath it.
type Registration struct {
	agent  agentAPI
	logger hclog.Logger

	changes chan func(*regState)
	stopped chan struct{}
	stop    sync.Once
	cancel  context.CancelFunc

	mu        sync.Mutex
	svc       Service
	health    Health
	lastErr   error
	lastOK    time.Time
	regOK     bool
	resyncDur time.Duration
}

type regState struct {
	svc        Service
	health     Health
	registered bool
	dirty      bool // push the TTL status now
}

// NewRegistration validates svc and returns a registration that has not
// started yet. The instance starts critical ("starting") until SetHealth.
func NewRegistration(client *api.Client, svc Service, logger hclog.Logger) (*Registration, error) {
	if err := svc.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return newRegistration(client.Agent(), svc, logger), nil
}

func newRegistration(agent agentAPI, svc Service, logger hclog.Logger) *Registration {
	return &Registration{
		agent:     agent,
		logger:    logger,
		changes:   make(chan func(*regState), 16),
		stopped:   make(chan struct{}),
		svc:       svc,
		health:    Health{Status: api.HealthCritical, Output: "starting"},
		resyncDur: 30 * time.Second,
	}
}

// SetHealth changes the status reported to Consul; it is pushed at once.
func (r *Registration) SetHealth(h Health) {
	r.mu.Lock()
	r.health = h
	r.mu.Unlock()
	r.send(func(s *regState) {
		if s.health != h {
			s.health = h
			s.dirty = true
		}
	})
}

// SetService replaces the registered definition (e.g. the app's PID
// changed); the instance is registered again.
func (r *Registration) SetService(svc Service) error {
	if err := svc.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	r.svc = svc
	r.mu.Unlock()
	r.send(func(s *regState) { s.svc = svc; s.registered = false })
	return nil
}

func (r *Registration) send(f func(*regState)) {
	select {
	case r.changes <- f:
	case <-r.stopped:
	}
}

// Service returns the current definition.
func (r *Registration) Service() Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.svc
}

// Registered reports whether the last sync with Consul succeeded, and the
// last error.
func (r *Registration) Registered() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.regOK, r.lastErr
}

// Run is the reconcile loop. It returns when ctx is done; it does not
// deregister (call Deregister for the final sync).
func (r *Registration) Run(ctx context.Context) {
	defer r.stop.Do(func() { close(r.stopped) })
	r.mu.Lock()
	st := regState{svc: r.svc, health: r.health}
	r.mu.Unlock()

	refresh := st.svc.TTL / 3
	var (
		fails    = retry.Outage{Every: 10}
		backoff  = regBackoff(refresh)
		next     = time.Now() // when the next sync is due
		lastFull = time.Now()
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-r.changes:
			f(&st)
			// Drain whatever else is queued, then sync once.
			for more := true; more; {
				select {
				case f := <-r.changes:
					f(&st)
				default:
					more = false
				}
			}
			if !st.dirty && st.registered {
				continue
			}
			if fails.Failures() > 0 && time.Now().Before(next) {
				continue // backing off; the timer will fire
			}
		case <-timer.C:
		}

		if st.registered && time.Since(lastFull) >= r.resyncDur {
			lastFull = time.Now()
			if !r.present(ctx, st.svc.ID) {
				r.logger.Warn("instance missing from the Consul agent, registering again", "service_id", st.svc.ID)
				st.registered = false
			}
		}
		err := r.sync(ctx, &st)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.lastErr = err
		r.regOK = err == nil
		if err == nil {
			r.lastOK = time.Now()
		}
		r.mu.Unlock()
		if err != nil {
			if log, _ := fails.Fail(time.Now()); log {
				r.logFailure(fails.Failures(), st.svc, err)
			}
			next = time.Now().Add(backoff.Next())
		} else {
			if n, lasted, ok := fails.Recover(time.Now()); ok {
				r.logger.Info("consul reachable again, instance registered", "service_id", st.svc.ID,
					"failures", n, "down_for", lasted.Round(time.Millisecond))
			}
			backoff.Reset()
			next = time.Now().Add(refresh)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(time.Until(next))
	}
}

// logFailure logs the n-th failure of a run (Run logs the first, then
// every 10th).
func (r *Registration) logFailure(n int, svc Service, err error) {
	if IsACLError(err) {
		r.logger.Error("consul refused the token (ACL): registering service instance; the token needs service:write on the service",
			"service", svc.Name, "service_id", svc.ID, "failures", n, "error", err)
		return
	}
	r.logger.Warn("cannot reach consul to register the instance, retrying with backoff",
		"service_id", svc.ID, "failures", n, "error", err)
}

// regBackoff is the registration's backoff: capped exponential with equal
// jitter, the first retry within 250ms so that a restarted agent gets the
// instance back within seconds, later ones no later than max(refresh, 5s).
func regBackoff(refresh time.Duration) *retry.Backoff {
	return &retry.Backoff{Min: 250 * time.Millisecond, Max: max(refresh, 5*time.Second), Jitter: retry.EqualJitter}
}

// sync pushes state to Consul: register when needed, else refresh the TTL.
// An UpdateTTL that Consul refuses for an unknown check (the agent lost its
// state) turns into a register in the same sync.
func (r *Registration) sync(ctx context.Context, st *regState) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	if st.registered {
		err := r.agent.UpdateTTLOpts(st.svc.CheckID(), st.health.Output, st.health.Status, q)
		if err == nil {
			st.dirty = false
			return nil
		}
		var se api.StatusError
		if IsACLError(err) || !errors.As(err, &se) {
			return fmt.Errorf("updating TTL check %q: %w", st.svc.CheckID(), err)
		}
		r.logger.Warn("consul does not know the instance's check, registering again",
			"service_id", st.svc.ID, "error", err)
		st.registered = false
	}
	if err := r.agent.ServiceRegisterOpts(registration(st.svc, st.health), api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("registering service %q id %q: %w", st.svc.Name, st.svc.ID, err)
	}
	r.logger.Info("instance registered", "service", st.svc.Name, "service_id", st.svc.ID,
		"address", st.svc.Address, "port", st.svc.Port, "status", st.health.Status)
	st.registered = true
	st.dirty = false
	return nil
}

// present reports whether the local agent still has the instance. Only a
// definite 404 counts as missing: an unreachable agent is handled by the
// TTL update failing.
func (r *Registration) present(ctx context.Context, id string) bool {
	_, _, err := r.agent.Service(id, (&api.QueryOptions{}).WithContext(ctx))
	var se api.StatusError
	return !(errors.As(err, &se) && se.Code == 404)
}

func registration(svc Service, h Health) *api.AgentServiceRegistration {
	reg := &api.AgentServiceRegistration{
		ID:      svc.ID,
		Name:    svc.Name,
		Address: svc.Address,
		Port:    svc.Port,
		Tags:    svc.Tags,
		Meta:    svc.Meta,
		Check: &api.AgentServiceCheck{
			CheckID:                        svc.CheckID(),
			Name:                           "meshlb registrar: app health",
			TTL:                            svc.TTL.String(),
			Status:                         h.Status,
			Notes:                          "reported by meshlb's registrar, which probes the app",
			DeregisterCriticalServiceAfter: svc.DeregisterAfter.String(),
		},
	}
	if svc.Weights.Passing > 0 || svc.Weights.Warning > 0 {
		w := svc.Weights
		if w.Passing == 0 {
			w.Passing = 1
		}
		if w.Warning == 0 {
			w.Warning = 1
		}
		reg.Weights = &w
	}
	return reg
}

// MarkCritical reports critical with output at once, bypassing the loop
// (used on shutdown, when there is no time to wait for the next sync).
func (r *Registration) MarkCritical(ctx context.Context, output string) error {
	r.SetHealth(Health{Status: api.HealthCritical, Output: output})
	svc := r.Service()
	q := (&api.QueryOptions{}).WithContext(ctx)
	err := r.agent.UpdateTTLOpts(svc.CheckID(), output, api.HealthCritical, q)
	if err != nil {
		return fmt.Errorf("marking instance %q critical: %w", svc.ID, err)
	}
	return nil
}

// Deregister removes the instance from Consul (the final sync). The Run
// loop should be stopped first so it does not register it again.
func (r *Registration) Deregister(ctx context.Context) error {
	svc := r.Service()
	err := r.agent.ServiceDeregisterOpts(svc.ID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if IsACLError(err) {
			return fmt.Errorf("consul refused the token (ACL) deregistering %q: %w", svc.ID, err)
		}
		return fmt.Errorf("deregistering %q: %w", svc.ID, err)
	}
	r.logger.Info("instance deregistered", "service_id", svc.ID)
	return nil
}
