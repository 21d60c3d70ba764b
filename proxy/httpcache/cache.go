package httpcache

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// DefaultLockTimeout bounds how long a request waits for another one
// fetching the same URL (nginx's proxy_cache_lock_timeout).
const DefaultLockTimeout = 5 * time.Second

// Config sizes a Cache.
type Config struct {
	// MaxSize bounds the bytes kept: bodies, fields and bookkeeping.
	MaxSize int64
	// MaxObjectSize is the largest body stored; larger responses stream
	// through unstored (default MaxSize/8, at most MaxSize).
	MaxObjectSize int64
	// LockTimeout bounds the wait for a concurrent fetch of the same URL
	// (default DefaultLockTimeout).
	LockTimeout time.Duration
}

// Cache is a size-bounded store of responses, keyed by host and
// request-target, with a variant per Vary selection. It is safe for
// concurrent use.
//
// The store is otter (W-TinyLFU eviction, weighted by bytes). A URL whose
// response has no Vary keeps its Entry under the URL key itself (one
// lookup per hit); otherwise the URL key holds a marker naming the Vary
// fields and a generation, and each variant's Entry sits under a key that
// carries the marker's generation, so variants of a replaced marker are
// never served. URL keys never contain a NUL byte; variant keys do.
type Cache struct {
	cfg   Config
	store *otter.Cache[string, *value]
	gen   atomic.Uint64

	mu    sync.Mutex
	fills map[string]*Fill // URL keys being fetched

	hits, misses, stale, collapsed, stores, purged atomic.Int64
	bytes, objects                                 atomic.Int64
}

// value is what the store holds: a marker or an entry.
type value struct {
	marker *marker
	entry  *Entry
}

// marker describes the stored variants of one URL.
type marker struct {
	gen   uint64
	names []string

	mu       sync.Mutex
	variants map[string]struct{} // store keys
}

// New makes a Cache.
func New(cfg Config) (*Cache, error) {
	if cfg.MaxSize <= 0 {
		return nil, fmt.Errorf("httpcache: invalid max size %d: must be positive", cfg.MaxSize)
	}
	if cfg.MaxObjectSize <= 0 {
		cfg.MaxObjectSize = cfg.MaxSize / 8
	}
	if cfg.MaxObjectSize > cfg.MaxSize {
		return nil, fmt.Errorf("httpcache: max object size %d larger than max size %d", cfg.MaxObjectSize, cfg.MaxSize)
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = DefaultLockTimeout
	}
	c := &Cache{cfg: cfg, fills: make(map[string]*Fill)}
	store, err := otter.New(&otter.Options[string, *value]{
		MaximumWeight: uint64(cfg.MaxSize),
		Weigher: func(k string, v *value) uint32 {
			if v.entry != nil {
				return uint32(min(v.entry.size+len(k), 1<<32-1))
			}
			return uint32(128 + len(k))
		},
		OnAtomicDeletion: func(e otter.DeletionEvent[string, *value]) {
			if e.Value.entry != nil {
				c.objects.Add(-1)
				c.bytes.Add(-int64(len(e.Value.entry.Body)))
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("httpcache: %w", err)
	}
	c.store = store
	return c, nil
}

// MaxObjectSize is the largest body the cache stores.
func (c *Cache) MaxObjectSize() int64 { return c.cfg.MaxObjectSize }

// MaxSize is the cache's bound in bytes.
func (c *Cache) MaxSize() int64 { return c.cfg.MaxSize }

// Key is the store key of a request: its host without the port, lower
// case, and its request-target.
func Key(host, target string) string {
	return strings.ToLower(stripPort(host)) + target
}

// Lookup finds the variant stored under key that the request header h
// selects. When there is none, miss says why: "uri-miss" (nothing stored
// for the URL) or "vary-miss".
func (c *Cache) Lookup(key string, h http.Header) (e *Entry, miss string) {
	mv, ok := c.store.GetIfPresent(key)
	if !ok {
		return nil, "uri-miss"
	}
	if mv.entry != nil {
		return mv.entry, ""
	}
	m := mv.marker
	ev, ok := c.store.GetIfPresent(variantKey(key, m.gen, VaryKey(m.names, h)))
	if !ok || ev.entry == nil {
		return nil, "vary-miss"
	}
	return ev.entry, ""
}

func variantKey(key string, gen uint64, vary string) string {
	return key + "\x00" + strconv.FormatUint(gen, 36) + "\x00" + vary
}

// Store keeps e under key (replacing the variant the same request
// selects). A body over MaxObjectSize is not stored.
func (c *Cache) Store(key string, e *Entry) bool {
	if int64(len(e.Body)) > c.cfg.MaxObjectSize || int64(e.size) > c.cfg.MaxSize {
		return false
	}
	e.prepareWire()
	mv, ok := c.store.GetIfPresent(key)
	if len(e.varyNames) == 0 {
		if ok && mv.marker != nil {
			c.dropVariants(mv.marker)
		}
		c.objects.Add(1)
		c.bytes.Add(int64(len(e.Body)))
		c.store.Set(key, &value{entry: e})
		c.stores.Add(1)
		return true
	}
	var m *marker
	if ok && mv.marker != nil && equalNames(mv.marker.names, e.varyNames) {
		m = mv.marker
	} else {
		if ok && mv.marker != nil {
			c.dropVariants(mv.marker)
		}
		m = &marker{gen: c.gen.Add(1), names: e.varyNames, variants: make(map[string]struct{}, 1)}
		c.store.Set(key, &value{marker: m})
	}
	vk := variantKey(key, m.gen, e.varyKey)
	m.mu.Lock()
	m.variants[vk] = struct{}{}
	m.mu.Unlock()
	c.objects.Add(1)
	c.bytes.Add(int64(len(e.Body)))
	c.store.Set(vk, &value{entry: e})
	c.stores.Add(1)
	return true
}

func equalNames(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Invalidate drops every variant stored under key.
func (c *Cache) Invalidate(key string) bool {
	mv, ok := c.store.Invalidate(key)
	if !ok {
		return false
	}
	if mv.marker != nil {
		c.dropVariants(mv.marker)
	}
	return true
}

func (c *Cache) dropVariants(m *marker) {
	m.mu.Lock()
	keys := make([]string, 0, len(m.variants))
	for k := range m.variants {
		keys = append(keys, k)
	}
	clear(m.variants)
	m.mu.Unlock()
	for _, k := range keys {
		c.store.Invalidate(k)
	}
}

// Purge drops the URL key, or with prefix every URL key that starts with
// key, and returns how many URLs it dropped.
func (c *Cache) Purge(key string, prefix bool) int {
	if !prefix {
		if c.Invalidate(key) {
			c.purged.Add(1)
			return 1
		}
		return 0
	}
	var keys []string
	for k := range c.store.Keys() {
		if strings.HasPrefix(k, key) && !strings.Contains(k, "\x00") {
			keys = append(keys, k)
		}
	}
	n := 0
	for _, k := range keys {
		if c.Invalidate(k) {
			n++
		}
	}
	c.purged.Add(int64(n))
	return n
}

// Fill is one fetch of a URL that other requests for it may wait for
// (request collapsing, nginx's proxy_cache_lock).
type Fill struct {
	c    *Cache
	key  string
	done chan struct{}
}

// Acquire makes the caller the one fetching key and returns its Fill, or,
// when another request is fetching it, nil and a channel closed when that
// fetch ends.
func (c *Cache) Acquire(key string) (*Fill, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.fills[key]; ok {
		return nil, f.done
	}
	f := &Fill{c: c, key: key, done: make(chan struct{})}
	c.fills[key] = f
	return f, nil
}

// Done ends the fetch and wakes its waiters. It may be called more than
// once.
func (f *Fill) Done() {
	if f == nil {
		return
	}
	c := f.c
	c.mu.Lock()
	if c.fills[f.key] == f {
		delete(c.fills, f.key)
		close(f.done)
	}
	c.mu.Unlock()
}

// Wait waits for the fetch behind done, at most LockTimeout; false when
// it gave up or ctx ended first.
func (c *Cache) Wait(ctx context.Context, done <-chan struct{}) bool {
	c.collapsed.Add(1)
	t := time.NewTimer(c.cfg.LockTimeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// Count records a served request's outcome for the statistics.
func (c *Cache) Count(s *Status) {
	switch {
	case s.Hit:
		c.hits.Add(1)
		if s.TTL < 0 {
			c.stale.Add(1) // max-stale, stale-while-revalidate
		}
	case s.Detail == "stale-if-error":
		// Forwarded (or no instance to forward to), answered stale.
		c.misses.Add(1)
		c.stale.Add(1)
	case s.Fwd != "" && s.Fwd != "method" && s.Fwd != "bypass":
		c.misses.Add(1)
	}
}

// Stats is a snapshot of a Cache's counters.
type Stats struct {
	Hits, Misses, StaleServed, CollapsedWaits, Stores, Purged int64
	Objects, Bytes, Weight, MaxSize                           int64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), StaleServed: c.stale.Load(),
		CollapsedWaits: c.collapsed.Load(), Stores: c.stores.Load(), Purged: c.purged.Load(),
		Objects: c.objects.Load(), Bytes: c.bytes.Load(),
		Weight: int64(c.store.WeightedSize()), MaxSize: c.cfg.MaxSize,
	}
}

// HitRatio is hits / (hits + misses), 0 before any request.
func (s Stats) HitRatio() float64 {
	if n := s.Hits + s.Misses; n > 0 {
		return float64(s.Hits) / float64(n)
	}
	return 0
}
