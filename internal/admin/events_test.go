package admin

import (
	"slices"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/lb"
)

// TestPollDiff drives pollOnce by hand through every kind of change.
func TestPollDiff(t *testing.T) {
	b := newBalancer(t, "web")
	s := New(Options{Services: []Service{{Balancer: b}}})
	stats := func(id string) *lb.Stats { return findIn(b.Pool(), id).Stats }
	now := time.Now()

	tests := []struct {
		name   string
		change func()
		want   []string
	}{
		{"no pool yet", func() {}, nil},
		{"first pool", func() { b.Update([]lb.Instance{inst("web", "a", 1), inst("web", "b", 2)}) },
			[]string{"joined a", "joined b"}},
		{"nothing changed", func() { b.Update([]lb.Instance{inst("web", "a", 1), inst("web", "b", 2)}) }, nil},
		{"one joins one leaves", func() { b.Update([]lb.Instance{inst("web", "b", 2), inst("web", "c", 3)}) },
			[]string{"joined c", "left a"}},
		{"ejected", func() { stats("b").EjectedUntil.Store(now.Add(time.Minute).UnixNano()) },
			[]string{"ejected b"}},
		{"ejection expires", func() { stats("b").EjectedUntil.Store(now.Add(-time.Second).UnixNano()) },
			[]string{"unejected b"}},
		{"drained", func() {
			if err := b.SetDraining("c", true); err != nil {
				t.Fatal(err)
			}
		}, []string{"draining c"}},
		{"undrained and ejected", func() {
			if err := b.SetDraining("c", false); err != nil {
				t.Fatal(err)
			}
			stats("c").EjectedUntil.Store(now.Add(time.Minute).UnixNano())
		}, []string{"ejected c", "undrained c"}},
		{"all gone", func() { b.Update(nil) }, []string{"left b", "left c"}},
	}
	var last uint64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.change()
			s.pollOnce(now)
			evs, seq, _ := s.eventsAfter(last)
			last = seq
			var got []string
			for _, ev := range evs {
				got = append(got, KindName(ev.GetKind())+" "+ev.GetInstance().GetId())
			}
			slices.Sort(got) // map order for departures
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("events %q, want %q", got, want)
			}
		})
	}
}

// TestEventRing checks that the ring keeps the last maxEvents events and
// that a reader behind it gets what is left, in order.
func TestEventRing(t *testing.T) {
	s := New(Options{Services: []Service{{Balancer: newBalancer(t, "web")}}})
	const n = maxEvents + 37
	for i := 0; i < n; i++ {
		s.publish([]*adminpb.PoolEvent{{Service: "web"}})
	}
	tests := []struct {
		name        string
		after       uint64
		first, last uint64
	}{
		{"from the start", 0, n - maxEvents + 1, n},
		{"inside the ring", n - 10, n - 9, n},
		{"up to date", n, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, seq, _ := s.eventsAfter(tt.after)
			if seq != n {
				t.Errorf("last seq = %d, want %d", seq, n)
			}
			if tt.first == 0 {
				if len(evs) != 0 {
					t.Errorf("got %d events, want none", len(evs))
				}
				return
			}
			if len(evs) != int(tt.last-tt.first+1) {
				t.Fatalf("got %d events, want %d", len(evs), tt.last-tt.first+1)
			}
			for i, ev := range evs {
				if ev.GetSeq() != tt.first+uint64(i) {
					t.Fatalf("event %d has seq %d, want %d", i, ev.GetSeq(), tt.first+uint64(i))
				}
			}
		})
	}
}
