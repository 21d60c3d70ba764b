// Package lb holds the balancing pool and the policies that pick from it.
//
// A pool is an immutable snapshot published with atomic.Pointer: a request
// does one Load and never takes a lock. State that must outlive snapshots
// (in-flight counts, failures, EWMA latency, ejection, drain) lives on a
// long-lived Stats record keyed by instance ID, so a pool update never resets
// it. The package must not talk to Consul or do I/O: discovery feeds it
// instance lists, the proxy asks it for picks and reports outcomes.
package lb

import (
	"sync/atomic"
)

// Instance is one upstream endpoint of a service as discovery last saw it.
// Instances are immutable once published in a pool; per-instance counters
// live in Stats, which is shared across snapshots.
type Instance struct {
	// ID is the Consul service ID, unique within the service.
	ID string
	// Service is the Consul service name.
	Service string
	// Address is the IP or host name to dial (Service.Address, else the node's).
	Address string
	// Port is the TCP port to dial.
	Port int
	// HostPort is Address:Port, precomputed for the data path (IPv6 bracketed).
	HostPort string
	// Weight is the relative weight (Consul Service.Weights.Passing or
	// .Warning depending on the health state); always >= 1.
	Weight int
	// Tags and Meta are copied from the Consul registration. Meta carries
	// "pid" and "host" when the instance is registered by meshlb's registrar.
	Tags []string
	Meta map[string]string
	// Stats is the long-lived per-instance state; set by the Balancer when
	// the instance enters a pool.
	Stats *Stats
	// Datacenter is the Consul datacenter of the instance ("" when not
	// known), Backup whether it is in a backup tier, and Tier the index of
	// its tier in the pool (0 in an untiered pool); set by UpdateTiers.
	Datacenter string
	Backup     bool
	Tier       int
}

// Stats is per-instance state that outlives pool snapshots. All fields are
// atomics: the request path reads and writes them without locks.
type Stats struct {
	InFlight    atomic.Int64
	Requests    atomic.Uint64
	Failures    atomic.Uint64
	ConsecFails atomic.Int32
	// EjectedUntil is a unix-nano deadline; the instance is not picked
	// before it unless every instance is ejected (never eject them all).
	EjectedUntil atomic.Int64
	// Ejections counts consecutive ejections, for exponential backoff.
	Ejections atomic.Int32
	// EWMABits is the latency EWMA in nanoseconds (float64 bits), used by
	// p2c_ewma; read it with Latency, which also applies the decay.
	EWMABits atomic.Uint64
	// EWMAStamp is the unix-nano time of the last EWMA update: the estimate
	// decays towards zero from there, so an instance avoided for being slow
	// is tried again after a while.
	EWMAStamp atomic.Int64
	// Draining is set by an operator (admin API) or by a first-hand drain
	// signal from the instance; a draining instance gets no new requests.
	Draining atomic.Bool
	// BackoffUntil is a unix-nano deadline set from Retry-After.
	BackoffUntil atomic.Int64
}
