package lb

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// policies is the registry of balancing policies, in the order --help lists
// them. Adding a policy is a new file in this package that declares its
// policyDef and a line here: ValidPolicies (and so the agent's --help),
// ValidatePolicy's errors and the pick dispatch all come from this list.
var policies = []*policyDef{
	&roundRobin,
	&leastConn,
	&randomTwo,
	&p2cEWMA,
	&hashHeader,
	&hashCookie,
	&hashIP,
}

// policyDef is one balancing policy: how it is written, and how it picks.
type policyDef struct {
	// name is the spec ("least_conn"), or its prefix when the policy takes
	// an argument ("hash:header:").
	name string
	// arg stands for the argument in help texts ("NAME"); "" when the
	// policy takes none.
	arg string
	// parseArg checks the argument and returns the key the policy keeps
	// (a canonical header name, a cookie name); nil when there is no
	// argument. Its error says what the argument must be.
	parseArg func(arg string) (string, error)
	// hashKey, for hash policies, returns the request's key and false when
	// it has none; a pool of a policy with a hashKey gets a hash ring.
	hashKey func(r *http.Request, key string) (string, bool)
	// pick returns an instance of p, not one in tried, or nil when none can
	// serve. It never blocks and must not allocate. Being called through a
	// function value, it makes tried escape: a caller's tried buffer lives
	// on the heap (the proxy's does anyway, for its hedges).
	pick func(p *Pool, r *http.Request, tried []*Instance) *Instance
}

// ValidPolicies lists the policy names accepted by ValidatePolicy and
// NewBalancer, for --help texts and error messages. NAME stands for a header
// or cookie name.
func ValidPolicies() []string {
	names := make([]string, len(policies))
	for i, d := range policies {
		names[i] = d.name + d.arg
	}
	return names
}

// ValidatePolicy returns nil when spec names a policy (the empty string means
// round_robin), else an error naming the bad value and listing the valid ones.
func ValidatePolicy(spec string) error {
	_, err := parsePolicy(spec)
	return err
}

// policy is a parsed policy spec: what a Balancer and its snapshots keep.
type policy struct {
	def *policyDef
	// spec is the normalized spec ("" becomes round_robin).
	spec string
	// key is what the policy's argument parsed to (see parseArg).
	key string
}

func (p policy) hashed() bool { return p.def.hashKey != nil }

// hashKey extracts the hash key of r; false when it has none (the pick then
// falls back to round robin). It does not allocate.
func (p *policy) hashKey(r *http.Request) (string, bool) {
	if r == nil || p.def.hashKey == nil {
		return "", false
	}
	return p.def.hashKey(r, p.key)
}

func parsePolicy(spec string) (policy, error) {
	if spec == "" {
		spec = roundRobin.name
	}
	for _, d := range policies {
		if d.parseArg == nil {
			if spec == d.name {
				return policy{def: d, spec: spec}, nil
			}
			continue
		}
		if arg, ok := strings.CutPrefix(spec, d.name); ok {
			key, err := d.parseArg(arg)
			if err != nil {
				return policy{}, badPolicy(spec, err)
			}
			return policy{def: d, spec: spec, key: key}, nil
		}
	}
	return policy{}, badPolicy(spec, errors.New("unknown policy"))
}

func badPolicy(spec string, why error) error {
	return fmt.Errorf("lb: invalid balancing policy %q: %v (valid: %s)", spec, why, strings.Join(ValidPolicies(), ", "))
}
