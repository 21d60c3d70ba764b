package proxy

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

// chanRecorder hands the records to the test as they come.
type chanRecorder chan *Record

// Record keeps a copy: rec is only valid during the call.
func (c chanRecorder) Record(rec *Record) { c <- copyRecord(rec) }

// copyRecord is a copy of rec that shares no memory with it.
func copyRecord(rec *Record) *Record {
	c := new(Record)
	rec.CopyTo(c, nil)
	return c
}

func (c chanRecorder) next(t *testing.T, ctx context.Context) *Record {
	t.Helper()
	select {
	case rec := <-c:
		return rec
	case <-ctx.Done():
		t.Fatal("no record of the request")
		return nil
	}
}

var traceResponseRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$`)

// TestRecordRetryAndTraceparent: a GET whose first instance refuses the
// connection and whose second serves it is recorded with both attempts, in
// order, the serving instance's PID and host, and the client's trace id.
func TestRecordRetryAndTraceparent(t *testing.T) {
	ctx := testCtx(t)
	rec := make(chanRecorder, 4)
	up := nameUpstream(t, "b")
	dead := instanceAt("a", closedAddr(t))
	dead.Meta = map[string]string{"pid": "17", "host": "host-a"}
	dead.Datacenter, dead.Backup = "dc2", true
	bal := newBalancer(t, "web", dead, up.instance())
	f := newFrontend(t, Config{Recorder: rec}, Route{Balancer: bal})
	// Round robin starts anywhere: send until one request needed two tries.
	var r *Record
	for range 4 {
		res, body := f.do(t, ctx, "GET", "/hello", nil, http.Header{traceparentKey: {clientParent}})
		if res.StatusCode != 200 || body != "b" {
			t.Fatalf("got %d %q", res.StatusCode, body)
		}
		if v := res.Header.Get("Traceresponse"); v != "" {
			t.Errorf("traceresponse %q although the client sent a traceparent and tracing is off", v)
		}
		if r = rec.next(t, ctx); len(r.Attempts) == 2 {
			break
		}
	}
	if len(r.Attempts) != 2 {
		t.Fatalf("no request was retried: last record %+v", r)
	}
	if got := r.TraceIDString(); got != clientTraceID {
		t.Errorf("trace id %s, want the client's %s", got, clientTraceID)
	}
	if r.Method != "GET" || r.Path != "/hello" || r.Status != 200 || r.Service != "web" || r.Retries != 1 || r.Hedges != 0 {
		t.Errorf("record %+v", r)
	}
	if !strings.HasPrefix(r.ClientAddr, "127.0.0.1:") || r.Latency <= 0 || r.Time.IsZero() || r.Error != "" {
		t.Errorf("record %+v", r)
	}
	a1, a2 := r.Attempts[0], r.Attempts[1]
	if a1.N != 1 || a1.InstanceID != "a" || a1.Outcome != "dial_error" || a1.PID != 17 || a1.Host != "host-a" || a1.Status != 0 ||
		a1.Datacenter != "dc2" || !a1.Backup {
		t.Errorf("first attempt %+v, want a dial error on a", a1)
	}
	if a2.N != 2 || a2.InstanceID != "b" || a2.Outcome != OutcomeServed || a2.PID != 4242 || a2.Host != "host-b" ||
		a2.Status != 200 || a2.Address != up.srv.Listener.Addr().String() || a2.Latency <= 0 {
		t.Errorf("second attempt %+v, want b serving 200 with PID 4242", a2)
	}
}

// TestRecordMadeTraceID: without tracing and without a traceparent the
// proxy makes a trace id, returns it in traceresponse and records it, and
// sends the upstream no traceparent (it made no span to be a parent).
func TestRecordMadeTraceID(t *testing.T) {
	ctx := testCtx(t)
	rec := make(chanRecorder, 4)
	var upParent []string
	up := newUpstream(t, "a", func(w http.ResponseWriter, r *http.Request) { upParent = r.Header[traceparentKey] })
	f := newFrontend(t, Config{Recorder: rec}, Route{Balancer: newBalancer(t, "web", up.instance())})
	seen := map[string]bool{}
	for range 3 {
		res, _ := f.do(t, ctx, "GET", "/", nil, nil)
		m := traceResponseRE.FindStringSubmatch(res.Header.Get("Traceresponse"))
		if m == nil {
			t.Fatalf("traceresponse %q, want 00-<32 hex>-<16 hex>-<flags>", res.Header.Get("Traceresponse"))
		}
		r := rec.next(t, ctx)
		if got := r.TraceIDString(); got != m[1] {
			t.Errorf("recorded trace id %s, traceresponse says %s", got, m[1])
		}
		if seen[m[1]] {
			t.Errorf("trace id %s made twice", m[1])
		}
		seen[m[1]] = true
		if upParent != nil {
			t.Errorf("upstream got traceparent %q with tracing off", upParent)
		}
	}
}

// TestRecordTracingOn: with tracing the record carries the server span's
// trace id, which continues the client's.
func TestRecordTracingOn(t *testing.T) {
	ctx := testCtx(t)
	withRecorder(t)
	rec := make(chanRecorder, 4)
	up := nameUpstream(t, "a")
	f := newFrontend(t, Config{Recorder: rec, Tracing: true}, Route{Balancer: newBalancer(t, "web", up.instance())})
	res, _ := f.do(t, ctx, "GET", "/", nil, http.Header{traceparentKey: {clientParent}})
	if !strings.Contains(res.Header.Get("Traceresponse"), clientTraceID) {
		t.Errorf("traceresponse %q", res.Header.Get("Traceresponse"))
	}
	if r := rec.next(t, ctx); r.TraceIDString() != clientTraceID {
		t.Errorf("trace id %s, want %s", r.TraceIDString(), clientTraceID)
	}
	res, _ = f.do(t, ctx, "GET", "/", nil, nil)
	m := traceResponseRE.FindStringSubmatch(res.Header.Get("Traceresponse"))
	if r := rec.next(t, ctx); m == nil || r.TraceIDString() != m[1] {
		t.Errorf("trace id %s, traceresponse %q", r.TraceIDString(), res.Header.Get("Traceresponse"))
	}
}

// TestRecordDrainingAndFailure: an instance that answers 503 draining shows
// as such before the one that served; a request no instance could take is
// recorded as failed, and one no route matched with no service.
func TestRecordDrainingAndFailure(t *testing.T) {
	ctx := testCtx(t)
	rec := make(chanRecorder, 8)
	draining := newUpstream(t, "d", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(wire.DrainingHeader, "1")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	up := nameUpstream(t, "b")
	dead := instanceAt("x", closedAddr(t))
	f := newFrontend(t, Config{Recorder: rec}, Route{PathPrefix: "/web", Balancer: newBalancer(t, "web", draining.instance(), up.instance())},
		Route{PathPrefix: "/dead", Balancer: newBalancer(t, "dead", dead)})
	var r *Record
	for range 4 {
		f.do(t, ctx, "GET", "/web", nil, nil)
		if r = rec.next(t, ctx); len(r.Attempts) == 2 {
			break
		}
	}
	if len(r.Attempts) != 2 || r.Attempts[0].Outcome != OutcomeDraining || r.Attempts[0].Status != 503 ||
		r.Attempts[1].Outcome != OutcomeServed || r.Status != 200 || r.Failed() {
		t.Errorf("record %+v, want draining then served", r)
	}

	res, _ := f.do(t, ctx, "GET", "/dead", nil, nil)
	r = rec.next(t, ctx)
	if res.StatusCode != 502 || r.Status != 502 || !r.Failed() || r.Service != "dead" || r.Error != "dial_error" ||
		len(r.Attempts) == 0 || r.Attempts[0].Outcome != "dial_error" {
		t.Errorf("record %+v of a request answered %d, want a failed 502 after dial errors", r, res.StatusCode)
	}

	res, _ = f.do(t, ctx, "GET", "/nowhere", nil, nil)
	r = rec.next(t, ctx)
	if res.StatusCode != 404 || r.Status != 404 || r.Service != "" || len(r.Attempts) != 0 || !r.TraceID.IsValid() {
		t.Errorf("record %+v of an unrouted request", r)
	}
}

func TestParseTraceparent(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{clientParent, true},
		{"01-" + clientTraceID + "-" + clientSpanID + "-01-future", true},
		{"00-" + clientTraceID + "-" + clientSpanID + "-01-x", false},
		{"00-" + strings.ToUpper(clientTraceID) + "-" + clientSpanID + "-01", false},
		{"00-00000000000000000000000000000000-" + clientSpanID + "-01", false},
		{"ff-" + clientTraceID + "-" + clientSpanID + "-01", false},
		{"00-" + clientTraceID + "-" + clientSpanID, false},
		{"", false},
	} {
		tid, ok := parseTraceparent(tt.in)
		if ok != tt.ok || ok && tid.String() != clientTraceID {
			t.Errorf("parseTraceparent(%q) = %s, %v; want ok %v", tt.in, tid, ok, tt.ok)
		}
	}
}

// TestRecordCacheHit: a response served from the cache is recorded with its
// cache status and no upstream attempt.
func TestRecordCacheHit(t *testing.T) {
	ctx := testCtx(t)
	rec := make(chanRecorder, 4)
	up := newUpstream(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Write([]byte("hello"))
	})
	c, err := httpcache.New(httpcache.Config{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f := newFrontend(t, Config{Recorder: rec}, Route{Balancer: newBalancer(t, "web", up.instance()), Cache: c})
	f.do(t, ctx, "GET", "/c", nil, nil)
	if r := rec.next(t, ctx); len(r.Attempts) != 1 || !strings.Contains(r.CacheStatus, "fwd=") {
		t.Errorf("miss recorded with %d attempts, cache status %q", len(r.Attempts), r.CacheStatus)
	}
	f.do(t, ctx, "GET", "/c", nil, nil)
	if r := rec.next(t, ctx); len(r.Attempts) != 0 || !strings.Contains(r.CacheStatus, "hit") || r.Status != 200 {
		t.Errorf("hit recorded with %d attempts, cache status %q, status %d", len(r.Attempts), r.CacheStatus, r.Status)
	}
}
