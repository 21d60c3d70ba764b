package adminclient

import (
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/lb"
)

func TestStatusSaysWhichTierServes(t *testing.T) {
	b, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b.UpdateTiers([]lb.Tier{
		{Datacenter: "dc1", Instances: []lb.Instance{{ID: "a", Address: "10.0.0.1", Port: 80}}},
		{Datacenter: "dc2", Remote: true, Instances: []lb.Instance{{ID: "a", Address: "10.0.0.2", Port: 80}}},
	})
	b.Pool().Instances[0].Stats.EjectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
	resp := &adminpb.ListPoolsResponse{}
	p := &adminpb.Pool{Service: "web", HasPool: true}
	sv := b.Serving()
	p.Serving = &adminpb.Serving{Tier: sv.Tier.Name(), Datacenter: sv.Tier.Datacenter, Remote: sv.Tier.Remote,
		Index: int32(sv.Index), Reason: sv.Reason, Switches: sv.Switches}
	for _, ti := range b.Pool().Tiers() {
		p.Tiers = append(p.Tiers, &adminpb.Tier{Datacenter: ti.Datacenter, Backup: ti.Backup, Remote: ti.Remote, Instances: int32(ti.Size)})
	}
	resp.Pools = append(resp.Pools, p)
	var out strings.Builder
	if err := printServing(&out, resp); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"web: serving dc2 primary since", "1 switches", "tiers: dc1 primary (1), dc2 primary (1)",
		"last switch: dc1 primary: 1 instances: 0 ready, 1 ejected by passive health"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
}
