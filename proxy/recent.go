package proxy

import (
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/internal/wire"
)

// Recorder keeps the Records of finished requests: the agent's ring of
// recent requests (Config.Recorder).
type Recorder interface {
	// Record is called once per request, on the request path, after the
	// answer was sent: it must be cheap and must not block. rec and its
	// strings are only valid during the call (a data path reuses them for
	// its next request): to keep it, copy it (Record.CopyTo).
	Record(rec *Record)
}

// Record is what the proxy tells of one request: enough to answer "which
// process served the request that just failed, and how long did it take".
// Every data path fills it through the same hooks (startRecord, the
// attempts' newAttempt and finish, endRecord), so it reads the same
// whichever path carried the request. A Record handed to a Recorder may
// share memory with the data path that made it: CopyTo makes one that does
// not.
type Record struct {
	// Seq is set by the Recorder: its own order of records.
	Seq uint64
	// Time is when the request arrived.
	Time       time.Time
	Method     string
	Host       string
	Path       string
	ClientAddr string // the peer's host:port, as the listener saw it
	// Service is the routed service, "" when no route matched.
	Service string
	// Status is the status answered (499 when the client left first); a
	// gRPC call the proxy failed itself has the HTTP equivalent of its gRPC
	// status, as Config.OnFailure.
	Status     int
	GRPCStatus string // a gRPC call's grpc-status, when known
	// Latency is from arrival to the end of the answer.
	Latency time.Duration
	// Attempts lists the tries in the order they started.
	Attempts []AttemptRecord
	// Retries counts attempts sent after an earlier one failed; Hedges
	// counts attempts started while another was still running.
	Retries int
	Hedges  int
	// CacheStatus is the response's Cache-Status (RFC 9211) when the
	// request met the cache, "" otherwise.
	CacheStatus string
	// TraceID is the request's trace: the server span's when tracing, else
	// the client's traceparent's, else one the proxy made (and returned in
	// traceresponse). Never zero.
	TraceID trace.TraceID
	// Error is the error.type of the last upstream error that was not
	// overcome, "" if none.
	Error string

	attempts [DefaultMaxAttempts]AttemptRecord // Attempts' first storage
	// traceResp holds the traceresponse value's bytes when the proxy made
	// the trace id (startRecord).
	traceResp [traceResponseLen]byte
	mu        sync.Mutex // guards Attempts and Hedges while hedges run
}

// AttemptRecord is one try of a request on one instance.
type AttemptRecord struct {
	N          int // 1-based
	InstanceID string
	Address    string // host:port dialled
	Host       string // from the instance's Consul meta "host"
	PID        int    // from the instance's Consul meta "pid"; 0 when unknown
	// Outcome is OutcomeServed, OutcomeDraining, OutcomePending or the
	// error.type of the failure ("dial_error", "timeout", ...).
	Outcome string
	Status  int           // the instance's status, 0 if none
	Latency time.Duration // to the response head, or to the failure
	// Datacenter is the instance's Consul datacenter ("" if not known);
	// Backup marks an instance of a backup tier.
	Datacenter string
	Backup     bool
}

// Attempt outcomes besides error types.
const (
	// OutcomeServed: the instance's answer went to the client.
	OutcomeServed = "served"
	// OutcomeDraining: the instance answered 503 draining and the request
	// went on to another one.
	OutcomeDraining = "draining"
	// OutcomePending: the attempt had not ended when the request did.
	OutcomePending = "pending"
	// OutcomeLost: a hedge race was won by another attempt.
	OutcomeLost = "lost"
)

// Failed reports whether the request failed: answered 5xx (nginx's and the
// status page's notion), 499 excluded.
func (r *Record) Failed() bool { return r.Status >= 500 }

// TraceIDString is the trace id as 32 lowercase hex digits.
func (r *Record) TraceIDString() string { return r.TraceID.String() }

// CopyTo sets *dst to a copy of r whose strings and attempts live in
// storage of dst's own: buf (its strings, appended from len 0, grown when
// short) and dst's attempts (grown when short). It returns buf, to be
// passed again with dst when dst is reused; r may be reused afterwards.
// With buf and dst's attempts large enough, it allocates nothing.
func (r *Record) CopyTo(dst *Record, buf []byte) []byte {
	n := len(r.Method) + len(r.Host) + len(r.Path) + len(r.ClientAddr) + len(r.Service) +
		len(r.GRPCStatus) + len(r.CacheStatus) + len(r.Error)
	for i := range r.Attempts {
		a := &r.Attempts[i]
		n += len(a.InstanceID) + len(a.Address) + len(a.Host) + len(a.Outcome) + len(a.Datacenter)
	}
	if cap(buf) < n {
		buf = make([]byte, 0, n+n/4)
	}
	buf = buf[:0]
	// Every string is appended within buf's capacity: the earlier ones
	// stay where they are.
	str := func(s string) string {
		if s == "" {
			return ""
		}
		i := len(buf)
		buf = append(buf, s...)
		return unsafe.String(&buf[i], len(s))
	}
	atts := dst.Attempts[:0]
	if cap(atts) == 0 {
		atts = dst.attempts[:0]
	}
	for i := range r.Attempts {
		a := r.Attempts[i]
		a.InstanceID, a.Address, a.Host = str(a.InstanceID), str(a.Address), str(a.Host)
		a.Outcome, a.Datacenter = str(a.Outcome), str(a.Datacenter)
		atts = append(atts, a)
	}
	dst.Seq, dst.Time = r.Seq, r.Time
	dst.Method, dst.Host, dst.Path, dst.ClientAddr = str(r.Method), str(r.Host), str(r.Path), str(r.ClientAddr)
	dst.Service = str(r.Service)
	dst.Status, dst.GRPCStatus, dst.Latency = r.Status, str(r.GRPCStatus), r.Latency
	dst.Attempts = atts
	dst.Retries, dst.Hedges = r.Retries, r.Hedges
	dst.CacheStatus, dst.TraceID, dst.Error = str(r.CacheStatus), r.TraceID, str(r.Error)
	return buf
}

// startRecord begins the request's Record and gives it a trace id: the
// server span's when tracing, else the client's traceparent's; without
// either it makes one and returns it in traceresponse, so every request
// can be looked up. No span, no exporter: an id is two random numbers.
//
// The Record is x.rec when the data path set one to reuse (the loop's), a
// new one otherwise.
func (x *exchange) startRecord() {
	r := x.r
	rec := x.rec
	if rec == nil {
		rec = new(Record)
	}
	*rec = Record{Time: x.start, Method: r.Method, Host: r.Host, Path: r.URL.Path, ClientAddr: r.RemoteAddr}
	rec.Attempts = rec.attempts[:0]
	if x.route != nil {
		rec.Service = x.route.service
	}
	x.rec = rec
	if x.span != nil {
		if sc := x.span.SpanContext(); sc.IsValid() {
			rec.TraceID = sc.TraceID()
			return
		}
	}
	if v := r.Header["Traceparent"]; len(v) > 0 {
		if tid, ok := parseTraceparent(v[0]); ok {
			rec.TraceID = tid
			return
		}
	}
	var sid trace.SpanID
	randID(rec.TraceID[:])
	randID(sid[:])
	// The value's bytes live in rec, as long as the request: its head
	// is written before the request ends.
	x.traceResp[0] = formatTraceResponse(&rec.traceResp, trace.NewSpanContext(trace.SpanContextConfig{TraceID: rec.TraceID, SpanID: sid}))
	x.setTraceResponse(x.w.Header())
}

// randID fills b with random bytes, never all zero (an invalid W3C id).
func randID(b []byte) {
	for {
		for i := 0; i < len(b); i += 8 {
			v := rand.Uint64()
			for j := i; j < i+8 && j < len(b); j++ {
				b[j] = byte(v)
				v >>= 8
			}
		}
		for _, c := range b {
			if c != 0 {
				return
			}
		}
	}
}

// parseTraceparent returns the trace id of a W3C traceparent value
// (version-traceid-parentid-flags), if it is a valid one.
func parseTraceparent(v string) (trace.TraceID, bool) {
	var tid trace.TraceID
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || v[:2] == "ff" {
		return tid, false
	}
	if len(v) > 55 && (v[:2] == "00" || v[55] != '-') {
		return tid, false // version 00 is exactly 55 long; later ones extend with '-'
	}
	for _, c := range v[:55] {
		if c != '-' && !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return tid, false // uppercase hex is invalid too
		}
	}
	if _, err := hex.Decode(tid[:], []byte(v[3:35])); err != nil || !tid.IsValid() {
		return trace.TraceID{}, false
	}
	return tid, true
}

// recordAttempt adds attempt a, just started, to the Record and returns its
// index there. It runs on the goroutine that starts attempts.
func (x *exchange) recordAttempt(a *attempt) int {
	inst := a.inst
	ar := AttemptRecord{N: a.n, InstanceID: inst.ID, Address: inst.HostPort, Host: inst.Meta[wire.MetaHost], Outcome: OutcomePending,
		Datacenter: inst.Datacenter, Backup: inst.Backup}
	if pid, err := strconv.Atoi(inst.Meta[wire.MetaPID]); err == nil {
		ar.PID = pid
	}
	x.rec.mu.Lock()
	defer x.rec.mu.Unlock()
	x.rec.Attempts = append(x.rec.Attempts, ar)
	return len(x.rec.Attempts) - 1
}

// recordHedge counts an attempt started while another still ran.
func (x *exchange) recordHedge() {
	x.rec.mu.Lock()
	x.rec.Hedges++
	x.rec.mu.Unlock()
}

// recordFinish notes how attempt a ended: status is the instance's status
// (0 if none), err its failure.
func (a *attempt) recordFinish(status int, err error) {
	a.x.rec.mu.Lock()
	defer a.x.rec.mu.Unlock()
	ar := &a.x.rec.Attempts[a.recIdx]
	ar.Status = status
	ar.Latency = a.latency
	switch {
	case a.lost && (err == nil || errors.Is(err, errHedgeLost) || errors.Is(err, errTryTimeout)):
		ar.Outcome = OutcomeLost
		ar.Latency = time.Since(a.start)
	case err != nil:
		if ar.Outcome = errorType(err); ar.Outcome == wire.ErrOther {
			ar.Outcome = "error"
		}
		if ar.Latency == 0 {
			ar.Latency = time.Since(a.start)
		}
	case a.draining:
		ar.Outcome = OutcomeDraining
	default:
		ar.Outcome = OutcomeServed
	}
}

// endRecord completes the Record and hands it to the Recorder.
func (x *exchange) endRecord() {
	rec := x.rec
	rec.Status = x.status
	rec.GRPCStatus = x.grpcStatus
	if rec.CacheStatus == "" {
		rec.CacheStatus = x.CacheStatus()
	}
	rec.Latency = time.Since(x.start)
	rec.mu.Lock()
	if n := len(rec.Attempts) - 1 - rec.Hedges; n > 0 {
		rec.Retries = n
	}
	rec.mu.Unlock()
	if x.err != nil {
		rec.Error = errorType(x.err)
	}
	x.p.cfg.Recorder.Record(rec)
}
