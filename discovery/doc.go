// Package discovery is everything in meshlb that talks to Consul: the
// watcher, which follows a service's healthy instances with blocking queries
// and hands lb pool snapshots upward (for many services, the hub feeds the
// watchers from two datacenter-wide long polls), and the registration,
// which keeps one app instance registered with a TTL check, re-registers it
// when Consul loses state, and deregisters it on shutdown.
//
// It depends on lb for its types only (Instance, Tier, Pool); it must not
// import proxy or anything of the binaries, and it never decides how
// traffic is balanced.
package discovery
