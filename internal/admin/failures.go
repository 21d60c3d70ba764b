package admin

import (
	"cmp"
	"slices"
	"time"
)

// Failure is a failed request the proxy recorded.
type Failure struct {
	seq      uint64
	Time     time.Time
	Service  string
	Instance string
	// TraceID is the request's trace id, empty when tracing is off.
	TraceID string
	// Status is the HTTP status returned to the client.
	Status int
}

// RecordFailure notes a failed request for the status page, which shows the
// last 50. The proxy calls it on its request path: it takes no lock and
// never blocks (one allocation and two atomic operations).
func (s *Server) RecordFailure(service, instanceID, traceID string, status int, at time.Time) {
	n := s.failSeq.Add(1)
	s.failures[(n-1)%maxFailures].Store(&Failure{
		seq: n, Time: at, Service: service, Instance: instanceID, TraceID: traceID, Status: status,
	})
}

// recentFailures returns the recorded failures, the newest first.
func (s *Server) recentFailures() []Failure {
	var out []Failure
	for i := range s.failures {
		if f := s.failures[i].Load(); f != nil {
			out = append(out, *f)
		}
	}
	slices.SortFunc(out, func(a, b Failure) int { return cmp.Compare(b.seq, a.seq) })
	return out
}
