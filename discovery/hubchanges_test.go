package discovery

import (
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
)

func svcCheck(node, svc, id, status string, modify uint64) *api.HealthCheck {
	return &api.HealthCheck{Node: node, CheckID: "service:" + id, ServiceID: id, ServiceName: svc, Status: status, ModifyIndex: modify}
}

func nodeCheck(node, status string, modify uint64) *api.HealthCheck {
	return &api.HealthCheck{Node: node, CheckID: "serfHealth", Status: status, ModifyIndex: modify}
}

func nodeEntry(node, svc, id string) *api.ServiceEntry {
	return &api.ServiceEntry{Node: &api.Node{Node: node}, Service: &api.AgentService{ID: id, Service: svc}}
}

func TestChangeTrackerState(t *testing.T) {
	base := api.HealthChecks{
		nodeCheck("n1", api.HealthPassing, 5),
		nodeCheck("n2", api.HealthPassing, 5),
		svcCheck("n1", "web", "web-1", api.HealthPassing, 10),
		svcCheck("n2", "web", "web-2", api.HealthPassing, 11),
		svcCheck("n2", "api", "api-1", api.HealthPassing, 12),
		svcCheck("n1", "other", "other-1", api.HealthPassing, 13),
	}
	with := func(mod func(api.HealthChecks) api.HealthChecks) api.HealthChecks {
		c := make(api.HealthChecks, len(base))
		for i, h := range base {
			cp := *h
			c[i] = &cp
		}
		return mod(c)
	}
	tests := []struct {
		name      string
		next      api.HealthChecks
		want      []string
		wantNodes bool // a node's own checks changed
	}{
		{"nothing changed", with(func(c api.HealthChecks) api.HealthChecks { return c }), nil, false},
		{"same checks in another order", with(func(c api.HealthChecks) api.HealthChecks { slices.Reverse(c); return c }), nil, false},
		{"a service check goes critical", with(func(c api.HealthChecks) api.HealthChecks {
			c[2].Status, c[2].ModifyIndex = api.HealthCritical, 20
			return c
		}), []string{"web"}, false},
		{"only the modify index moves (output or definition changed)", with(func(c api.HealthChecks) api.HealthChecks {
			c[4].ModifyIndex = 21
			return c
		}), []string{"api"}, false},
		{"an unwatched service changes", with(func(c api.HealthChecks) api.HealthChecks {
			c[5].Status, c[5].ModifyIndex = api.HealthCritical, 22
			return c
		}), nil, false},
		{"a check is added", with(func(c api.HealthChecks) api.HealthChecks {
			return append(c, svcCheck("n3", "api", "api-2", api.HealthPassing, 23))
		}), []string{"api"}, false},
		{"a service loses its only check", with(func(c api.HealthChecks) api.HealthChecks {
			return slices.Delete(c, 4, 5)
		}), []string{"api"}, false},
		{"node check of n2: services with instances there", with(func(c api.HealthChecks) api.HealthChecks {
			c[1].Status, c[1].ModifyIndex = api.HealthCritical, 24
			return c
		}), []string{"api", "web"}, true},
		{"node n1 deleted: its node check and instances vanish", with(func(c api.HealthChecks) api.HealthChecks {
			return api.HealthChecks{c[1], c[3], c[4]}
		}), []string{"web"}, true},
		{"node check of a node without watched instances", with(func(c api.HealthChecks) api.HealthChecks {
			return append(c, nodeCheck("n9", api.HealthCritical, 25))
		}), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newChangeTracker([]string{"web", "api"})
			if got, nodes := tr.stateAnswer(base, true); len(got) != 0 || nodes {
				t.Fatalf("baseline answer returned %v, %v; want nothing", got, nodes)
			}
			tr.read("web", answerNodes(fromAPI([]*api.ServiceEntry{nodeEntry("n1", "web", "web-1"), nodeEntry("n2", "web", "web-2")})))
			tr.read("api", answerNodes(fromAPI([]*api.ServiceEntry{nodeEntry("n2", "api", "api-1")})))
			if got, nodes := tr.stateAnswer(tt.next, false); !slices.Equal(got, tt.want) || nodes != tt.wantNodes {
				t.Errorf("stateAnswer = %v, nodes %v; want %v, %v", got, nodes, tt.want, tt.wantNodes)
			}
			// The answer is the new baseline.
			if got, nodes := tr.stateAnswer(tt.next, false); len(got) != 0 || nodes {
				t.Errorf("the same answer again = %v, %v; want nothing", got, nodes)
			}
		})
	}
}

func TestChangeTrackerNodeMapFollowsReads(t *testing.T) {
	tr := newChangeTracker([]string{"web"})
	checks := api.HealthChecks{nodeCheck("n1", api.HealthPassing, 1), nodeCheck("n2", api.HealthPassing, 1)}
	tr.stateAnswer(checks, true)
	tr.read("web", answerNodes(fromAPI([]*api.ServiceEntry{nodeEntry("n1", "web", "a")})))
	tr.read("web", answerNodes(fromAPI([]*api.ServiceEntry{nodeEntry("n2", "web", "b")}))) // moved to n2
	n1down := api.HealthChecks{nodeCheck("n1", api.HealthCritical, 2), nodeCheck("n2", api.HealthPassing, 1)}
	if got, _ := tr.stateAnswer(n1down, false); len(got) != 0 {
		t.Errorf("node n1 changed after web left it: %v, want nothing", got)
	}
	n2down := api.HealthChecks{nodeCheck("n1", api.HealthCritical, 2), nodeCheck("n2", api.HealthCritical, 3)}
	if got, _ := tr.stateAnswer(n2down, false); !slices.Equal(got, []string{"web"}) {
		t.Errorf("node n2 changed: %v, want [web]", got)
	}
}

func TestChangeTrackerCatalog(t *testing.T) {
	base := map[string][]string{"web": {"b", "a"}, "api": nil, "other": {"x"}}
	// Every change asks for a full pass (full): the answer cannot rule
	// out instances changed beside what it names, in the same index.
	tests := []struct {
		name string
		next map[string][]string
		want []string
	}{
		{"same names and tags: an instance changed somewhere", map[string][]string{"web": {"a", "b"}, "api": nil, "other": {"x"}}, nil},
		{"a watched service gains a tag", map[string][]string{"web": {"a", "b", "c"}, "api": nil, "other": {"x"}}, []string{"web"}},
		{"a watched service disappears", map[string][]string{"web": {"a", "b"}, "other": {"x"}}, []string{"api"}},
		{"an empty tag list is not a missing service", map[string][]string{"web": {"a", "b"}, "api": {}, "other": {"x"}}, nil},
		{"only an unwatched service changes", map[string][]string{"web": {"a", "b"}, "api": nil}, nil},
		{"a watched service appears", map[string][]string{"web": {"a", "b"}, "api": nil, "other": {"x"}, "new": {"t"}}, []string{"new"}},
		{"two watched services change at once", map[string][]string{"web": {"a"}, "other": {"x"}, "new": nil}, []string{"api", "new", "web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newChangeTracker([]string{"web", "api", "new"})
			if got, full := tr.catalogAnswer(base, true); len(got) != 0 || full {
				t.Fatalf("baseline answer returned %v, full %v; want nothing", got, full)
			}
			got, full := tr.catalogAnswer(tt.next, false)
			if !slices.Equal(got, tt.want) || !full {
				t.Errorf("catalogAnswer = %v, full %v; want %v, true", got, full, tt.want)
			}
		})
	}
}
