package discovery

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestFailedInAnswer(t *testing.T) {
	node := func(e *api.ServiceEntry, status string) *api.ServiceEntry {
		e.Checks[0].Status = status // serfHealth
		return e
	}
	entries := []*api.ServiceEntry{
		svcEntry("ok", "n1", "10.0.0.1", "", 80, api.HealthPassing),
		svcEntry("check", "n1", "10.0.0.1", "", 82, api.HealthCritical), // a drain looks the same: not counted
		node(svcEntry("node", "n2", "10.0.0.2", "", 80, api.HealthPassing), api.HealthCritical),
	}
	got := failedInAnswer(fromAPI(entries))
	if !got["node"] || got["check"] || got["ok"] {
		t.Errorf("failedInAnswer = %v, want only the instance on the failed node", got)
	}
}
