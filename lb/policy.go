package lb

import (
	"fmt"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Policy names, as nginx users know them.
const (
	PolicyRoundRobin = "round_robin"
	PolicyLeastConn  = "least_conn"
	PolicyRandomTwo  = "random_two"
	PolicyP2CEWMA    = "p2c_ewma"

	hashHeaderPrefix = "hash:header:"
	hashCookiePrefix = "hash:cookie:"
	policyHashIP     = "hash:ip"
)

// ValidPolicies lists the policy names accepted by ValidatePolicy and
// NewBalancer, for --help texts and error messages. NAME stands for a header
// or cookie name.
func ValidPolicies() []string {
	return []string{
		PolicyRoundRobin, PolicyLeastConn, PolicyRandomTwo, PolicyP2CEWMA,
		hashHeaderPrefix + "NAME", hashCookiePrefix + "NAME", policyHashIP,
	}
}

// ValidatePolicy returns nil when spec names a policy (the empty string means
// round_robin), else an error naming the bad value and listing the valid ones.
func ValidatePolicy(spec string) error {
	_, err := parsePolicy(spec)
	return err
}

type policyKind uint8

const (
	kindRoundRobin policyKind = iota
	kindLeastConn
	kindRandomTwo
	kindP2CEWMA
	kindHashHeader
	kindHashCookie
	kindHashIP
)

// policy is a parsed policy spec.
type policy struct {
	kind policyKind
	// spec is the normalized spec ("" becomes round_robin).
	spec string
	// key is the canonical header name or the cookie name of a hash policy.
	key string
}

func (p policy) hashed() bool {
	return p.kind == kindHashHeader || p.kind == kindHashCookie || p.kind == kindHashIP
}

func parsePolicy(spec string) (policy, error) {
	switch spec {
	case "", PolicyRoundRobin:
		return policy{kind: kindRoundRobin, spec: PolicyRoundRobin}, nil
	case PolicyLeastConn:
		return policy{kind: kindLeastConn, spec: spec}, nil
	case PolicyRandomTwo:
		return policy{kind: kindRandomTwo, spec: spec}, nil
	case PolicyP2CEWMA:
		return policy{kind: kindP2CEWMA, spec: spec}, nil
	case policyHashIP:
		return policy{kind: kindHashIP, spec: spec}, nil
	}
	if name, ok := strings.CutPrefix(spec, hashHeaderPrefix); ok {
		if !isToken(name) {
			return policy{}, badPolicy(spec, "the header name must be a non-empty HTTP token")
		}
		return policy{kind: kindHashHeader, spec: spec, key: textproto.CanonicalMIMEHeaderKey(name)}, nil
	}
	if name, ok := strings.CutPrefix(spec, hashCookiePrefix); ok {
		if !isToken(name) {
			return policy{}, badPolicy(spec, "the cookie name must be a non-empty HTTP token")
		}
		return policy{kind: kindHashCookie, spec: spec, key: name}, nil
	}
	return policy{}, badPolicy(spec, "unknown policy")
}

func badPolicy(spec, why string) error {
	return fmt.Errorf("lb: invalid balancing policy %q: %s (valid: %s)", spec, why, strings.Join(ValidPolicies(), ", "))
}

// isToken reports whether s is a non-empty RFC 9110 token, which is what a
// header field name or a cookie name must be.
func isToken(s string) bool { return httpguts.ValidHeaderFieldName(s) }
