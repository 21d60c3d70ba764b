package admin

import (
	"context"
	"net/url"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
)

// Cache is one HTTP cache of the agent, as the admin API sees it.
type Cache struct {
	// Name says where it is configured, e.g. `listener "web"`.
	Name string
	// Purge drops the stored responses of host (without port) whose
	// request-target is target, or with prefix starts with it, and returns
	// how many URLs it dropped. It must be safe for concurrent use.
	Purge func(host, target string, prefix bool) int
	// Stats reads the cache's counters; cheap and safe for concurrent use.
	Stats func() CacheView
}

// CacheView is what the status page shows of a cache.
type CacheView struct {
	Name     string  `json:"name"`
	Objects  int64   `json:"objects"`
	Bytes    int64   `json:"bytes"` // bodies stored
	Used     int64   `json:"used"`  // weight counted against max_size
	MaxSize  int64   `json:"max_size"`
	Hits     int64   `json:"hits"`
	Misses   int64   `json:"misses"`
	HitRatio float64 `json:"hit_ratio"`
}

// PurgeCache drops the stored responses the request's URL names from every
// cache.
func (a *adminService) PurgeCache(_ context.Context, req *adminpb.PurgeCacheRequest) (*adminpb.PurgeCacheResponse, error) {
	host, target, err := purgeTarget(req.GetUrl())
	if err != nil {
		return nil, err
	}
	var n int
	for _, c := range a.s.caches {
		n += c.Purge(host, target, req.GetPrefix())
	}
	a.s.log.Info("cache purged", "url", req.GetUrl(), "prefix", req.GetPrefix(), "purged", n)
	return &adminpb.PurgeCacheResponse{Purged: uint64(n), Caches: uint32(len(a.s.caches))}, nil
}

// purgeTarget splits an absolute http(s) URL into its host (without port)
// and request-target.
func purgeTarget(raw string) (host, target string, err error) {
	u, perr := url.Parse(raw)
	if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", "", status.Errorf(codes.InvalidArgument,
			"invalid url %q: want an absolute http:// or https:// URL with a host, e.g. http://api.example.com/path", raw)
	}
	target = u.RequestURI()
	if strings.HasSuffix(raw, "?") && u.RawQuery == "" {
		target += "?"
	}
	return u.Hostname(), target, nil
}

// cacheViews reads every cache's counters.
func (s *Server) cacheViews() []CacheView {
	out := make([]CacheView, 0, len(s.caches))
	for _, c := range s.caches {
		v := c.Stats()
		v.Name = c.Name
		out = append(out, v)
	}
	return out
}
