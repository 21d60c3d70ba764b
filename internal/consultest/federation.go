package consultest

import (
	"context"
	"fmt"
	"slices"
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
	servers := make([]*Server, 0, len(dcs))
	for i, dc := range dcs {
		hcl := fmt.Sprintf("datacenter = %q\n", dc)
		if i > 0 {
			hcl += fmt.Sprintf("retry_join_wan = [\"127.0.0.1:%d\"]\nretry_interval_wan = \"200ms\"\n", servers[0].SerfWAN)
		}
		servers = append(servers, New(t, Options{ExtraHCL: hcl}))
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
