package admin

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// BenchmarkPollChanged10k: one poll after a pool update at 10,000
// instances with 20 of them changed (what the admin API costs the agent
// per pool update under churn).
func BenchmarkPollChanged10k(b *testing.B) {
	const n = 10000
	pools := [2][]lb.Instance{}
	for k := range pools {
		pools[k] = make([]lb.Instance, n)
		for i := range n {
			pools[k][i] = inst("web", fmt.Sprintf("web-%05d", i), 20000+i)
			if k == 1 && i%500 == 0 {
				pools[k][i].Tags = []string{"v2"}
			}
		}
	}
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		b.Fatal(err)
	}
	bal.Update(pools[0])
	s := New(Options{Services: []Service{{Balancer: bal}}})
	s.pollOnce(time.Now())
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		bal.Update(pools[(i+1)%2])
		b.StartTimer()
		s.pollOnce(time.Now())
	}
}
