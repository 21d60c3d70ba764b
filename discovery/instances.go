package discovery

import (
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

var hostnameRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$`)

// validAddress reports whether addr is an IP address or a DNS name.
func validAddress(addr string) bool {
	if addr == "" || len(addr) > 253 {
		return false
	}
	if net.ParseIP(addr) != nil {
		return true
	}
	return hostnameRE.MatchString(addr)
}

// Instances converts a health answer into pool instances. It keeps passing
// and warning instances and drops any entry with a critical check (the
// node's serfHealth and maintenance checks included). Address is
// Service.Address, else the node's address; Weight is Service.Weights.Passing,
// or .Warning when a check warns (1 when unset). An entry with an empty or
// invalid address or a port outside 1-65535 is skipped and reported to warn
// (which may be nil). Service IDs are unique per node only: an ID seen on
// several nodes is qualified with the node name. The result is sorted by ID.
func Instances(entries []*api.ServiceEntry, warn func(id, reason string)) []lb.Instance {
	seen := make(map[string]int, len(entries))
	for _, e := range entries {
		if e != nil && e.Service != nil {
			seen[e.Service.ID]++
		}
	}
	out := make([]lb.Instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		s := e.Service
		status := e.Checks.AggregatedStatus()
		if status == api.HealthCritical || status == api.HealthMaint {
			continue
		}
		id := s.ID
		node := ""
		nodeAddr := ""
		if e.Node != nil {
			node, nodeAddr = e.Node.Node, e.Node.Address
		}
		if seen[id] > 1 {
			id = node + "/" + id
		}
		addr := s.Address
		if addr == "" {
			addr = nodeAddr
		}
		if !validAddress(addr) {
			if warn != nil {
				warn(id, "invalid or empty address "+strconv.Quote(addr))
			}
			continue
		}
		if s.Port < 1 || s.Port > 65535 {
			if warn != nil {
				warn(id, "port "+strconv.Itoa(s.Port)+" outside 1-65535")
			}
			continue
		}
		weight := s.Weights.Passing
		if status == api.HealthWarning {
			weight = s.Weights.Warning
		}
		if weight < 1 {
			weight = 1
		}
		var meta map[string]string
		if len(s.Meta) > 0 {
			meta = make(map[string]string, len(s.Meta))
			for k, v := range s.Meta {
				meta[k] = v
			}
		}
		out = append(out, lb.Instance{
			ID:       id,
			Service:  s.Service,
			Address:  addr,
			Port:     s.Port,
			HostPort: net.JoinHostPort(addr, strconv.Itoa(s.Port)),
			Weight:   weight,
			Tags:     slices.Clone(s.Tags),
			Meta:     meta,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// sameInstances reports whether two sorted instance lists describe the
// same pool (IDs, addresses, ports, weights, tags and meta).
func sameInstances(a, b []lb.Instance) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := &a[i], &b[i]
		if x.ID != y.ID || x.Address != y.Address || x.Port != y.Port || x.Weight != y.Weight ||
			!slices.Equal(x.Tags, y.Tags) || len(x.Meta) != len(y.Meta) {
			return false
		}
		for k, v := range x.Meta {
			if w, ok := y.Meta[k]; !ok || w != v {
				return false
			}
		}
	}
	return true
}
