package discovery

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// FuzzInstances decodes a /v1/health/service payload and converts it:
// whatever Consul (or a proxy in front of it) sends, Instances must not
// panic and must only return instances that can be dialled. The seed
// corpus is in testdata/fuzz/FuzzInstances.
func FuzzInstances(f *testing.F) {
	f.Add([]byte(`[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"a","Service":"web","Port":8080,"Weights":{"Passing":3,"Warning":1}},"Checks":[{"CheckID":"serfHealth","Status":"passing"}]}]`))
	f.Add([]byte(`[null,{"Service":null},{"Node":null,"Service":{"ID":"x","Port":1,"Address":"::1"},"Checks":[null]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries []*api.ServiceEntry
		if err := json.Unmarshal(data, &entries); err != nil {
			return
		}
		warned := map[string]int{}
		got := Instances(entries, func(id, reason string) {
			warned[id]++
			if reason == "" {
				t.Errorf("instance %q skipped without a reason", id)
			}
		})
		for id, n := range warned {
			if n > 1 {
				t.Errorf("instance %q reported %d times in one conversion", id, n)
			}
		}
		if len(got) > len(entries) {
			t.Fatalf("%d instances out of %d entries", len(got), len(entries))
		}
		for i, in := range got {
			if in.Port < 1 || in.Port > 65535 {
				t.Errorf("instance %q has port %d", in.ID, in.Port)
			}
			if in.Address == "" || (net.ParseIP(in.Address) == nil && !isDNSName(in.Address)) {
				t.Errorf("instance %q has address %q", in.ID, in.Address)
			}
			if in.HostPort != net.JoinHostPort(in.Address, strconv.Itoa(in.Port)) {
				t.Errorf("instance %q: HostPort %q for %q port %d", in.ID, in.HostPort, in.Address, in.Port)
			}
			if _, _, err := net.SplitHostPort(in.HostPort); err != nil {
				t.Errorf("instance %q: HostPort %q does not split: %v", in.ID, in.HostPort, err)
			}
			if in.Weight < 1 {
				t.Errorf("instance %q has weight %d", in.ID, in.Weight)
			}
			if in.ID == "" {
				t.Error("instance with an empty ID")
			}
			if i > 0 && strings.Compare(got[i-1].ID, in.ID) >= 0 {
				t.Errorf("instances not sorted by unique ID: %q then %q", got[i-1].ID, in.ID)
			}
		}
	})
}
