package recent

import (
	"fmt"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/meshlb/meshlb/proxy"
)

func rec(path string, status int, latency time.Duration) *proxy.Record {
	return &proxy.Record{Path: path, Status: status, Latency: latency, Service: "web"}
}

func paths(recs []*proxy.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Path
	}
	return out
}

// TestRingKeepsFailedAndSlowLonger: after many fast successes have pushed
// them out of the main ring, the failed and the slowest requests are still
// there, and ordinary old ones are gone.
func TestRingKeepsFailedAndSlowLonger(t *testing.T) {
	r := New(100)
	r.Record(rec("/failed", 502, time.Millisecond))
	r.Record(rec("/slow", 200, 2*time.Second))
	r.Record(rec("/old", 200, time.Millisecond))
	for i := range 150 {
		r.Record(rec(fmt.Sprintf("/fast%d", i), 200, time.Millisecond+time.Duration(i%7)*time.Microsecond))
	}
	got := r.List(Filter{}, 0)
	have := map[string]bool{}
	for _, p := range paths(got) {
		have[p] = true
	}
	if !have["/failed"] || !have["/slow"] {
		t.Errorf("the failed and the slow request were not kept: %v", paths(got))
	}
	if have["/old"] || have["/fast0"] || !have["/fast149"] || !have["/fast50"] {
		t.Errorf("the main ring does not hold exactly the last 100: %v", paths(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].Seq <= got[i].Seq {
			t.Fatalf("not newest first: %v", paths(got))
		}
	}
	if st := r.Stats(); st.Recorded != 153 || st.Size != 100 || st.Kept != 25 {
		t.Errorf("stats %+v", st)
	}

	// 25 newer failures push the first one out of the failed ring; the
	// slow one stays.
	for i := range 125 {
		r.Record(rec(fmt.Sprintf("/f%d", i), 503, time.Millisecond))
	}
	got = r.List(Filter{Failed: true}, 0)
	if len(got) != 125 || got[len(got)-1].Path != "/f0" {
		t.Errorf("failed: %d records, oldest %s; want 125 down to /f0", len(got), got[len(got)-1].Path)
	}
	if got := r.List(Filter{MinLatency: time.Second}, 0); len(got) != 1 || got[0].Path != "/slow" {
		t.Errorf("slow: %v", paths(got))
	}
}

func TestFilter(t *testing.T) {
	r := New(10)
	a := rec("/a", 200, time.Millisecond)
	b := rec("/b", 502, 300*time.Millisecond)
	c := rec("/c", 404, time.Millisecond)
	c.Service = "api"
	b.TraceID[0] = 7
	for _, x := range []*proxy.Record{a, b, c} {
		r.Record(x)
	}
	s5xx, _ := ParseStatus("5xx")
	s404, _ := ParseStatus("404")
	for _, tt := range []struct {
		f    Filter
		want string
	}{
		{Filter{}, "[/c /b /a]"},
		{Filter{Failed: true}, "[/b]"},
		{Filter{Statuses: []StatusMatch{s5xx, s404}}, "[/c /b]"},
		{Filter{Services: []string{"api"}}, "[/c]"},
		{Filter{MinLatency: 200 * time.Millisecond}, "[/b]"},
		{Filter{TraceID: b.TraceID}, "[/b]"},
		{Filter{Services: []string{"api"}, Failed: true}, "[]"},
	} {
		if got := fmt.Sprint(paths(r.List(tt.f, 0))); got != tt.want {
			t.Errorf("List(%+v) = %s, want %s", tt.f, got, tt.want)
		}
	}
	if got := fmt.Sprint(paths(r.List(Filter{}, 2))); got != "[/c /b]" {
		t.Errorf("limit 2: %s", got)
	}
}

func TestParseStatus(t *testing.T) {
	for in, want := range map[string]string{"502": "502", "5xx": "5xx", "4XX": "4xx", " 200 ": "200", "499": "499"} {
		m, err := ParseStatus(in)
		if err != nil || m.String() != want {
			t.Errorf("ParseStatus(%q) = %v, %v; want %s", in, m, err, want)
		}
	}
	for _, in := range []string{"", "6xx", "99", "600", "5x", "abc", "0xx"} {
		if _, err := ParseStatus(in); err == nil {
			t.Errorf("ParseStatus(%q) accepted", in)
		}
	}
	if _, err := ParseTraceID("00000000000000000000000000000000"); err == nil {
		t.Error("zero trace id accepted")
	}
	if tid, err := ParseTraceID("4BF92F3577B34DA6A3CE929D0E0E4736"); err != nil || tid.String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("ParseTraceID: %v %v", tid, err)
	}
}

func TestBucketMonotonic(t *testing.T) {
	prev := -1
	for d := time.Microsecond; d < time.Hour; d = d*9/8 + 1 {
		b := bucket(d)
		if b < prev || b >= nBuckets {
			t.Fatalf("bucket(%v) = %d after %d", d, b, prev)
		}
		prev = b
	}
	if bucket(0) != 0 || bucket(-time.Second) != 0 {
		t.Error("non-positive latencies must land in bucket 0")
	}
}

// TestRingConcurrent records and lists from many goroutines (run with
// -race).
func TestRingConcurrent(t *testing.T) {
	r := New(50)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				r.Record(rec("/x", 200+g, time.Duration(i)*time.Microsecond))
				if i%50 == 0 {
					r.List(Filter{Failed: true}, 10)
				}
			}
		})
	}
	wg.Wait()
	if st := r.Stats(); st.Recorded != 4000 {
		t.Errorf("recorded %d, want 4000", st.Recorded)
	}
	if n := len(r.List(Filter{}, 0)); n < 50 || n > 100 {
		t.Errorf("%d records listed, want 50 plus at most 50 kept", n)
	}
}

// TestRingCopiesRecords: the ring keeps a copy of each record, strings and
// attempts included (a data path reuses its record and the bytes its
// strings point into), and List hands out copies the ring does not
// overwrite later; once the slots are filled, Record allocates nothing.
func TestRingCopiesRecords(t *testing.T) {
	r := New(8)
	head := []byte("/reused")
	src := &proxy.Record{Path: unsafe.String(&head[0], len(head)), Status: 502, Latency: time.Millisecond,
		Attempts: []proxy.AttemptRecord{{N: 1, InstanceID: "web-1", Outcome: "served"}}}
	r.Record(src)
	listed := r.List(Filter{}, 0)
	copy(head, "/change")
	src.Attempts[0].InstanceID = "web-2"
	if got := r.List(Filter{}, 0); len(got) != 1 || got[0].Path != "/reused" || got[0].Attempts[0].InstanceID != "web-1" {
		t.Fatalf("ring shares the source's memory: %+v", got)
	}
	for i := range 30 { // pushes it to the failed ones, reuses every slot
		r.Record(rec(fmt.Sprintf("/overwrite-%d", i), 200, time.Millisecond))
	}
	if listed[0].Path != "/reused" || listed[0].Attempts[0].InstanceID != "web-1" || listed[0].Seq != 1 {
		t.Fatalf("a listed record changed after later records: %+v", listed[0])
	}
	one := rec("/steady-state-path", 200, time.Millisecond)
	if n := testing.AllocsPerRun(100, func() { r.Record(one) }); n != 0 {
		t.Fatalf("Record allocates %v times per record once the slots are filled", n)
	}
}
