package discovery

import (
	"context"
	"testing"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// TestLocalFeedHoldsAnEmptyAnswer: without a watch behind it (a pool
// restored from the snapshot), an empty answer may come from a Consul that
// lost its state: it is held for the grace, then applied.
func TestLocalFeedHoldsAnEmptyAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tiers := make(chan []lb.Tier, 4)
	f, err := NewFailover(nil, FailoverConfig{Service: "s"}, func(ts []lb.Tier) { tiers <- ts })
	if err != nil {
		t.Fatal(err)
	}
	feed := NewLocalFeed(f, 50*time.Millisecond, nil)
	feed.Restore([]lb.Instance{inst("a"), inst("b")})
	if s := tierIDs(<-tiers); s != ":a,b /backup:" {
		t.Fatalf("restored tiers %q, want a,b and no backup", s)
	}
	if feed.Update(ctx, nil) {
		t.Fatal("an empty answer was applied at once, want it held for the grace")
	}
	select {
	case ts := <-tiers:
		if n := countInstances(ts); n != 0 {
			t.Errorf("after the grace the tiers are %q, want empty", tierIDs(ts))
		}
	case <-ctx.Done():
		t.Fatal("the held empty answer was never applied")
	}
	if !feed.Update(ctx, []lb.Instance{inst("c")}) {
		t.Error("a non-empty answer was not applied")
	}
	if s := tierIDs(<-tiers); s != ":c /backup:" {
		t.Errorf("tiers %q, want c", s)
	}
}

// TestLocalFeedNoGrace: with grace 0 an empty answer applies at once; a
// held one is dropped when an answer comes before the grace ends.
func TestLocalFeedNoGrace(t *testing.T) {
	ctx := context.Background()
	var got []lb.Tier
	f, err := NewFailover(nil, FailoverConfig{Service: "s"}, func(ts []lb.Tier) { got = ts })
	if err != nil {
		t.Fatal(err)
	}
	feed := NewLocalFeed(f, 0, nil)
	feed.Update(ctx, []lb.Instance{inst("a")})
	if !feed.Update(ctx, nil) || countInstances(got) != 0 {
		t.Errorf("grace 0: empty answer gave tiers %q, want it applied at once", tierIDs(got))
	}

	held := NewLocalFeed(f, time.Hour, nil)
	held.Restore([]lb.Instance{inst("a")})
	if held.Update(ctx, nil) {
		t.Fatal("empty answer applied, want it held")
	}
	if !held.Update(ctx, []lb.Instance{inst("b")}) || tierIDs(got) != ":b /backup:" {
		t.Errorf("tiers %q after a new answer, want b", tierIDs(got))
	}
	if held.timer != nil {
		t.Error("the grace timer of the dropped empty answer is still set")
	}
}

func countInstances(tiers []lb.Tier) int {
	n := 0
	for _, t := range tiers {
		n += len(t.Instances)
	}
	return n
}
