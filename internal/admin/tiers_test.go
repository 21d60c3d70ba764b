package admin

import (
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/lb"
)

// TestListPoolsSaysWhichTierServes: a tiered pool's tiers, the serving
// tier (after every primary is ejected: the backups) and each instance's
// datacenter and backup flag, over gRPC and in the JSON view.
func TestListPoolsSaysWhichTierServes(t *testing.T) {
	ctx := testContext(t, testTimeout)
	b := newBalancer(t, "web")
	b.UpdateTiers([]lb.Tier{
		{Datacenter: "dc1", Instances: []lb.Instance{inst("web", "web-a", 8071)}},
		{Datacenter: "dc1", Backup: true, Instances: []lb.Instance{inst("web", "web-b", 8072)}},
		{Datacenter: "dc2", Remote: true, Instances: []lb.Instance{inst("web", "web-a", 9071)}},
	})
	b.Pool().Instances[0].Stats.EjectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: b}}}, nil)
	resp, err := adminpb.NewAdminClient(dial(t, srv.addr)).ListPools(ctx, &adminpb.ListPoolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	p := resp.GetPools()[0]
	sv := p.GetServing()
	if sv.GetTier() != "backup" || sv.GetDatacenter() != "dc1" || sv.GetIndex() != 1 || sv.GetSwitches() != 1 ||
		sv.GetSince() == nil || sv.GetReason() == "" {
		t.Errorf("serving = %v, want the dc1 backups after one switch, with since and reason", sv)
	}
	if ts := p.GetTiers(); len(ts) != 3 || ts[1].GetBackup() != true || ts[2].GetDatacenter() != "dc2" || !ts[2].GetRemote() {
		t.Errorf("tiers = %v", ts)
	}
	ins := p.GetInstances()
	if len(ins) != 3 || ins[1].GetId() != "web-b" || !ins[1].GetBackup() || ins[2].GetDatacenter() != "dc2" {
		t.Errorf("instances = %v", ins)
	}
	v := ViewPool(p)
	if v.Serving == nil || v.Serving.Tier != "backup" || len(v.Tiers) != 3 || !v.Instances[1].Backup || v.Instances[2].Datacenter != "dc2" {
		t.Errorf("view = %+v", v)
	}
}
