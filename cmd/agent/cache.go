package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/internal/agentconfig"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

// buildCaches makes a cache for every listener and route with a cache
// block and returns them by listener, each route's cache in order (nil for
// none).
func (a *agent) buildCaches() ([][]*httpcache.Cache, error) {
	out := make([][]*httpcache.Cache, len(a.cfg.Listeners))
	var total int64
	mk := func(name string, cc *agentconfig.Cache) (*httpcache.Cache, error) {
		c, err := httpcache.New(httpcache.Config{MaxSize: cc.MaxSize, MaxObjectSize: cc.MaxObjectSize})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		a.caches = append(a.caches, httpcache.Named{Name: name, Cache: c})
		total += cc.MaxSize
		return c, nil
	}
	for i, l := range a.cfg.Listeners {
		var shared *httpcache.Cache
		if l.Cache != nil {
			c, err := mk(fmt.Sprintf("listener %q", l.Name), l.Cache)
			if err != nil {
				return nil, err
			}
			shared = c
		}
		out[i] = make([]*httpcache.Cache, len(l.Routes))
		for j, r := range l.Routes {
			out[i][j] = shared
			if r.Cache != nil {
				c, err := mk(fmt.Sprintf("listener %q route %d (%s)", l.Name, j, r.Service), r.Cache)
				if err != nil {
					return nil, err
				}
				out[i][j] = c
			}
		}
	}
	a.setMemoryLimit(total)
	return out, nil
}

// setMemoryLimit keeps the Go heap from growing to twice the cached bytes:
// a cache holds its max_size live, and the garbage collector's default
// (GOGC=100) lets the heap reach twice the live data before it collects.
// A soft limit of 1.25 x the caches' sizes plus 48 MiB for the rest of the
// agent keeps RSS near that, within the 1.5 x + 64 MiB the README
// promises. GOMEMLIMIT, when set, wins.
func (a *agent) setMemoryLimit(total int64) {
	if total == 0 {
		return
	}
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		a.log.Info("cache: GOMEMLIMIT set, leaving the Go memory limit to it", "GOMEMLIMIT", v)
		return
	}
	limit := total + total/4 + 48<<20
	debug.SetMemoryLimit(limit)
	a.log.Info("cache: Go memory limit set from the cache sizes", "caches", len(a.caches),
		"max_size_total", total, "memory_limit", limit)
}

// adminCaches describes the caches to the admin API.
func (a *agent) adminCaches() []admin.Cache {
	out := make([]admin.Cache, 0, len(a.caches))
	for _, nc := range a.caches {
		c := nc.Cache
		out = append(out, admin.Cache{
			Name: nc.Name,
			Purge: func(host, target string, prefix bool) int {
				return c.Purge(httpcache.Key(host, target), prefix)
			},
			Stats: func() admin.CacheView {
				s := c.Stats()
				return admin.CacheView{Objects: s.Objects, Bytes: s.Bytes, Used: s.Weight, MaxSize: s.MaxSize,
					Hits: s.Hits, Misses: s.Misses, HitRatio: s.HitRatio()}
			},
		})
	}
	return out
}
