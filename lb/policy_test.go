package lb

import (
	"os"
	"strings"
	"testing"
)

// TestREADMENamesEveryPolicy keeps the README's usage line in step with the
// registry: a new policy is documented where users look for it.
func TestREADMENamesEveryPolicy(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := "[--balance " + strings.Join(ValidPolicies(), "|") + "]"
	if !strings.Contains(string(b), want) {
		t.Errorf("README.md does not hold the usage %q", want)
	}
}

// TestEveryPolicyPicks checks each registry entry end to end: its spec
// parses back to it and its pick serves from a pool and skips what was
// tried.
func TestEveryPolicyPicks(t *testing.T) {
	for _, d := range policies {
		spec := d.name
		if d.parseArg != nil {
			spec += "X-Key"
		}
		t.Run(spec, func(t *testing.T) {
			pol, err := parsePolicy(spec)
			if err != nil || pol.def != d {
				t.Fatalf("parsePolicy(%q) = %v, %v; want this policy", spec, pol.def, err)
			}
			b := newBalancer(t, spec, instances(2))
			first, err := b.Pick(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			b.Done(first, Result{})
			second, err := b.Pick(nil, []*Instance{first})
			if err != nil {
				t.Fatal(err)
			}
			b.Done(second, Result{})
			if second.ID == first.ID {
				t.Errorf("picked %s again after it was tried", first.ID)
			}
			if _, err := b.Pick(nil, []*Instance{first, second}); err == nil {
				t.Error("picked an instance with both tried")
			}
		})
	}
}
