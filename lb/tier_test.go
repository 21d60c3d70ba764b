package lb

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// tiered returns a balancer with np primaries, nb backups in dc1 and nr
// primaries in the failover datacenter dc2.
func tiered(t testing.TB, policy string, np, nb, nr int) *Balancer {
	t.Helper()
	b := newBalancer(t, policy, nil)
	b.UpdateTiers(tierList(np, nb, nr))
	return b
}

func tierList(np, nb, nr int) []Tier {
	mk := func(prefix string, n, port int) []Instance {
		out := make([]Instance, n)
		for i := range out {
			out[i] = Instance{ID: fmt.Sprintf("%s-%d", prefix, i), Address: "10.0.0.1", Port: port + i, Weight: 1}
		}
		return out
	}
	return []Tier{
		{Datacenter: "dc1", Instances: mk("p", np, 8000)},
		{Datacenter: "dc1", Backup: true, Instances: mk("b", nb, 9000)},
		{Datacenter: "dc2", Remote: true, Instances: mk("p", nr, 10000)},
	}
}

func eject(in *Instance) { in.Stats.EjectedUntil.Store(nanotime() + int64(time.Hour)) }

func kindOf(in *Instance) string {
	switch {
	case in.Datacenter == "dc2":
		return "remote"
	case in.Backup:
		return "backup"
	}
	return "primary"
}

func TestBackupGetsNothingWhilePrimaryReady(t *testing.T) {
	for _, pol := range allPolicies {
		t.Run(pol, func(t *testing.T) {
			ctx := testContext(t)
			b := tiered(t, pol, 3, 2, 2)
			for i := range 300 {
				r := request(fmt.Sprintf("user-%d", i))
				if in := mustPick(t, b, r); kindOf(in) != "primary" {
					t.Fatalf("pick %d went to %s %s while primaries are ready", i, kindOf(in), in.ID)
				}
			}
			// Two primaries ejected: the third takes everything.
			p := b.Pool().Instances
			eject(p[0])
			eject(p[1])
			for id, n := range counts(ctx, t, b, request("k"), 100) {
				if id != p[2].ID {
					t.Fatalf("%d picks to %s with a ready primary %s", n, id, p[2].ID)
				}
			}
		})
	}
}

func TestAllPrimariesEjectedBackupsServeThenPrimaryReturns(t *testing.T) {
	for _, pol := range allPolicies {
		t.Run(pol, func(t *testing.T) {
			ctx := testContext(t)
			b := tiered(t, pol, 2, 2, 1)
			p := b.Pool().Instances
			eject(p[0])
			eject(p[1])
			got := counts(ctx, t, b, request("k"), 200)
			for id := range got {
				if !strings.HasPrefix(id, "b-") {
					t.Fatalf("pick to %s while every primary is ejected and backups are ready: %v", id, got)
				}
			}
			if pol == PolicyRoundRobin && (got["b-0"] != 100 || got["b-1"] != 100) {
				t.Errorf("round robin over the backups: %v, want 100 each", got)
			}
			if s := b.Serving(); !s.Tier.Backup || s.Tier.Datacenter != "dc1" || s.Switches != 1 ||
				!strings.Contains(s.Reason, "2 ejected") {
				t.Errorf("Serving = %+v, want dc1 backup after one switch naming the ejections", s)
			}
			// Backups ejected too: the failover datacenter serves.
			eject(p[2])
			eject(p[3])
			if in := mustPick(t, b, request("k")); kindOf(in) != "remote" {
				t.Fatalf("pick went to %s %s, want dc2", kindOf(in), in.ID)
			}
			// A primary is back: everything returns to it at once.
			p[1].Stats.EjectedUntil.Store(0)
			for id, n := range counts(ctx, t, b, request("k"), 50) {
				if id != "p-1" {
					t.Fatalf("%d picks to %s after primary p-1 returned", n, id)
				}
			}
			if s := b.Serving(); s.Index != 0 || s.Switches != 3 || !strings.Contains(s.Reason, "can serve again") {
				t.Errorf("Serving = %+v, want primary again after three switches", s)
			}
		})
	}
}

func TestEveryTierEjectedPicksFirstTierAnyway(t *testing.T) {
	for _, pol := range allPolicies {
		t.Run(pol, func(t *testing.T) {
			b := tiered(t, pol, 2, 1, 1)
			for _, in := range b.Pool().Instances {
				eject(in)
			}
			if in := mustPick(t, b, request("k")); kindOf(in) != "primary" {
				t.Fatalf("with every instance ejected the pick went to %s %s, want a primary (never eject them all)", kindOf(in), in.ID)
			}
		})
	}
}

func TestTriedAndDrainingFallThroughToNextTier(t *testing.T) {
	for _, pol := range allPolicies {
		t.Run(pol, func(t *testing.T) {
			b := tiered(t, pol, 2, 1, 1)
			p := b.Pool().Instances
			r := request("k")
			// A retry that has tried both primaries goes to the backup, then dc2.
			if in := mustPick(t, b, r, p[0], p[1]); in.ID != "b-0" {
				t.Fatalf("retry after both primaries went to %s, want b-0", in.ID)
			}
			if in := mustPick(t, b, r, p[0], p[1], p[2]); kindOf(in) != "remote" {
				t.Fatalf("retry after every dc1 instance went to %s %s, want dc2", kindOf(in), in.ID)
			}
			if _, err := b.Pick(r, p); err == nil {
				t.Fatal("Pick with every instance tried succeeded")
			}
			if err := b.SetDraining("p-0", true); err != nil {
				t.Fatal(err)
			}
			if err := b.SetDraining("p-1", true); err != nil {
				t.Fatal(err)
			}
			if in := mustPick(t, b, r); in.ID != "b-0" {
				t.Fatalf("with every primary draining the pick went to %s, want b-0", in.ID)
			}
			// Remote instances are drained by ID@datacenter.
			if err := b.SetDraining("p-0@dc2", true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPickFromSkipsEarlierTiers(t *testing.T) {
	b := tiered(t, "", 3, 1, 1)
	r := request("")
	in, err := b.PickFrom(r, nil, 1)
	if err != nil || in.ID != "b-0" {
		t.Fatalf("PickFrom(1) = %v, %v; want b-0", in, err)
	}
	b.Done(in, Result{Status: 200})
	if !b.HasTierAfter(1) || b.HasTierAfter(2) {
		t.Errorf("HasTierAfter: 1 → %v, 2 → %v; want true, false", b.HasTierAfter(1), b.HasTierAfter(2))
	}
	if _, err := b.PickFrom(r, nil, 3); err == nil {
		t.Error("PickFrom past the last tier succeeded")
	}
}

// TestHashKeepsMappingWithinServingTier: when the backups serve, a key goes
// to the backup a balancer of the backups alone would pick, every time.
func TestHashKeepsMappingWithinServingTier(t *testing.T) {
	for _, pol := range []string{"hash:header:X-User", "hash:cookie:sid", "hash:ip"} {
		t.Run(pol, func(t *testing.T) {
			b := tiered(t, pol, 3, 5, 0)
			alone := newBalancer(t, pol, tierList(0, 5, 0)[1].Instances)
			for _, in := range b.Pool().Instances[:3] {
				eject(in)
			}
			for i := range 200 {
				r := request(fmt.Sprintf("user-%d", i))
				got, want := mustPick(t, b, r), mustPick(t, alone, r)
				if got.ID != want.ID {
					t.Fatalf("key user-%d went to %s in the backup tier, %s in a pool of backups alone", i, got.ID, want.ID)
				}
				if again := mustPick(t, b, r); again.ID != got.ID {
					t.Fatalf("key user-%d moved from %s to %s", i, got.ID, again.ID)
				}
			}
		})
	}
}

func TestUpdateTiersKeepsStatsAndKeysRemoteApart(t *testing.T) {
	b := tiered(t, "", 1, 1, 1)
	local, remote := byID(b, "p-0"), b.Pool().Instances[2]
	if local.Stats == remote.Stats {
		t.Fatal("p-0 in dc1 and p-0 in dc2 share their stats")
	}
	local.Stats.Failures.Add(7)
	// The primary becomes a backup (re-tagged): its stats follow it.
	ts := tierList(0, 0, 1)
	ts[1].Instances = []Instance{{ID: "p-0", Address: "10.0.0.1", Port: 8000}, {ID: "b-0", Address: "10.0.0.1", Port: 9000}}
	b.UpdateTiers(ts)
	if got := byID(b, "p-0"); got.Stats.Failures.Load() != 7 || !got.Backup || got.Tier != 0 {
		t.Errorf("after the move p-0 has %d failures, backup %v, tier %d; want 7, true, 0",
			got.Stats.Failures.Load(), got.Backup, got.Tier)
	}
	if tiers := b.Pool().Tiers(); len(tiers) != 2 || !tiers[0].Backup || tiers[1].Datacenter != "dc2" || tiers[0].Size != 2 {
		t.Errorf("Tiers = %+v, want [dc1 backup (2), dc2 primary (1)]", tiers)
	}
	// A single local tier is an ordinary pool.
	b.UpdateTiers(tierList(2, 0, 0))
	if p := b.Pool(); p.tiers != nil || len(p.Instances) != 2 || p.Instances[0].Datacenter != "dc1" {
		t.Errorf("single tier: tiers %v, %d instances, datacenter %q", p.tiers, len(p.Instances), p.Instances[0].Datacenter)
	}
	if s := b.Serving(); s.Tier.String() != "dc1 primary" {
		t.Errorf("Serving = %+v, want dc1 primary", s)
	}
}

func TestTieredPickDoesNotAllocate(t *testing.T) {
	for _, pol := range allPolicies {
		b := tiered(t, pol, 3, 2, 2)
		p := b.Pool().Instances
		eject(p[0])
		eject(p[1])
		eject(p[2])
		r := request("k")
		tried := []*Instance{p[3]}
		b.Serving()
		if allocs := testing.AllocsPerRun(200, func() {
			in, err := b.Pick(r, tried)
			if err != nil {
				panic(err)
			}
			b.Done(in, Result{Status: http.StatusOK})
		}); allocs != 0 {
			t.Errorf("%s: a tiered pick allocates %.1f times", pol, allocs)
		}
	}
}
