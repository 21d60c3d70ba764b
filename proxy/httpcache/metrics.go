package httpcache

import "github.com/prometheus/client_golang/prometheus"

// Named is a cache and the name its metrics carry (label cache).
type Named struct {
	Name  string
	Cache *Cache
}

// NewCollector exports the caches' counters to Prometheus, read at scrape
// time.
func NewCollector(caches []Named) prometheus.Collector { return &collector{caches: caches} }

type collector struct{ caches []Named }

var (
	cacheHitsDesc      = prometheus.NewDesc("meshlb_cache_hits_total", "Requests answered from the HTTP cache without reaching an instance (stale ones included).", []string{"cache"}, nil)
	cacheMissesDesc    = prometheus.NewDesc("meshlb_cache_misses_total", "Cacheable requests forwarded to an instance: not stored, stale, or the client asked to revalidate.", []string{"cache"}, nil)
	cacheStaleDesc     = prometheus.NewDesc("meshlb_cache_stale_served_total", "Stale responses served (max-stale, stale-while-revalidate, stale-if-error, no instance reachable).", []string{"cache"}, nil)
	cacheCollapsedDesc = prometheus.NewDesc("meshlb_cache_collapsed_waits_total", "Requests that waited for another request fetching the same URL (request collapsing).", []string{"cache"}, nil)
	cacheStoresDesc    = prometheus.NewDesc("meshlb_cache_stores_total", "Responses stored (304 updates included).", []string{"cache"}, nil)
	cacheObjectsDesc   = prometheus.NewDesc("meshlb_cache_objects", "Responses (variants) stored.", []string{"cache"}, nil)
	cacheBytesDesc     = prometheus.NewDesc("meshlb_cache_bytes", "Bytes counted against max_size: bodies, fields and bookkeeping.", []string{"cache"}, nil)
	cacheMaxDesc       = prometheus.NewDesc("meshlb_cache_max_bytes", "The cache's max_size.", []string{"cache"}, nil)
)

func (cc *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cacheHitsDesc, cacheMissesDesc, cacheStaleDesc, cacheCollapsedDesc,
		cacheStoresDesc, cacheObjectsDesc, cacheBytesDesc, cacheMaxDesc} {
		ch <- d
	}
}

func (cc *collector) Collect(ch chan<- prometheus.Metric) {
	for _, nc := range cc.caches {
		s := nc.Cache.Stats()
		for _, m := range []struct {
			d *prometheus.Desc
			t prometheus.ValueType
			v int64
		}{
			{cacheHitsDesc, prometheus.CounterValue, s.Hits},
			{cacheMissesDesc, prometheus.CounterValue, s.Misses},
			{cacheStaleDesc, prometheus.CounterValue, s.StaleServed},
			{cacheCollapsedDesc, prometheus.CounterValue, s.CollapsedWaits},
			{cacheStoresDesc, prometheus.CounterValue, s.Stores},
			{cacheObjectsDesc, prometheus.GaugeValue, s.Objects},
			{cacheBytesDesc, prometheus.GaugeValue, s.Weight},
			{cacheMaxDesc, prometheus.GaugeValue, s.MaxSize},
		} {
			ch <- prometheus.MustNewConstMetric(m.d, m.t, float64(m.v), nc.Name)
		}
	}
}
