package discovery

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

// svcEntry builds a health entry for service "web" on node (address
// nodeAddr) with the given check statuses; the node's serfHealth passes.
func svcEntry(id, node, nodeAddr, addr string, port int, statuses ...string) *api.ServiceEntry {
	e := &api.ServiceEntry{
		Node: &api.Node{Node: node, Address: nodeAddr},
		Service: &api.AgentService{ID: id, Service: "web", Address: addr, Port: port,
			Weights: api.AgentWeights{Passing: 5, Warning: 2},
			Tags:    []string{"v1"}, Meta: map[string]string{"pid": "42", "host": node}},
		Checks: api.HealthChecks{{Node: node, CheckID: "serfHealth", Status: api.HealthPassing}},
	}
	for _, s := range statuses {
		e.Checks = append(e.Checks, &api.HealthCheck{Node: node, CheckID: "service:" + id, ServiceID: id, Status: s})
	}
	return e
}

func TestInstances(t *testing.T) {
	type want struct {
		id, hostport string
		weight       int
	}
	withCheck := func(e *api.ServiceEntry, id, status string) *api.ServiceEntry {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: id, Status: status})
		return e
	}
	withWeights := func(e *api.ServiceEntry, passing, warning int) *api.ServiceEntry {
		e.Service.Weights = api.AgentWeights{Passing: passing, Warning: warning}
		return e
	}
	for _, tc := range []struct {
		name    string
		entries []*api.ServiceEntry
		want    []want
		warned  []string // "id: reason prefix"
	}{
		{
			name:    "service address wins over the node's",
			entries: []*api.ServiceEntry{svcEntry("a", "n1", "10.0.0.1", "192.0.2.7", 8080, api.HealthPassing)},
			want:    []want{{"a", "192.0.2.7:8080", 5}},
		},
		{
			name:    "falls back to the node address",
			entries: []*api.ServiceEntry{svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing)},
			want:    []want{{"a", "10.0.0.1:8080", 5}},
		},
		{
			name:    "IPv6 is bracketed, DNS names are fine",
			entries: []*api.ServiceEntry{svcEntry("a", "n1", "", "2001:db8::1", 443, api.HealthPassing), svcEntry("b", "n1", "", "app-1.node.dc1.consul", 80)},
			want:    []want{{"a", "[2001:db8::1]:443", 5}, {"b", "app-1.node.dc1.consul:80", 5}},
		},
		{
			name:    "a warning check gives the warning weight",
			entries: []*api.ServiceEntry{svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing, api.HealthWarning)},
			want:    []want{{"a", "10.0.0.1:8080", 2}},
		},
		{
			name:    "a warning node check gives the warning weight too",
			entries: []*api.ServiceEntry{withCheck(svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing), "mem", api.HealthWarning)},
			want:    []want{{"a", "10.0.0.1:8080", 2}},
		},
		{
			name: "weights of 0 become 1",
			entries: []*api.ServiceEntry{
				withWeights(svcEntry("a", "n1", "10.0.0.1", "", 8080, api.HealthPassing), 0, 0),
				withWeights(svcEntry("b", "n1", "10.0.0.1", "", 8081, api.HealthWarning), 3, 0),
			},
			want: []want{{"a", "10.0.0.1:8080", 1}, {"b", "10.0.0.1:8081", 1}},
		},
		{
			name: "critical service check, critical serfHealth, maintenance: dropped silently",
			entries: []*api.ServiceEntry{
				svcEntry("crit", "n1", "10.0.0.1", "", 8080, api.HealthPassing, api.HealthCritical),
				withCheck(svcEntry("serf", "n2", "10.0.0.2", "", 8080, api.HealthPassing), "serfHealth", api.HealthCritical),
				withCheck(svcEntry("nodemaint", "n3", "10.0.0.3", "", 8080, api.HealthPassing), api.NodeMaint, api.HealthCritical),
				withCheck(svcEntry("svcmaint", "n4", "10.0.0.4", "", 8080, api.HealthPassing), api.ServiceMaintPrefix+"svcmaint", api.HealthCritical),
				withCheck(svcEntry("odd", "n5", "10.0.0.5", "", 8080, api.HealthPassing), "x", "bogus"),
				svcEntry("ok", "n6", "10.0.0.6", "", 8080, api.HealthPassing),
			},
			want: []want{{"ok", "10.0.0.6:8080", 5}},
		},
		{
			name: "bad address or port: skipped and reported once per ID",
			entries: []*api.ServiceEntry{
				svcEntry("noaddr", "n1", "", "", 8080, api.HealthPassing),
				svcEntry("badaddr", "n1", "10.0.0.1", "bad host!", 8080, api.HealthPassing),
				svcEntry("badip", "n1", "10.0.0.1", "10.0.0.300", 8080, api.HealthPassing),
				svcEntry("port0", "n1", "10.0.0.1", "", 0, api.HealthPassing),
				svcEntry("porthigh", "n1", "10.0.0.1", "", 65536, api.HealthPassing),
				svcEntry("portneg", "n1", "10.0.0.1", "", -1, api.HealthPassing),
				svcEntry("port65535", "n1", "10.0.0.1", "", 65535, api.HealthPassing),
			},
			want: []want{{"port65535", "10.0.0.1:65535", 5}},
			warned: []string{"noaddr: no address", `badaddr: invalid address "bad host!"`, `badip: invalid address "10.0.0.300"`,
				"port0: invalid port 0", "porthigh: invalid port 65536", "portneg: invalid port -1"},
		},
		{
			name: "output sorted by ID",
			entries: []*api.ServiceEntry{
				svcEntry("c", "n1", "10.0.0.1", "", 3, api.HealthPassing),
				svcEntry("a", "n1", "10.0.0.1", "", 1, api.HealthPassing),
				svcEntry("b", "n1", "10.0.0.1", "", 2, api.HealthPassing),
			},
			want: []want{{"a", "10.0.0.1:1", 5}, {"b", "10.0.0.1:2", 5}, {"c", "10.0.0.1:3", 5}},
		},
		{
			name: "one ID on two nodes: qualified with the node",
			entries: []*api.ServiceEntry{
				svcEntry("web-1", "n2", "10.0.0.2", "", 80, api.HealthPassing),
				svcEntry("web-1", "n1", "10.0.0.1", "", 80, api.HealthPassing),
			},
			want:   []want{{"web-1@n1", "10.0.0.1:80", 5}, {"web-1@n2", "10.0.0.2:80", 5}},
			warned: []string{"web-1: service ID registered on several nodes"},
		},
		{
			name:    "nil entries, nil service, nil checks are ignored",
			entries: []*api.ServiceEntry{nil, {Node: &api.Node{Node: "n"}}, {Service: &api.AgentService{ID: "a", Service: "web", Address: "10.0.0.9", Port: 1}, Checks: api.HealthChecks{nil}}},
			want:    []want{{"a", "10.0.0.9:1", 1}},
		},
		{
			name:    "empty answer",
			entries: nil,
			want:    nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var warned []string
			got := Instances(tc.entries, func(id, reason string) { warned = append(warned, id+": "+reason) })
			if len(got) != len(tc.want) {
				t.Fatalf("got %d instances %v, want %d", len(got), ids(got), len(tc.want))
			}
			for i, w := range tc.want {
				g := got[i]
				if g.ID != w.id || g.HostPort != w.hostport || g.Weight != w.weight {
					t.Errorf("instance %d = {%s %s weight %d}, want {%s %s weight %d}", i, g.ID, g.HostPort, g.Weight, w.id, w.hostport, w.weight)
				}
				if g.Service != "web" {
					t.Errorf("instance %s: Service = %q, want web", g.ID, g.Service)
				}
			}
			if len(warned) != len(tc.warned) {
				t.Fatalf("warned %q, want %d warnings like %q", warned, len(tc.warned), tc.warned)
			}
			for i, w := range tc.warned {
				if !strings.HasPrefix(warned[i], w) {
					t.Errorf("warning %d = %q, want it to start with %q", i, warned[i], w)
				}
			}
		})
	}
}

func TestInstancesCopiesTagsAndMeta(t *testing.T) {
	e := svcEntry("a", "n1", "10.0.0.1", "", 80, api.HealthPassing)
	got := Instances([]*api.ServiceEntry{e}, nil)
	if len(got) != 1 {
		t.Fatalf("got %d instances, want 1", len(got))
	}
	if !slices.Equal(got[0].Tags, []string{"v1"}) || !reflect.DeepEqual(got[0].Meta, map[string]string{"pid": "42", "host": "n1"}) {
		t.Fatalf("tags/meta = %v %v, want copied from the registration", got[0].Tags, got[0].Meta)
	}
	e.Service.Tags[0] = "changed"
	e.Service.Meta["pid"] = "changed"
	if got[0].Tags[0] != "v1" || got[0].Meta["pid"] != "42" {
		t.Fatal("instance shares Tags or Meta with the health answer")
	}
}

func TestSameInstances(t *testing.T) {
	base := func() []lb.Instance {
		return Instances([]*api.ServiceEntry{
			svcEntry("a", "n1", "10.0.0.1", "", 80, api.HealthPassing),
			svcEntry("b", "n1", "10.0.0.1", "", 81, api.HealthPassing),
		}, nil)
	}
	for _, tc := range []struct {
		name   string
		change func([]lb.Instance) []lb.Instance
		same   bool
	}{
		{"identical", func(p []lb.Instance) []lb.Instance { return p }, true},
		{"Stats differ only", func(p []lb.Instance) []lb.Instance { p[0].Stats = &lb.Stats{}; return p }, true},
		{"one fewer", func(p []lb.Instance) []lb.Instance { return p[:1] }, false},
		{"address", func(p []lb.Instance) []lb.Instance { p[0].Address = "10.0.0.2"; return p }, false},
		{"port", func(p []lb.Instance) []lb.Instance { p[0].Port = 82; return p }, false},
		{"weight", func(p []lb.Instance) []lb.Instance { p[1].Weight = 9; return p }, false},
		{"tags", func(p []lb.Instance) []lb.Instance { p[1].Tags = []string{"v2"}; return p }, false},
		{"meta value", func(p []lb.Instance) []lb.Instance {
			p[1].Meta = map[string]string{"pid": "43", "host": "n1"}
			return p
		}, false},
		{"meta key", func(p []lb.Instance) []lb.Instance {
			p[1].Meta = map[string]string{"pid": "42", "hostx": "n1"}
			return p
		}, false},
		{"id", func(p []lb.Instance) []lb.Instance { p[1].ID = "c"; return p }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameInstances(base(), tc.change(base())); got != tc.same {
				t.Errorf("sameInstances = %v, want %v", got, tc.same)
			}
		})
	}
}

func TestInstancesDNSName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"localhost", true},
		{"app-1.node.dc1.consul", true},
		{"app-1.node.dc1.consul.", true},
		{"_srv.example", true},
		{"1a", true},
		{"", false},
		{".", false},
		{"a..b", false},
		{"-a", false},
		{"a-", false},
		{"a b", false},
		{"a/b", false},
		{"10.0.0.300", false},
		{"123", false},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{strings.Repeat("a.", 126) + "a", true}, // 253 characters
		{strings.Repeat("a.", 127) + "a", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := isDNSName(tc.in); got != tc.want {
				t.Errorf("isDNSName(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func ids(p []lb.Instance) []string {
	out := make([]string, len(p))
	for i, in := range p {
		out[i] = in.ID
	}
	return out
}
