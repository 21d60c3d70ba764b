// Package recent keeps the agent's recent requests: a bounded ring of the
// proxy's Records in which failed and slow requests stay longer than the
// rest, so that "which process served the request that just failed?" still
// has an answer after a burst of successful traffic.
//
// The proxy adds to it on the request path (Ring.Record: one short critical
// section that copies the record into a reused slot, no allocation); the admin API reads it. It must not do anything
// slow under its lock and must never block the request path on a reader.
package recent

import (
	"cmp"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/proxy"
)

// DefaultSize is the number of recent requests kept by default (--recent).
const DefaultSize = 1000

// slowFraction: a record slower than the slowest tenth of those in the main
// ring (at bucket resolution: in a higher bucket than the one that starts
// the tenth) counts as slow when it leaves the ring, and is kept longer.
const slowFraction = 10

// thresholdEvery is how many records pass between two computations of the
// slow threshold (a scan of the histogram).
const thresholdEvery = 64

// nBuckets covers latencies from 1µs to far beyond any timeout with four
// buckets per doubling.
const nBuckets = 4 * 48

// Ring is the recent requests: the last Size records, plus up to Size/4
// failed and Size/4 slow ones pushed out of those, each kept until Size/4
// newer ones of their kind push them out in turn. It is a proxy.Recorder;
// safe for concurrent use.
//
// Each record is copied into a slot with storage of its own for its strings
// and attempts; a record pushed out of the main ring moves to a keep ring
// with its slot, and the slot it pushes out there takes the new record: once
// every slot was filled (and grown to its records' sizes), Record allocates
// nothing.
type Ring struct {
	mu     sync.Mutex
	seq    uint64  // last record's Seq
	all    []*slot // the main ring, all[(seq-1) % len]
	failed keep    // failed records pushed out of all
	slow   keep    // slow records pushed out of all

	// hist counts the records in all by latency bucket; a record in a
	// bucket above threshold counts as slow (recomputed every
	// thresholdEvery records).
	hist      [nBuckets]int32
	threshold int
}

// slot holds one record and the storage of its strings.
type slot struct {
	rec proxy.Record
	buf []byte
}

// keep is a small ring of records kept longer.
type keep struct {
	recs []*slot
	next int
}

// push adds s and returns the slot it pushed out (nil while not full).
func (k *keep) push(s *slot) *slot {
	out := k.recs[k.next]
	k.recs[k.next] = s
	k.next = (k.next + 1) % len(k.recs)
	return out
}

// New returns a Ring of the last size records; size must be positive.
func New(size int) *Ring {
	if size <= 0 {
		panic(fmt.Sprintf("recent: ring size %d: must be positive", size))
	}
	k := max(size/4, 1)
	return &Ring{
		all:       make([]*slot, size),
		failed:    keep{recs: make([]*slot, k)},
		slow:      keep{recs: make([]*slot, k)},
		threshold: nBuckets, // nothing is slow before the first estimate
	}
}

// Size is the number of most recent records always kept.
func (r *Ring) Size() int { return len(r.all) }

// Record adds a copy of rec and sets rec's Seq.
func (r *Ring) Record(rec *proxy.Record) {
	b := bucket(rec.Latency)
	r.mu.Lock()
	r.seq++
	rec.Seq = r.seq
	i := int((r.seq - 1) % uint64(len(r.all)))
	s := r.all[i]
	if s != nil {
		ob := bucket(s.rec.Latency)
		r.hist[ob]--
		switch {
		case s.rec.Failed():
			s = r.failed.push(s)
		case ob > r.threshold:
			s = r.slow.push(s)
		}
	}
	if s == nil {
		s = new(slot)
	}
	s.buf = rec.CopyTo(&s.rec, s.buf)
	r.all[i] = s
	r.hist[b]++
	if r.seq%thresholdEvery == 0 {
		r.threshold = r.slowThreshold()
	}
	r.mu.Unlock()
}

// slowThreshold is the lowest bucket of the slowest tenth of the records in
// the main ring, with r.mu held.
func (r *Ring) slowThreshold() int {
	n := min(r.seq, uint64(len(r.all)))
	want := int32(max(n/slowFraction, 1))
	var sum int32
	for b := nBuckets - 1; b >= 0; b-- {
		if sum += r.hist[b]; sum >= want {
			return b
		}
	}
	return 0
}

// bucket is the histogram bucket of latency d: four per doubling of its
// microseconds.
func bucket(d time.Duration) int {
	us := uint64(max(d/time.Microsecond, 1))
	e := bits.Len64(us) - 1 // us in [2^e, 2^(e+1))
	var frac uint64
	if e >= 2 {
		frac = (us >> (e - 2)) & 3
	} else {
		frac = (us << (2 - e)) & 3
	}
	return min(4*e+int(frac), nBuckets-1)
}

// Stats describes the ring.
type Stats struct {
	Size     int    // records always kept
	Kept     int    // room for failed and for slow records kept longer, each
	Recorded uint64 // records added since the start
}

// Stats returns the ring's size and how many records it has seen.
func (r *Ring) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{Size: len(r.all), Kept: len(r.failed.recs), Recorded: r.seq}
}

// List returns copies of the records f matches, newest first, at most
// limit of them (0: all).
func (r *Ring) List(f Filter, limit int) []*proxy.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	match := make([]*proxy.Record, 0, len(r.all)+2*len(r.failed.recs))
	for _, part := range [][]*slot{r.all, r.failed.recs, r.slow.recs} {
		for _, s := range part {
			if s != nil && f.Match(&s.rec) {
				match = append(match, &s.rec)
			}
		}
	}
	slices.SortFunc(match, func(a, b *proxy.Record) int { return cmp.Compare(b.Seq, a.Seq) })
	if limit > 0 && len(match) > limit {
		match = match[:limit]
	}
	// The slots are reused once r.mu is released: copy them out.
	out := make([]proxy.Record, len(match))
	for i, rec := range match {
		rec.CopyTo(&out[i], nil)
		match[i] = &out[i]
	}
	return match
}

// Filter selects records; its zero value selects all. Every set field must
// match.
type Filter struct {
	// Failed keeps only failed requests (answered 5xx).
	Failed bool
	// Statuses keeps requests whose status matches one of these.
	Statuses []StatusMatch
	// Services keeps requests routed to one of these services.
	Services []string
	// MinLatency keeps requests that took at least that long.
	MinLatency time.Duration
	// TraceID keeps the request of this trace.
	TraceID trace.TraceID
}

// Match reports whether rec passes f.
func (f *Filter) Match(rec *proxy.Record) bool {
	if f.Failed && !rec.Failed() {
		return false
	}
	if rec.Latency < f.MinLatency {
		return false
	}
	if f.TraceID.IsValid() && rec.TraceID != f.TraceID {
		return false
	}
	if len(f.Services) > 0 && !slices.Contains(f.Services, rec.Service) {
		return false
	}
	if len(f.Statuses) > 0 && !slices.ContainsFunc(f.Statuses, func(m StatusMatch) bool { return m.Match(rec.Status) }) {
		return false
	}
	return true
}

// StatusMatch is an exact status (502) or a class (5xx).
type StatusMatch struct {
	status int // exact, or the class's first status (500)
	class  bool
}

// Match reports whether status matches m.
func (m StatusMatch) Match(status int) bool {
	if m.class {
		return status/100 == m.status/100
	}
	return status == m.status
}

func (m StatusMatch) String() string {
	if m.class {
		return strconv.Itoa(m.status/100) + "xx"
	}
	return strconv.Itoa(m.status)
}

// ParseStatus parses "502" or "5xx" (statuses 100-599, or 499).
func ParseStatus(s string) (StatusMatch, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	if len(v) == 3 && v[1:] == "xx" && v[0] >= '1' && v[0] <= '5' {
		return StatusMatch{status: int(v[0]-'0') * 100, class: true}, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 100 || n > 599 {
		return StatusMatch{}, fmt.Errorf("invalid status %q: want a status code 100-599 (e.g. 502) or a class 1xx-5xx", s)
	}
	return StatusMatch{status: n}, nil
}

// ParseTraceID parses a trace id: 32 hex digits, not all zero.
func ParseTraceID(s string) (trace.TraceID, error) {
	tid, err := trace.TraceIDFromHex(strings.ToLower(strings.TrimSpace(s)))
	if err != nil {
		return trace.TraceID{}, fmt.Errorf("invalid trace id %q: want 32 hex digits, not all zero", s)
	}
	return tid, nil
}
