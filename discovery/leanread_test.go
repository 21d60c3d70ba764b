package discovery

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

// TestWatchLeanReadsAfterPrevious runs a watcher through NewClient's lean
// transport against a fake Consul whose answers change a few entries at a
// time, with a failed read and a malformed answer between them: each pool
// is the one consul/api's decoding gives, and the unchanged entries were
// copied from the answer before (decodeHealthAfter), not decoded again.
func TestWatchLeanReadsAfterPrevious(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	answers := [][]byte{
		healthFixture(200, 0),
		healthFixture(200, 3),
		nil,                    // a 500
		[]byte(`[{"Service":`), // cut short
		healthFixture(200, 5),
		healthFixture(210, 5),
		healthFixture(500, 5), // past the buffer sized from the last answer
		healthFixture(20, 0),  // the slot's buffer is dropped for a smaller one
		healthFixture(190, 0),
	}
	served := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		k := n
		n++
		mu.Unlock()
		if k >= len(answers) {
			once.Do(func() { close(served) })
			<-r.Context().Done()
			return
		}
		if answers[k] == nil {
			http.Error(w, "rpc error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("X-Consul-Index", strconv.Itoa(k+1))
		w.Header().Set("Content-Type", "application/json")
		w.Write(answers[k])
	}))
	defer srv.Close()
	client, err := NewClient(ClientOptions{Address: srv.Listener.Addr().String(), Watchers: 1})
	if err != nil {
		t.Fatal(err)
	}
	var pools [][]lb.Instance
	w, err := NewWatcher(client, WatchConfig{Service: "web", QueryInterval: time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
		func(p []lb.Instance) { pools = append(pools, p) })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-served:
	case <-ctx.Done():
		t.Fatal("the watcher did not read every answer in time")
	}
	cancel()
	<-done // pools and slots are the Run goroutine's until it returns

	var want [][]lb.Instance
	for _, a := range answers {
		var entries []*api.ServiceEntry
		if a == nil || json.Unmarshal(a, &entries) != nil {
			continue
		}
		want = append(want, Instances(entries, nil))
	}
	if len(pools) != len(want) {
		t.Fatalf("%d pools, want %d", len(pools), len(want))
	}
	for i := range want {
		if !sameInstances(pools[i], want[i]) {
			t.Errorf("pool %d differs from consul/api's", i)
		}
	}
	if got := w.slots[1].ans.reused; got != 20 {
		t.Errorf("last answer: %d entries reused, want 20 (the answer before had 20)", got)
	}
}
