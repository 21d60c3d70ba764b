package lb

import (
	"errors"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The consistent hash policies, nginx's "hash KEY consistent": the key is a
// header, a cookie or the client's address.
var (
	hashHeader = policyDef{
		name: "hash:header:", arg: "NAME",
		parseArg: func(name string) (string, error) {
			if !isToken(name) {
				return "", errors.New("the header name must be a non-empty HTTP token")
			}
			return textproto.CanonicalMIMEHeaderKey(name), nil
		},
		hashKey: headerKey,
		pick:    pickHashed,
	}
	hashCookie = policyDef{
		name: "hash:cookie:", arg: "NAME",
		parseArg: func(name string) (string, error) {
			if !isToken(name) {
				return "", errors.New("the cookie name must be a non-empty HTTP token")
			}
			return name, nil
		},
		hashKey: func(r *http.Request, name string) (string, bool) { return cookieValue(r.Header["Cookie"], name) },
		pick:    pickHashed,
	}
	hashIP = policyDef{
		name:    "hash:ip",
		hashKey: func(r *http.Request, _ string) (string, bool) { return remoteHost(r.RemoteAddr) },
		pick:    pickHashed,
	}
)

// pickHashed is the pick of every hash policy: the ring's owner of the
// request's key, or round robin for a request without one.
func pickHashed(p *Pool, r *http.Request, tried []*Instance) *Instance {
	var c clock
	if key, ok := p.policy.hashKey(r); ok {
		return p.pickHash(key, tried, &c)
	}
	return p.pickRR(tried, &c)
}

// headerKey is the value of the header name (canonical), or the Host.
func headerKey(r *http.Request, name string) (string, bool) {
	if name == "Host" { // net/http moves Host out of the header map
		return r.Host, r.Host != ""
	}
	if v := r.Header[name]; len(v) > 0 && v[0] != "" {
		return v[0], true
	}
	return "", false
}

// isToken reports whether s is a non-empty RFC 9110 token, which is what a
// header field name or a cookie name must be.
func isToken(s string) bool { return httpguts.ValidHeaderFieldName(s) }

// Consistent hashing: a ring of virtual nodes, ketama style, 160 points per
// unit of weight, capped at ringMaxPoints points in all. A point's position
// depends only on its instance's ID, so adding or removing an instance moves
// only the keys of that instance. Positions use a fixed hash (FNV-1a
// finished by a 64-bit mixer), never a per-process seed: every agent maps a
// key to the same instance.
const (
	ringPointsPerWeight = 160
	ringMaxPoints       = 1 << 18
	// ringWalk bounds how many distinct owners a pick visits on the ring
	// before falling back to a scan.
	ringWalk = 32
	// A point is one uint64: the position in the high bits, the owner's
	// index in Pool.Instances in the low ringOwnerBits. Sorting plain
	// integers builds a 240k-point ring several times faster than sorting
	// structs with a comparator, at 8 bytes a point; 40 bits of position
	// are plenty for 2^18 points. Pools stay far below 2^24 instances.
	ringOwnerBits = 24
	ringOwnerMask = 1<<ringOwnerBits - 1
)

type ring struct {
	points []uint64 // sorted: position<<ringOwnerBits | owner
}

func buildRing(insts []*Instance) *ring {
	points := ringPointsFunc(insts)
	var n int64
	for _, in := range insts {
		n += points(in.Weight)
	}
	pts := make([]uint64, 0, n)
	for i, in := range insts {
		pts = appendPoints(pts, in, i, points(in.Weight))
	}
	slices.Sort(pts)
	return &ring{points: pts}
}

// ringPointsFunc returns how many points an instance of weight w gets on
// the ring of insts.
func ringPointsFunc(insts []*Instance) func(w int) int64 {
	var total int64
	for _, in := range insts {
		total += int64(in.Weight)
	}
	return func(w int) int64 {
		if total*ringPointsPerWeight <= ringMaxPoints {
			return int64(w) * ringPointsPerWeight
		}
		return max(1, int64(float64(w)*ringMaxPoints/float64(total)))
	}
}

// appendPoints appends the n points of in, owner index i: their positions
// depend on the ID only.
func appendPoints(pts []uint64, in *Instance, i int, n int64) []uint64 {
	base := hashString(in.ID)
	for v := range n {
		pos := mix64(base + uint64(v+1)*0x9e3779b97f4a7c15)
		pts = append(pts, pos&^ringOwnerMask|uint64(i)&ringOwnerMask)
	}
	return pts
}

// pickHash returns the owner of the first point at or after the key's hash;
// if that instance is not ready it walks on to the next distinct owners,
// so a key whose instance is tried, draining or ejected still lands on the
// same alternative every time.
func (p *Pool) pickHash(key string, tried []*Instance, c *clock) *Instance {
	pts := p.ring.points
	pos, _ := slices.BinarySearch(pts, hashString(key)&^ringOwnerMask)
	last, seen := -1, 0
	for range len(pts) {
		if pos == len(pts) {
			pos = 0
		}
		o := int(pts[pos] & ringOwnerMask)
		pos++
		if o == last {
			continue
		}
		if in := p.Instances[o]; rank(in, tried, c) == rankReady {
			return in
		}
		if last, seen = o, seen+1; seen == ringWalk {
			break
		}
	}
	return p.scan(tried, c, costNone)
}

// cookieValue finds the cookie name in Cookie header lines, as
// http.Request.Cookie would but without allocating. An empty value counts as
// missing.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		for line != "" {
			var part string
			if i := strings.IndexByte(line, ';'); i >= 0 {
				part, line = line[:i], line[i+1:]
			} else {
				part, line = line, ""
			}
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || k != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if v != "" {
				return v, true
			}
		}
	}
	return "", false
}

// remoteHost returns the host part of a RemoteAddr ("1.2.3.4:5",
// "[::1]:5"); an address without a port is returned whole.
func remoteHost(addr string) (string, bool) {
	if strings.HasPrefix(addr, "[") {
		if i := strings.IndexByte(addr, ']'); i > 1 {
			return addr[1:i], true
		}
		return "", false
	}
	if i := strings.LastIndexByte(addr, ':'); i >= 0 && strings.IndexByte(addr, ':') == i {
		addr = addr[:i]
	}
	return addr, addr != ""
}

// hashString is 64-bit FNV-1a finished with mix64 for a good spread of
// short, similar keys.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

// mix64 is the MurmurHash3 64-bit finalizer (a bijection).
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
