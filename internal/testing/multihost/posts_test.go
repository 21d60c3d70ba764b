package multihost_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// postLoad sends POSTs through the edge, each with a unique body that the
// apps write to their journal (fsynced) before answering, and records
// every outcome.
type postLoad struct {
	stopc chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu  sync.Mutex
	out map[string]postOutcome // body → outcome
}

type postOutcome struct {
	start, end time.Time
	status     int // 0: no answer
	err        string
}

func startPosts(ctx context.Context, client *http.Client, url string, workers int, every time.Duration) *postLoad {
	l := &postLoad{stopc: make(chan struct{}), out: map[string]postOutcome{}}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				body := fmt.Sprintf("p%d-%d", w, i)
				o := postOutcome{start: time.Now()}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
				resp, err := client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					o.status = resp.StatusCode
				} else {
					o.err = err.Error()
				}
				o.end = time.Now()
				l.mu.Lock()
				l.out[body] = o
				l.mu.Unlock()
				select {
				case <-l.stopc:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return l
}

func (l *postLoad) stop() {
	l.once.Do(func() { close(l.stopc) })
	l.wg.Wait()
}

// failedBetween returns the POSTs started in [from, to] that did not get a
// 200, by body.
func (l *postLoad) failedBetween(from, to time.Time) map[string]postOutcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]postOutcome{}
	for body, o := range l.out {
		if o.status != http.StatusOK && !o.start.Before(from) && !o.start.After(to) {
			out[body] = o
		}
	}
	return out
}

// journal reads every app's POST journal: how often each body ran.
func (c *cluster) journalCounts(t *testing.T) map[string]int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(c.journal, "*.journal"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no POST journal in %s (%v): the apps did not record their POSTs", c.journal, err)
	}
	n := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line != "" {
				n[line]++
			}
		}
	}
	return n
}

// checkPosts checks every POST against the journals: none ran twice, each
// 200 ran once, and every failure is the agent's 502 or 504, never a
// client timeout. It returns how many failed.
func (c *cluster) checkPosts(t *testing.T, l *postLoad) int {
	t.Helper()
	ran := c.journalCounts(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	failed := 0
	for body, o := range l.out {
		switch n := ran[body]; {
		case n > 1:
			t.Errorf("POST %q ran %d times (status %d %s)", body, n, o.status, o.err)
		case o.status == http.StatusOK && n != 1:
			t.Errorf("POST %q answered 200 but ran %d times", body, n)
		case o.status != http.StatusOK:
			failed++
			if o.status != http.StatusBadGateway && o.status != http.StatusGatewayTimeout {
				t.Errorf("POST %q started %s failed with status %d %s after %v; want 502 or 504 from the agent",
					body, o.start.Format("15:04:05.000"), o.status, o.err, o.end.Sub(o.start).Round(time.Millisecond))
			}
		}
	}
	return failed
}

// hedges reads the agent's count of hedges and unbudgeted retries.
func (c *cluster) extraAttempts() (hedges, unbudgeted, refused float64) {
	hedges, _ = c.metric(fmt.Sprintf(`meshlb_retry_budget_attempts_total{kind="hedge",service=%q}`, service))
	unbudgeted, _ = c.metric(fmt.Sprintf(`meshlb_retry_budget_attempts_total{kind="unbudgeted",service=%q}`, service))
	refused, _ = c.metric(fmt.Sprintf(`meshlb_retry_budget_refused_total{service=%q}`, service))
	return
}

// affectedBetween returns the successful GETs started in [from, to] that
// took at least d, and when the last of them ended.
func (l *load) affectedBetween(from, to time.Time, d time.Duration) (n int, lastEnd time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.took {
		if s.start.Before(from) || s.start.After(to) || s.took < d {
			continue
		}
		n++
		if end := s.start.Add(s.took); end.After(lastEnd) {
			lastEnd = end
		}
	}
	return n, lastEnd
}

// quantileBetween returns the q-quantile of the successful GETs started
// in [from, to], and how many there are.
func (l *load) quantileBetween(from, to time.Time, q float64) (time.Duration, int) {
	l.mu.Lock()
	var ds []time.Duration
	for _, s := range l.took {
		if !s.start.Before(from) && !s.start.After(to) {
			ds = append(ds, s.took)
		}
	}
	l.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[min(len(ds)-1, int(q*float64(len(ds))))], len(ds)
}
