package proxy

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

// Route sends the requests it matches to a balancer's service.
type Route struct {
	// Host is "" for any host, an exact host name ("api.example.com",
	// matched case-insensitively, port ignored) or a wildcard
	// ("*.example.com": any name ending in ".example.com", however many
	// labels deep, but not "example.com" itself).
	Host string
	// PathPrefix is "" or "/" for every path; otherwise it matches on a path
	// segment boundary: "/api" (or "/api/") matches "/api" and "/api/x",
	// not "/apix".
	PathPrefix string
	// Balancer picks the instances of the route's service.
	Balancer *lb.Balancer
	// Protocol is how the route's requests reach the instances:
	// ProtocolAuto ("") or ProtocolH2C.
	Protocol string
	// Cache, if set, is the shared HTTP cache (RFC 9111) the route's GET
	// and HEAD requests are answered from when they may be. Routes may
	// share one.
	Cache *httpcache.Cache
	// TryTimeout is the per-try timeout of the route's idempotent requests
	// (see hedge.go): TryTimeoutAdaptive (0, from the service's observed
	// latency), a fixed duration, or TryTimeoutOff (any negative value).
	// Routes to one service should agree: the last one set wins.
	TryTimeout time.Duration
}

// Route protocols: how requests are sent to the instances.
const (
	// ProtocolAuto sends gRPC calls (Content-Type application/grpc…) and
	// every request to an instance tagged TagGRPC or TagH2C over HTTP/2
	// cleartext, and all else over HTTP/1.1.
	ProtocolAuto = ""
	// ProtocolH2C sends every request over HTTP/2 cleartext, for services
	// that speak only HTTP/2 whatever their instances' tags. Protocol
	// upgrades (WebSocket) still go over HTTP/1.1, HTTP/2 having none.
	ProtocolH2C = "h2c"
)

// compiledRoute is a validated Route in matching form.
type compiledRoute struct {
	host     string // lower case; "*.x" kept for messages
	prefix   string // "" or "/seg..." without a trailing slash
	balancer *lb.Balancer
	service  string
	policy   string
	h2c      bool // Protocol h2c
	cache    *httpcache.Cache

	tryTimeout time.Duration // Route.TryTimeout
	hedge      *serviceHedge // the service's, shared by its routes

	loopPool atomic.Pointer[lb.Pool] // the last pool found servable on the loop (loopexchange.go)
}

// routeTable is an immutable, compiled route set. Matching goes like an
// nginx user expects: the most specific host first (exact, then the longest
// wildcard, then any host), and within a host the longest path prefix. A host
// whose routes match no prefix falls through to the less specific hosts.
type routeTable struct {
	exact    map[string][]*compiledRoute // by lower-case host
	wildcard []wildcardRoutes            // longest suffix first
	any      []*compiledRoute
	caching  bool // a route has a cache (loopcache.go)
}

type wildcardRoutes struct {
	suffix string // ".example.com"
	routes []*compiledRoute
}

// compileRoutes validates routes and builds their table.
func compileRoutes(routes []Route) (*routeTable, error) {
	if len(routes) == 0 {
		return nil, errors.New("proxy: no routes: at least one is required")
	}
	rt := &routeTable{exact: make(map[string][]*compiledRoute)}
	wild := make(map[string][]*compiledRoute)
	seen := make(map[[2]string]bool, len(routes))
	for i, r := range routes {
		cr, err := compileRoute(r)
		if err != nil {
			return nil, fmt.Errorf("proxy: route %d: %w", i, err)
		}
		key := [2]string{cr.host, cr.prefix}
		if seen[key] {
			return nil, fmt.Errorf("proxy: route %d: duplicate route host %q path prefix %q", i, r.Host, r.PathPrefix)
		}
		seen[key] = true
		rt.caching = rt.caching || cr.cache != nil
		switch {
		case cr.host == "":
			rt.any = append(rt.any, cr)
		case strings.HasPrefix(cr.host, "*."):
			wild[cr.host[1:]] = append(wild[cr.host[1:]], cr)
		default:
			rt.exact[cr.host] = append(rt.exact[cr.host], cr)
		}
	}
	byPrefix := func(a, b *compiledRoute) int { return cmp.Compare(len(b.prefix), len(a.prefix)) }
	slices.SortFunc(rt.any, byPrefix)
	for _, rs := range rt.exact {
		slices.SortFunc(rs, byPrefix)
	}
	for suffix, rs := range wild {
		slices.SortFunc(rs, byPrefix)
		rt.wildcard = append(rt.wildcard, wildcardRoutes{suffix: suffix, routes: rs})
	}
	slices.SortFunc(rt.wildcard, func(a, b wildcardRoutes) int {
		return cmp.Or(cmp.Compare(len(b.suffix), len(a.suffix)), strings.Compare(a.suffix, b.suffix))
	})
	return rt, nil
}

func compileRoute(r Route) (*compiledRoute, error) {
	if r.Balancer == nil {
		return nil, fmt.Errorf("host %q path prefix %q: nil balancer", r.Host, r.PathPrefix)
	}
	host, err := normalizeRouteHost(r.Host)
	if err != nil {
		return nil, err
	}
	prefix := r.PathPrefix
	if prefix != "" && prefix[0] != '/' {
		return nil, fmt.Errorf("invalid path prefix %q: must start with /", r.PathPrefix)
	}
	if strings.ContainsAny(prefix, "?#*") {
		return nil, fmt.Errorf("invalid path prefix %q: a path, without query, fragment or wildcard", r.PathPrefix)
	}
	prefix = strings.TrimRight(prefix, "/")
	if r.Protocol != ProtocolAuto && r.Protocol != ProtocolH2C {
		return nil, fmt.Errorf("invalid protocol %q: want %q (auto: gRPC over h2c, the rest over HTTP/1.1) or %q", r.Protocol, ProtocolAuto, ProtocolH2C)
	}
	cr := &compiledRoute{
		h2c:      r.Protocol == ProtocolH2C,
		host:     host,
		prefix:   prefix,
		balancer: r.Balancer,
		service:  r.Balancer.Service(),
		policy:   r.Balancer.Policy(),
		cache:    r.Cache,
	}
	cr.tryTimeout = r.TryTimeout
	return cr, nil
}

func normalizeRouteHost(h string) (string, error) {
	if h == "" {
		return "", nil
	}
	host := strings.ToLower(strings.TrimSuffix(h, "."))
	name := host
	if strings.HasPrefix(name, "*.") {
		name = name[2:]
	}
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		name = name[1 : len(name)-1]
		host = name
	}
	if net.ParseIP(name) == nil {
		if name == "" || strings.ContainsAny(name, ":*/ ") {
			return "", fmt.Errorf("invalid route host %q: want a host name without port, \"*.domain\" or \"\" for any", h)
		}
	}
	return host, nil
}

// match returns the route for a request's Host header and path, or nil.
func (rt *routeTable) match(hostport, path string) *compiledRoute {
	host := requestHost(hostport)
	if rs, ok := rt.exact[host]; ok {
		if cr := matchPrefix(rs, path); cr != nil {
			return cr
		}
	}
	for _, w := range rt.wildcard {
		if len(host) > len(w.suffix) && strings.HasSuffix(host, w.suffix) {
			if cr := matchPrefix(w.routes, path); cr != nil {
				return cr
			}
		}
	}
	return matchPrefix(rt.any, path)
}

// matchPrefix returns the first (longest) route whose prefix matches path
// on a segment boundary.
func matchPrefix(rs []*compiledRoute, path string) *compiledRoute {
	for _, cr := range rs {
		p := cr.prefix
		if p == "" || path == p || (len(path) > len(p) && path[len(p)] == '/' && path[:len(p)] == p) {
			return cr
		}
	}
	return nil
}

// requestHost returns the host of a Host header without port or trailing
// dot, lower-cased (allocating only when it has upper-case letters).
func requestHost(hostport string) string {
	h := hostport
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if 'A' <= h[i] && h[i] <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}
