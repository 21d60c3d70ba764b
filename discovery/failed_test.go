package discovery

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestChecksFailed(t *testing.T) {
	type ck struct{ id, status, output string }
	serf := func(status string) ck { return ck{"serfHealth", status, "Agent alive and reachable"} }
	svc := func(status, output string) ck { return ck{"service:web-1", status, output} }
	const drain = DrainNote + ": registrar received a stop signal"
	cases := []struct {
		name   string
		checks []ck
		want   bool
	}{
		{"all passing", []ck{serf(api.HealthPassing), svc(api.HealthPassing, "HTTP 200")}, false},
		{"no checks", nil, false},
		{"service check warning", []ck{serf(api.HealthPassing), svc(api.HealthWarning, "HTTP 429")}, false},
		{"service check failed", []ck{serf(api.HealthPassing), svc(api.HealthCritical, "Get \"http://127.0.0.1:8080/\": context deadline exceeded")}, true},
		{"TTL expired", []ck{serf(api.HealthPassing), svc(api.HealthCritical, "TTL expired")}, true},
		{"app exited", []ck{serf(api.HealthPassing), svc(api.HealthCritical, "app exited with status 137")}, true},
		{"failed, empty output", []ck{svc(api.HealthCritical, "")}, true},
		{"draining", []ck{serf(api.HealthPassing), svc(api.HealthCritical, drain)}, false},
		{"draining, output exactly the note", []ck{svc(api.HealthCritical, DrainNote)}, false},
		{"drain note not at the start", []ck{svc(api.HealthCritical, "not "+DrainNote)}, true},
		{"drain note in another case", []ck{svc(api.HealthCritical, "Draining")}, true},
		{"a passing check saying draining does not excuse a failed one",
			[]ck{svc(api.HealthPassing, DrainNote), {"other", api.HealthCritical, "refused"}}, true},
		{"draining, another check failed with it",
			[]ck{svc(api.HealthCritical, drain), {"http", api.HealthCritical, "connection refused"}}, false},
		{"node failed", []ck{serf(api.HealthCritical), svc(api.HealthPassing, "")}, true},
		{"node failed while draining", []ck{serf(api.HealthCritical), svc(api.HealthCritical, drain)}, true},
		{"node check other than serfHealth failed", []ck{serf(api.HealthPassing), {"disk", api.HealthCritical, "full"}}, true},
		{"service in maintenance", []ck{serf(api.HealthPassing), svc(api.HealthCritical, "x"),
			{api.ServiceMaintPrefix + "web-1", api.HealthCritical, "Maintenance mode is enabled"}}, false},
		{"node in maintenance, node failed", []ck{{api.NodeMaint, api.HealthCritical, ""}, serf(api.HealthCritical)}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &api.ServiceEntry{Node: &api.Node{Node: "n1", Address: "10.0.0.1"},
				Service: &api.AgentService{ID: "web-1", Service: "web", Port: 80}, Checks: api.HealthChecks{}}
			for _, c := range tc.checks {
				e.Checks = append(e.Checks, &api.HealthCheck{CheckID: c.id, Status: c.status, Output: c.output})
			}
			data, err := json.Marshal([]*api.ServiceEntry{e})
			if err != nil {
				t.Fatal(err)
			}
			var lean healthAnswer
			if err := decodeHealth(data, &lean); err != nil {
				t.Fatal(err)
			}
			want := map[string]bool(nil)
			if tc.want {
				want = map[string]bool{"web-1": true, "web-1@n1": true}
			}
			for name, a := range map[string]*healthAnswer{"lean decoder": &lean, "consul/api": fromAPI([]*api.ServiceEntry{e})} {
				if got := failedInAnswer(a); !maps.Equal(got, want) {
					t.Errorf("%s: failedInAnswer = %v, want %v", name, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
				}
			}
		})
	}
}

func TestFailedInAnswer(t *testing.T) {
	node := func(e *api.ServiceEntry, status string) *api.ServiceEntry {
		e.Checks[0].Status = status // serfHealth
		return e
	}
	drained := svcEntry("drained", "n1", "10.0.0.1", "", 83, api.HealthCritical)
	drained.Checks[1].Output = DrainNote + ": stop"
	entries := []*api.ServiceEntry{
		svcEntry("ok", "n1", "10.0.0.1", "", 80, api.HealthPassing),
		svcEntry("check", "n1", "10.0.0.1", "", 82, api.HealthCritical),
		drained,
		node(svcEntry("node", "n2", "10.0.0.2", "", 80, api.HealthPassing), api.HealthCritical),
	}
	got := failedInAnswer(fromAPI(entries))
	want := map[string]bool{"check": true, "check@n1": true, "node": true, "node@n2": true}
	if !maps.Equal(got, want) {
		t.Errorf("failedInAnswer = %v, want %v", got, want)
	}
}
