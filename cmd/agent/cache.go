package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

// fileCache is a cache block in a listener or a route:
//
//	cache { max_size = "256MiB"  max_object_size = "8MiB" }
type fileCache struct {
	MaxSize       string  `hcl:"max_size"`
	MaxObjectSize *string `hcl:"max_object_size,optional"`
}

// cacheConfig sizes one HTTP cache.
type cacheConfig struct {
	maxSize, maxObjectSize int64 // maxObjectSize 0: the default (max_size/8)
}

// minCacheSize is the smallest cache accepted: below it the bookkeeping
// would crowd out the responses.
const minCacheSize = 64 << 10

func (fc *fileCache) parse(where string) (*cacheConfig, error) {
	n, err := parseSize(fc.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid cache max_size %q: %w", where, fc.MaxSize, err)
	}
	if n < minCacheSize {
		return nil, fmt.Errorf("%s: invalid cache max_size %q: at least 64KiB", where, fc.MaxSize)
	}
	cc := &cacheConfig{maxSize: n}
	if fc.MaxObjectSize != nil {
		o, err := parseSize(*fc.MaxObjectSize)
		if err != nil || o == 0 {
			return nil, fmt.Errorf("%s: invalid cache max_object_size %q: want a positive size such as 1m or 8MiB", where, *fc.MaxObjectSize)
		}
		if o > n {
			return nil, fmt.Errorf("%s: invalid cache max_object_size %q: larger than max_size %q", where, *fc.MaxObjectSize, fc.MaxSize)
		}
		cc.maxObjectSize = o
	}
	return cc, nil
}

// parseCacheFlag reads --cache SIZE.
func parseCacheFlag(v string) (*cacheConfig, error) {
	n, err := parseSize(v)
	if err != nil {
		return nil, fmt.Errorf("invalid --cache %q: %w", v, err)
	}
	if n < minCacheSize {
		return nil, fmt.Errorf("invalid --cache %q: at least 64KiB (leave the flag out for no cache)", v)
	}
	return &cacheConfig{maxSize: n}, nil
}

// buildCaches makes a cache for every listener and route with a cache
// block and returns them by listener, each route's cache in order (nil for
// none).
func (a *agent) buildCaches() ([][]*httpcache.Cache, error) {
	out := make([][]*httpcache.Cache, len(a.cfg.listeners))
	var total int64
	mk := func(name string, cc *cacheConfig) (*httpcache.Cache, error) {
		c, err := httpcache.New(httpcache.Config{MaxSize: cc.maxSize, MaxObjectSize: cc.maxObjectSize})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		a.caches = append(a.caches, httpcache.Named{Name: name, Cache: c})
		total += cc.maxSize
		return c, nil
	}
	for i, l := range a.cfg.listeners {
		var shared *httpcache.Cache
		if l.cache != nil {
			c, err := mk(fmt.Sprintf("listener %q", l.name), l.cache)
			if err != nil {
				return nil, err
			}
			shared = c
		}
		out[i] = make([]*httpcache.Cache, len(l.routes))
		for j, r := range l.routes {
			out[i][j] = shared
			if r.cache != nil {
				c, err := mk(fmt.Sprintf("listener %q route %d (%s)", l.name, j, r.service), r.cache)
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
