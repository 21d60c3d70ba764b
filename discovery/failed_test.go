package discovery

import (
	"maps"
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestFailedIDs(t *testing.T) {
	node := func(e *api.ServiceEntry, status string) *api.ServiceEntry {
		e.Checks[0].Status = status // serfHealth
		return e
	}
	output := func(e *api.ServiceEntry, out string) *api.ServiceEntry {
		e.Checks[len(e.Checks)-1].Output = out
		return e
	}
	maint := func(e *api.ServiceEntry) *api.ServiceEntry {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: api.ServiceMaintPrefix + e.Service.ID, Status: api.HealthCritical})
		return e
	}
	entries := []*api.ServiceEntry{
		svcEntry("ok", "n1", "10.0.0.1", "", 80, api.HealthPassing),
		svcEntry("warn", "n1", "10.0.0.1", "", 81, api.HealthWarning),
		output(svcEntry("check", "n1", "10.0.0.1", "", 82, api.HealthCritical), "HTTP GET http://127.0.0.1:82/: connection refused"),
		node(svcEntry("node", "n2", "10.0.0.2", "", 80, api.HealthPassing), api.HealthCritical),
		output(svcEntry("drain", "n1", "10.0.0.1", "", 83, api.HealthCritical), DrainNote+": registrar received a stop signal"),
		maint(svcEntry("maint", "n1", "10.0.0.1", "", 84, api.HealthPassing)),
		svcEntry("twice", "n1", "10.0.0.1", "", 85, api.HealthPassing),
		svcEntry("twice", "n3", "10.0.0.3", "", 85, api.HealthCritical),
		nil,
	}
	got := slices.Sorted(maps.Keys(FailedIDs(entries)))
	want := []string{"check", "node", "twice@n3"}
	if !slices.Equal(got, want) {
		t.Errorf("FailedIDs = %v, want %v (not the passing, warning, draining or maintenance ones)", got, want)
	}
	if FailedIDs(entries[:2]) != nil {
		t.Error("FailedIDs of healthy entries is not nil")
	}
}
