package consultest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// NewFederation starts one dev agent per datacenter name (each a server of
// its own datacenter, on its own free ports) and WAN-joins them to the
// first, as Consul federates datacenters; it returns when every agent
// lists every datacenter, so cross-datacenter queries (?dc=) work. The
// agents stop when the test ends; stopping one (Server.Stop) makes its
// datacenter unreachable for the others.
func NewFederation(t TB, dcs ...string) []*Server {
	t.Helper()
	if len(dcs) == 0 {
		t.Fatalf("consultest: NewFederation needs datacenter names")
	}
	// The first agent's WAN port must be known before the others start;
	// they start side by side.
	first := New(t, Options{ExtraHCL: fmt.Sprintf("datacenter = %q\n", dcs[0])})
	servers := make([]*Server, len(dcs))
	servers[0] = first
	errs := make([]error, len(dcs))
	dirs := make([]string, len(dcs))
	for i := range dcs {
		dirs[i] = t.TempDir()
	}
	var wg sync.WaitGroup
	for i := 1; i < len(dcs); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = Start(dirs[i], Options{ExtraHCL: fmt.Sprintf(
				"datacenter = %q\nretry_join_wan = [\"127.0.0.1:%d\"]\nretry_interval_wan = \"200ms\"\n", dcs[i], first.SerfWAN)})
		}()
	}
	wg.Wait()
	for i := 1; i < len(dcs); i++ {
		if s := servers[i]; s != nil {
			t.Cleanup(func() {
				if err := s.Stop(); err != nil {
					t.Logf("consultest: stop: %v", err)
				}
			})
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("consultest: datacenter %s: %v", dcs[i], err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range servers {
		for {
			got, err := s.Client().Catalog().Datacenters()
			if err == nil && len(got) == len(dcs) && !slices.ContainsFunc(dcs, func(dc string) bool { return !slices.Contains(got, dc) }) {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("consultest: datacenters not federated within 30s: %s sees %v (%v)\n%s", s.HTTPAddr, got, err, s.Log())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return servers
}
