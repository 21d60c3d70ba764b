package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

func TestPct(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	for _, tc := range []struct {
		name string
		d    []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, -1},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of odd", ms(5, 1, 3), 50, 3 * time.Millisecond},
		{"median of even is the lower", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p99 of 30 is the max", ms(30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 99, 30 * time.Millisecond},
		{"p99 of 200 is the 198th", ms(seq(200)...), 99, 198 * time.Millisecond},
		{"max", ms(2, 9, 4), 100, 9 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pct(tc.d, tc.p); got != tc.want {
				t.Fatalf("pct(%v, %v) = %v, want %v", tc.d, tc.p, got, tc.want)
			}
		})
	}
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i + 1
	}
	return s
}

// TestReadLog feeds agent log lines (hclog text format) to the log reader
// and checks that waiters see the "pool updated" lines they wait for, and
// only those.
func TestReadLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name      string
		lines     string
		service   string
		instances int
		wantFound bool
		wantWarns int
	}{
		{"plain", "2026-11-29T03:37:28.419Z [INFO]  agent: pool updated: service=big instances=10000\n", "big", 10000, true, 0},
		{"quoted service", `2026-11-29T03:37:28.419Z [INFO]  agent: pool updated: service="s0001" instances=10` + "\n", "s0001", 10, true, 0},
		{"other count", "2026-11-29T03:37:28.419Z [INFO]  agent: pool updated: service=big instances=9999\n", "big", 10000, false, 0},
		{"other service", "2026-11-29T03:37:28.419Z [INFO]  agent: pool updated: service=bigger instances=10000\n", "big", 10000, false, 0},
		{"warning counted", "2026-11-29T03:37:28.419Z [WARN]  agent.watch: cannot query consul: service=s1 error=\"429\"\n" +
			"2026-11-29T03:37:28.419Z [INFO]  agent: pool updated: service=s1 instances=3\n", "s1", 3, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &agentProc{pools: map[string]poolEvent{}, proc: &testproc.Proc{Done: make(chan struct{})}}
			a.readLog(strings.NewReader(tc.lines))
			_, err := a.waitPool(ctx, tc.service, tc.instances, time.Time{}, 50*time.Millisecond)
			if found := err == nil; found != tc.wantFound {
				t.Fatalf("found = %v (err %v), want %v", found, err, tc.wantFound)
			}
			if n, _ := a.warnCount(); n != tc.wantWarns {
				t.Fatalf("warnings = %d, want %d", n, tc.wantWarns)
			}
		})
	}
}
