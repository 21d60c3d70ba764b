package discovery

import (
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

// Instances converts a /v1/health/service answer (queried with
// passingOnly=false) into the instances that may receive traffic, sorted by
// ID.
//
// An entry is kept when none of its checks is critical, in maintenance
// (_node_maintenance, _service_maintenance:*) or in an unknown state; the
// node's own checks such as serfHealth count too, since Consul returns them
// with the service's. Warning instances are kept: Consul's
// Service.Weights.Warning says how much traffic they get. The weight is
// Weights.Passing, or Weights.Warning when any check is warning; a weight
// of 0 or less becomes 1 (lb requires >= 1).
//
// The address is Service.Address, else Node.Address. An entry whose address
// is empty or neither an IP nor a valid DNS name, or whose port is outside
// 1..65535, is skipped and reported to warn (when non-nil) once per service
// ID with the reason. When one service ID is registered on several nodes
// (IDs are unique per agent only), those instances get the ID "ID@node" so
// that lb, which keys its per-instance state by ID, keeps them apart.
//
// Tags and Meta are copied; the result shares no memory with entries.
func Instances(entries []*api.ServiceEntry, warn func(id, reason string)) []lb.Instance {
	out, _ := newInstanceBuilder().build(fromAPI(entries), warn)
	return out
}

// checkEndpoint returns why addr:port cannot be dialled, or "".
func checkEndpoint(addr string, port int) string {
	switch {
	case addr == "":
		return "no address: neither Service.Address nor Node.Address is set"
	case net.ParseIP(addr) == nil && !isDNSName(addr):
		return "invalid address " + strconv.Quote(addr) + ": want an IP address or a DNS name"
	case port < 1 || port > 65535:
		return "invalid port " + strconv.Itoa(port) + ": want 1..65535"
	}
	return ""
}

// isDNSName reports whether s is a syntactically valid host name
// (RFC 1035 with '_' allowed, as in package net): labels of 1..63 letters,
// digits, '-' or '_', not starting or ending with '-', at most 253
// characters plus an optional final dot, and not all numeric (so that a
// broken IPv4 address such as "10.0.0.300" is not taken for a name).
func isDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	nonNumeric := false
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', c == '_', c == '-':
				nonNumeric = true
			case '0' <= c && c <= '9':
			default:
				return false
			}
		}
	}
	return nonNumeric
}

// sameInstances reports whether two sorted pools hold the same instances
// (ID, service, address, port, weight, tags, meta); Stats is ignored.
func sameInstances(a, b []lb.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y lb.Instance) bool {
		return x.ID == y.ID && x.Service == y.Service && x.Address == y.Address &&
			x.Port == y.Port && x.HostPort == y.HostPort && x.Weight == y.Weight &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}

func cloneTags(t []string) []string {
	if len(t) == 0 {
		return nil
	}
	return slices.Clone(t)
}

func cloneMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}
