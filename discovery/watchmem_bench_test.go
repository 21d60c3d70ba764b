package discovery

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// BenchmarkWatchHeap10k reports the live heap of a watcher of one service
// of 10,000 instances, read through NewClient's lean transport from a fake
// Consul that answers chunked (as Consul does for a big answer) and
// changes 20 instances per answer, after 10 answers: the read slots, the
// builder and the last pool.
func BenchmarkWatchHeap10k(b *testing.B) {
	const n = 10000
	full := [][]byte{healthFixture(n, 0), healthFixture(n, 20)}
	b.Run("catalog-only", func(b *testing.B) {
		watchHeap(b, [][]byte{catalogOnly(full[0]), catalogOnly(full[1])}, n)
	})
	b.Run("with-checks", func(b *testing.B) { watchHeap(b, full, n) })
}

func watchHeap(b *testing.B, answers [][]byte, n int) {
	const reads = 10
	for b.Loop() {
		b.StopTimer()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		served := make(chan struct{})
		var once sync.Once
		var mu sync.Mutex
		k := 0
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			i := k
			k++
			mu.Unlock()
			if i >= reads {
				once.Do(func() { close(served) })
				<-r.Context().Done()
				return
			}
			w.Header().Set("X-Consul-Index", strconv.Itoa(i+1))
			w.Header().Set("Content-Type", "application/json")
			w.Write(answers[i%2]) // more than the server buffers: chunked
		}))
		client, err := NewClient(ClientOptions{Address: srv.Listener.Addr().String(), Watchers: 1})
		if err != nil {
			b.Fatal(err)
		}
		var mp sync.Mutex
		var pool []lb.Instance
		w, err := NewWatcher(client, WatchConfig{Service: "web", QueryInterval: time.Millisecond},
			func(p []lb.Instance) { mp.Lock(); pool = p; mp.Unlock() })
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		select {
		case <-served:
		case <-ctx.Done():
			b.Fatal("the watcher did not read every answer in time")
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
		cancel()
		<-done
		srv.Close()
		mp.Lock()
		if len(pool) != n {
			b.Fatalf("pool of %d", len(pool))
		}
		mp.Unlock()
		runtime.KeepAlive(w)
		b.StartTimer()
	}
}
