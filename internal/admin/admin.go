// Package admin is the agent's admin listener: the gRPC admin API
// (meshlb.admin.v1: pools, a watch of their changes, drain), the standard
// gRPC health service and server reflection, and a live status page with
// its JSON API, all on one port that is refused to non-loopback callers
// unless allowed.
//
// It only reads the balancers' snapshots and atomics and calls
// SetDraining: it must never sit on the request path (RecordFailure, the
// one call the proxy makes, is lock-free), must not talk to Consul, and
// does not own the listener (the agent serves Handler).
package admin

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/internal/recent"
	"github.com/meshlb/meshlb/lb"
)

// DefaultPoll is how often Run looks at the pools when Options.Poll is 0.
const DefaultPoll = 250 * time.Millisecond

// Sizes of the rings kept for the status page and WatchPools replay.
const (
	maxEvents   = 200
	maxFailures = 50
)

// Service is one balanced service the admin API shows.
type Service struct {
	// Name is the service name; "" means Balancer.Service().
	Name     string
	Balancer *lb.Balancer
	// Status reports the state of the discovery watch feeding the
	// balancer; it may be nil. It is called on every ListPools and page
	// refresh, from several goroutines: it must be cheap and safe for
	// concurrent use.
	Status func() WatchInfo
	// Datacenters reports, for a service with failover datacenters,
	// whether each one's reads succeed; it may be nil. It is called at
	// every /metrics scrape, under the same rules as Status.
	Datacenters func() []DatacenterInfo
}

// DatacenterInfo is the state of one failover datacenter's watch.
type DatacenterInfo struct {
	Datacenter string
	Up         bool // its last read succeeded: its instances count
}

// WatchInfo is the state of the discovery watch of a service.
type WatchInfo struct {
	LastSuccess time.Time
	LastError   string
	Errors      uint64
	Index       uint64
}

// Options configures a Server.
type Options struct {
	Services []Service
	// AllowRemote lists the non-loopback networks allowed to call; by
	// default only loopback callers are.
	AllowRemote []netip.Prefix
	// Logger is the parent logger; nil logs nothing.
	Logger hclog.Logger
	// Poll is how often Run looks for pool changes; 0 means DefaultPoll.
	Poll time.Duration
	// Caches are the agent's HTTP caches, for PurgeCache and the page.
	Caches []Cache
	// Recent is the ring of recent requests the proxies record into; nil
	// when the agent keeps none (--recent 0).
	Recent *recent.Ring
	// TraceUI links trace ids to a trace backend's UI (see TraceURL); ""
	// for no links.
	TraceUI string
}

// Server serves the admin API and the status page. Create it with New,
// start Run, and serve Handler on the admin listener.
type Server struct {
	services []Service // in the order given
	byName   map[string]*Service
	allow    []netip.Prefix
	poll     time.Duration
	log      hclog.Logger

	grpc   *grpc.Server
	health *health.Server

	kick chan struct{} // asks Run for a poll now (after a drain)
	done chan struct{} // closed when Run returns: ends watches and streams
	stop sync.Once

	// mu guards the event ring and the notification channel; it is taken
	// by Run's poll and by readers on the admin path, never by requests.
	mu      sync.RWMutex
	events  [maxEvents]*adminpb.PoolEvent // ring, events[(seq-1)%maxEvents]
	seq     uint64                        // last event's sequence number
	changed chan struct{}                 // closed and replaced when events are added

	// pollMu serializes polls; prev is the state they diff against.
	pollMu  sync.Mutex
	prev    map[string]map[string]*seen
	polls   uint64 // counts polls, to mark what one saw (seen.poll)
	serving map[string]healthpb.HealthCheckResponse_ServingStatus

	// prevPool is the pool each service's prev was taken from (made by
	// the first poll).
	prevPool map[string]*lb.Pool

	// failures is a lock-free ring of the last failed requests: the proxy
	// records into it on its request path.
	failures [maxFailures]atomic.Pointer[Failure]
	failSeq  atomic.Uint64

	caches []Cache

	recent  *recent.Ring // nil: --recent 0
	traceUI string
}

// seen is what the last poll saw of an instance (the last one with its
// ID), updated in place by the next.
type seen struct {
	inst     *lb.Instance
	ejected  bool
	draining bool
	// poll is the poll that last saw the ID; while that poll runs,
	// before is what the poll before saw (had: the ID was in it).
	poll   uint64
	before struct {
		inst              *lb.Instance
		ejected, draining bool
	}
	had bool
}

// New returns a Server for the services in o. A Service without a
// Balancer, or two with the same name, is a programming error and panics.
func New(o Options) *Server {
	s := &Server{
		byName:  make(map[string]*Service, len(o.Services)),
		allow:   append([]netip.Prefix(nil), o.AllowRemote...),
		poll:    o.Poll,
		log:     o.Logger,
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		prev:    map[string]map[string]*seen{},
		serving: map[string]healthpb.HealthCheckResponse_ServingStatus{},
		recent:  o.Recent,
		traceUI: o.TraceUI,
		caches:  o.Caches,
	}
	if s.poll <= 0 {
		s.poll = DefaultPoll
	}
	if s.log == nil {
		s.log = hclog.NewNullLogger()
	}
	s.log = s.log.Named("admin")
	s.services = make([]Service, 0, len(o.Services))
	for _, svc := range o.Services {
		if svc.Balancer == nil {
			panic(fmt.Sprintf("admin: service %q has no balancer", svc.Name))
		}
		if svc.Name == "" {
			svc.Name = svc.Balancer.Service()
		}
		if _, dup := s.byName[svc.Name]; dup {
			panic(fmt.Sprintf("admin: service %q given twice", svc.Name))
		}
		s.services = append(s.services, svc)
		s.byName[svc.Name] = &s.services[len(s.services)-1]
	}

	s.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(s.unaryAccess),
		grpc.ChainStreamInterceptor(s.streamAccess),
	)
	adminpb.RegisterAdminServer(s.grpc, &adminService{s: s})
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.updateHealth()
	return s
}

// Run watches the pools until ctx is done: every Poll it diffs each pool
// and its instances' states against the last look and records the changes
// (joined, left, ejected, unejected, draining, undrained) for WatchPools and
// the status page, and keeps the health service up to date. When ctx is
// done it sets every health status to NOT_SERVING and ends the watches and
// page streams, so that the listener can shut down.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(s.poll)
	defer t.Stop()
	defer s.close()
	s.pollOnce(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		s.pollOnce(time.Now())
	}
}

func (s *Server) close() {
	s.stop.Do(func() {
		s.health.Shutdown()
		close(s.done)
	})
}

// requestPoll asks Run for a poll now, without waiting.
func (s *Server) requestPoll() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// service returns the named service, or nil.
func (s *Server) service(name string) *Service { return s.byName[name] }

// serviceNames lists the service names, for error messages.
func (s *Server) serviceNames() []string {
	names := make([]string, len(s.services))
	for i := range s.services {
		names[i] = s.services[i].Name
	}
	return names
}
