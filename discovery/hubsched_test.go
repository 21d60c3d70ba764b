package discovery

import (
	"slices"
	"testing"
	"time"
)

func TestReadSchedulerSpacesFullPassesByTheirCost(t *testing.T) {
	ws := []*Watcher{{}, {}, {}}
	s := newReadScheduler(ws, 2)
	defer s.stop()
	t0 := time.Unix(1_000_000, 0)
	// drain reads everything queued, each probe taking probe.
	drain := func(now time.Time, probe time.Duration) int {
		n := 0
		for {
			w, _, ok := s.next()
			if !ok {
				if len(s.inflight) == 0 {
					return n
				}
				for w := range s.inflight {
					s.done(readDone{w: w, probeTook: probe}, now, nil)
				}
				continue
			}
			n++
			_ = w
		}
	}
	// The first pass starts at once; its probes take 4/3 s each, 2 s
	// side by side (concurrency 2).
	s.fullPass(t0)
	if got := drain(t0.Add(2*time.Second), 4*time.Second/3); got != 3 {
		t.Fatalf("first pass read %d services, want 3", got)
	}
	if s.passTook < 1999*time.Millisecond || s.passTook > 2*time.Second {
		t.Fatalf("pass took %v, want 2s", s.passTook)
	}
	// A change 3 s after the pass began must wait for 8 × 2 s, capped.
	s.fullPass(t0.Add(3 * time.Second))
	if s.fullDue() == nil || len(s.queue) != 0 {
		t.Fatal("a full pass asked for before its gap started at once")
	}
	if !s.busy() {
		t.Fatal("a pass waiting for its gap is not busy")
	}
	// Asking again while it waits changes nothing.
	s.fullPass(t0.Add(4 * time.Second))
	if got := drain(t0.Add(4*time.Second), 0); got != 0 {
		t.Fatalf("read %d services before the gap, want 0", got)
	}
	// When the gap ends, one pass reads each service once.
	s.readAll(t0.Add(maxPassGap), true)
	if s.fullDue() != nil {
		t.Fatal("the waiting pass's timer survived the pass")
	}
	if got := drain(t0.Add(maxPassGap+100*time.Millisecond), 50*time.Millisecond); got != 3 {
		t.Fatalf("second pass read %d services, want 3", got)
	}
	// A cheaper pass shortens the gap (8 × 0.1 s, raised to fullPassGap).
	if s.fullPass(t0.Add(maxPassGap + fullPassGap)); s.fullDue() != nil {
		t.Fatal("after a 0.1 s pass, a pass asked for fullPassGap after it began waited")
	}
}

func TestReadSchedulerReadsAServiceOnceAndAgainIfMarkedInFlight(t *testing.T) {
	a, b := &Watcher{}, &Watcher{}
	s := newReadScheduler([]*Watcher{a, b}, 1)
	defer s.stop()
	now := time.Unix(1_000_000, 0)
	s.mark(a)
	s.mark(a)
	s.mark(b)
	w, _, _ := s.next()
	if w != a {
		t.Fatal("first read is not the first marked")
	}
	if _, _, ok := s.next(); ok {
		t.Fatal("a second read started beyond the concurrency of 1")
	}
	s.mark(a) // changed while read: read again after
	s.done(readDone{w: a}, now, nil)
	var order []*Watcher
	for {
		w, _, ok := s.next()
		if !ok {
			break
		}
		order = append(order, w)
		s.done(readDone{w: w}, now, nil)
	}
	if len(order) != 2 || order[0] != b || order[1] != a {
		t.Fatalf("reads after the first: %v, want b then a once", order)
	}
	if s.busy() {
		t.Fatal("busy with nothing left")
	}
}

func TestReadSchedulerProbesOnlyInFullPasses(t *testing.T) {
	a, b, c := &Watcher{}, &Watcher{}, &Watcher{}
	s := newReadScheduler([]*Watcher{a, b, c}, 3)
	defer s.stop()
	now := time.Unix(1_000_000, 0)
	s.mark(b)            // a named change: read in full
	s.readAll(now, true) // a full pass: probes, but b stays a full read
	s.mark(c)            // named while queued for a probe: read in full
	got := map[*Watcher]bool{}
	for {
		w, probe, ok := s.next()
		if !ok {
			break
		}
		got[w] = probe
	}
	if !got[a] || got[b] || got[c] || len(got) != 3 {
		t.Fatalf("probe per watcher a, b, c = %v, %v, %v (%d read); want true, false, false", got[a], got[b], got[c], len(got))
	}
	for w := range got {
		s.done(readDone{w: w}, now, nil)
	}
	s.readAll(now, false) // a baseline or a resync reads everything in full
	for {
		w, probe, ok := s.next()
		if !ok {
			break
		}
		if probe {
			t.Fatalf("watcher %p probed in a baseline pass", w)
		}
	}
}

func TestReadSchedulerReadsNamedChangesBeforeAPass(t *testing.T) {
	ws := []*Watcher{{}, {}, {}, {}}
	s := newReadScheduler(ws, 1)
	defer s.stop()
	s.readAll(time.Unix(1_000_000, 0), true) // a pass: probes of all four
	s.mark(ws[3])                            // then a named change of the last
	w, probe, _ := s.next()
	if w != ws[3] || probe {
		t.Fatalf("first read: watcher %d, probe %v; want the named one (3), in full", slices.Index(ws, w), probe)
	}
	s.done(readDone{w: w}, time.Unix(1_000_000, 0), nil)
	var rest []int
	for {
		w, probe, ok := s.next()
		if !ok {
			break
		}
		if !probe {
			t.Errorf("watcher %d of the pass read in full", slices.Index(ws, w))
		}
		rest = append(rest, slices.Index(ws, w))
		s.done(readDone{w: w}, time.Unix(1_000_000, 0), nil)
	}
	if !slices.Equal(rest, []int{0, 1, 2}) {
		t.Fatalf("then %v, want 0, 1, 2 once each", rest)
	}
}
