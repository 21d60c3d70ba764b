package discovery

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

func TestNewFollowerChoosesWatchersOrAHub(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"}) // never dialled here
	if err != nil {
		t.Fatal(err)
	}
	services := func(n int) []Followed {
		var out []Followed
		for i := range n {
			out = append(out, Followed{Watch: WatchConfig{Service: fmt.Sprintf("s%02d", i)}, OnUpdate: func([]lb.Instance) {}})
		}
		return out
	}
	for _, tc := range []struct {
		n   int
		hub bool
	}{{1, false}, {HubThreshold, false}, {HubThreshold + 1, true}, {100, true}} {
		f, err := NewFollower(client, HubConfig{}, services(tc.n))
		if err != nil {
			t.Fatalf("%d services: %v", tc.n, err)
		}
		if f.Hub() != tc.hub || len(f.Watchers()) != tc.n {
			t.Errorf("%d services: hub %v with %d watchers, want hub %v with %d", tc.n, f.Hub(), len(f.Watchers()), tc.hub, tc.n)
		}
		for i, w := range f.Watchers() {
			if w.Status().Service != fmt.Sprintf("s%02d", i) || w.fed != tc.hub {
				t.Errorf("%d services: watcher %d follows %q (fed %v)", tc.n, i, w.Status().Service, w.fed)
			}
		}
	}
	// A bad service is refused by name, whichever the strategy.
	for _, n := range []int{2, HubThreshold + 2} {
		s := services(n)
		s[1].Watch.Service = "bad/name"
		if _, err := NewFollower(client, HubConfig{}, s); err == nil || !strings.Contains(err.Error(), `"bad/name"`) {
			t.Errorf("%d services with a bad name: err = %v, want one naming it", n, err)
		}
	}
	if _, err := NewFollower(nil, HubConfig{}, services(1)); err == nil {
		t.Error("a nil client was accepted")
	}
}
