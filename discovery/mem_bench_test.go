package discovery

import (
	"runtime"
	"testing"

	"github.com/meshlb/meshlb/lb"
)

// BenchmarkPoolsMemory reports the live heap of 1,000 services × 100
// catalog-only instances held as the agent holds them: a builder (the
// watcher's memory of the last answer) and a balancer per service. Run
// with -memprofile to see where it goes.
func BenchmarkPoolsMemory(b *testing.B) {
	const services, per = 1000, 100
	answer := catalogOnly(healthFixture(per, 0))
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		builders := make([]*instanceBuilder, services)
		bals := make([]*lb.Balancer, services)
		var a healthAnswer
		for s := range services {
			if err := decodeHealth(answer, &a); err != nil {
				b.Fatal(err)
			}
			builders[s] = newInstanceBuilder()
			p, _ := builders[s].build(&a, nil)
			bal, err := lb.NewBalancer("web", lb.Config{})
			if err != nil {
				b.Fatal(err)
			}
			bal.Update(slicesClone(p))
			bals[s] = bal
		}
		b.StopTimer()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(services*per), "B/instance")
		runtime.KeepAlive(builders)
		runtime.KeepAlive(bals)
		b.StartTimer()
	}
}

// BenchmarkPoolsMemoryChurn reports the live heap of 100 services × 1,000
// catalog-only instances after 20 updates per service, each changing one
// more instance (as a rolling deploy does): what the pools keep of the
// updates they went through.
func BenchmarkPoolsMemoryChurn(b *testing.B) {
	const services, per, steps = 100, 1000, 20
	answers := make([][]byte, steps+1)
	for k := range answers {
		answers[k] = catalogOnly(healthFixture(per, k))
	}
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()
		builders := make([]*instanceBuilder, services)
		bals := make([]*lb.Balancer, services)
		var a healthAnswer
		for s := range services {
			builders[s] = newInstanceBuilder()
			bal, err := lb.NewBalancer("web", lb.Config{})
			if err != nil {
				b.Fatal(err)
			}
			bals[s] = bal
			for _, answer := range answers {
				if err := decodeHealth(answer, &a); err != nil {
					b.Fatal(err)
				}
				p, _ := builders[s].build(&a, nil)
				bal.UpdateTiers([]lb.Tier{{Instances: p}})
			}
		}
		b.StopTimer()
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(services*per), "B/instance")
		runtime.KeepAlive(builders)
		runtime.KeepAlive(bals)
		b.StartTimer()
	}
}
