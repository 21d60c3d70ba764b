package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/meshlb/meshlb/internal/recent"
)

// streamRefresh is how often the page's event stream resends the state when
// nothing changed, so that counters stay live.
const streamRefresh = time.Second

// StateView is what the status page shows: every pool, the recent changes
// (newest first) and the recent failed requests (newest first).
type StateView struct {
	Now          time.Time     `json:"now"`
	Pools        []PoolView    `json:"pools"`
	Events       []EventView   `json:"events"`
	Failures     []FailureView `json:"failures"`
	LastEventSeq uint64        `json:"last_event_seq"`
	Caches       []CacheView   `json:"caches"`
	// Requests are the newest recent requests; Recording is false with
	// --recent 0.
	Requests  []RequestView `json:"requests"`
	Recording bool          `json:"recording"`
}

// Handler returns the one handler of the admin port: gRPC requests
// (HTTP/2 with content type application/grpc) go to the gRPC server (admin
// API, health, reflection); GET / is the status page; /api/pools,
// /api/events, /api/requests and the event stream /api/stream feed it;
// everything else goes to extra (nil: 404). Callers that are neither on loopback nor in
// AllowRemote are refused, for all of it. Serve it with HTTP/1 and
// unencrypted HTTP/2 enabled (http.Protocols) so that gRPC clients and
// browsers share the port.
func (s *Server) Handler(extra http.Handler) http.Handler {
	if extra == nil {
		extra = http.NotFoundHandler()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.servePage)
	mux.HandleFunc("GET /api/pools", s.servePools)
	mux.HandleFunc("GET /api/events", s.serveEvents)
	mux.HandleFunc("GET /api/stream", s.serveStream)
	mux.HandleFunc("GET /api/requests", s.serveRequests)
	mux.Handle("/", extra)
	return s.accessMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isGRPC(r) {
			s.grpc.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
}

func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

func (s *Server) servePools(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, ViewPools(s.listPools(nil)))
}

func (s *Server) serveEvents(w http.ResponseWriter, _ *http.Request) {
	st := s.state()
	writeJSON(w, struct {
		Events       []EventView   `json:"events"`
		Failures     []FailureView `json:"failures"`
		LastEventSeq uint64        `json:"last_event_seq"`
		Caches       []CacheView   `json:"caches"`
	}{st.Events, st.Failures, st.LastEventSeq, st.Caches})
}

// state gathers what the status page shows.
func (s *Server) state() StateView {
	pools := ViewPools(s.listPools(nil))
	st := StateView{Now: time.Now(), Pools: pools.Pools, LastEventSeq: pools.LastEventSeq,
		Events: []EventView{}, Failures: []FailureView{}, Caches: s.cacheViews()}
	evs, _, _ := s.eventsAfter(0)
	for i := len(evs) - 1; i >= 0; i-- {
		st.Events = append(st.Events, ViewEvent(evs[i]))
	}
	for _, f := range s.recentFailures() {
		st.Failures = append(st.Failures, FailureView{
			Time: f.Time, Service: f.Service, Instance: f.Instance, TraceID: f.TraceID, Status: f.Status,
			TraceURL: TraceURL(s.traceUI, f.TraceID),
		})
	}
	st.Requests, st.Recording = s.recentViews(recent.Filter{}, pageRequests), s.recent != nil
	return st
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // a write error means the client went away
}

// serveStream is a server-sent event stream of the page's state: one
// "state" event at once, then one on every pool change and at least every
// streamRefresh. It ends when the client goes away or Run stops.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	// A long-lived stream must not inherit the server's write timeout.
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	t := time.NewTicker(streamRefresh)
	defer t.Stop()
	for {
		changed := s.notifier()
		data, err := json.Marshal(s.state())
		if err != nil {
			s.log.Error("cannot encode the status page state", "error", err)
			return
		}
		if _, err := w.Write([]byte("event: state\ndata: ")); err != nil {
			return
		}
		if _, err := w.Write(data); err != nil {
			return
		}
		if _, err := w.Write([]byte("\n\n")); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// Healthz answers 200 once every service has a pool (from Consul or from
// the agent's snapshot file), else 503 naming the services still waiting.
// The agent serves it at /healthz.
func (s *Server) Healthz(w http.ResponseWriter, _ *http.Request) {
	var waiting []string
	var b strings.Builder
	for _, svc := range s.services {
		pool := svc.Balancer.Pool()
		if pool == nil {
			waiting = append(waiting, svc.Name)
			fmt.Fprintf(&b, "%s: waiting for the first pool from Consul\n", svc.Name)
			continue
		}
		fmt.Fprintf(&b, "%s: %d instances\n", svc.Name, len(pool.Instances))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(waiting) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	io.WriteString(w, b.String())
}
