package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/internal/recent"
	"github.com/meshlb/meshlb/proxy"
)

// pageRequests is how many recent requests the status page shows.
const pageRequests = 100

// ListRequests returns the recent requests that match the request's
// filters, newest first.
func (a *adminService) ListRequests(_ context.Context, req *adminpb.ListRequestsRequest) (*adminpb.ListRequestsResponse, error) {
	ring := a.s.recent
	if ring == nil {
		return nil, status.Error(codes.FailedPrecondition, "the agent keeps no recent requests (--recent 0)")
	}
	f, err := a.s.requestFilter(req)
	if err != nil {
		return nil, err
	}
	recs := ring.List(f, int(req.GetLimit()))
	st := ring.Stats()
	out := &adminpb.ListRequestsResponse{Requests: make([]*adminpb.RequestRecord, len(recs)),
		Size: uint32(st.Size), Kept: uint32(st.Kept), Recorded: st.Recorded}
	for i, r := range recs {
		out.Requests[i] = RequestProto(r)
	}
	return out, nil
}

// requestFilter checks and converts ListRequests' filters.
func (s *Server) requestFilter(req *adminpb.ListRequestsRequest) (recent.Filter, error) {
	f := recent.Filter{Failed: req.GetFailed(), Services: req.GetServices()}
	if _, err := s.lookup(f.Services); err != nil {
		return f, err
	}
	for _, v := range req.GetStatus() {
		m, err := recent.ParseStatus(v)
		if err != nil {
			return f, status.Error(codes.InvalidArgument, err.Error())
		}
		f.Statuses = append(f.Statuses, m)
	}
	if d := req.GetMinLatency(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return f, status.Errorf(codes.InvalidArgument, "invalid min_latency %v: must be a duration of at least 0", d.AsDuration())
		}
		f.MinLatency = d.AsDuration()
	}
	if v := req.GetTraceId(); v != "" {
		tid, err := recent.ParseTraceID(v)
		if err != nil {
			return f, status.Error(codes.InvalidArgument, err.Error())
		}
		f.TraceID = tid
	}
	return f, nil
}

// RequestProto converts a proxy Record.
func RequestProto(r *proxy.Record) *adminpb.RequestRecord {
	out := &adminpb.RequestRecord{
		Seq: r.Seq, Time: timestamppb.New(r.Time), Method: r.Method, Host: r.Host, Path: r.Path,
		ClientAddress: r.ClientAddr, Service: r.Service, Status: int32(r.Status), GrpcStatus: r.GRPCStatus,
		Latency: durationpb.New(r.Latency), Retries: uint32(r.Retries), Hedges: uint32(r.Hedges),
		CacheStatus: r.CacheStatus, TraceId: r.TraceIDString(), Error: r.Error,
		Attempts: make([]*adminpb.RequestAttempt, len(r.Attempts)),
	}
	for i, a := range r.Attempts {
		out.Attempts[i] = &adminpb.RequestAttempt{
			Number: uint32(a.N), InstanceId: a.InstanceID, Address: a.Address, Host: a.Host, Pid: int64(a.PID),
			Outcome: a.Outcome, Status: int32(a.Status), Latency: durationpb.New(a.Latency),
			Datacenter: a.Datacenter, Backup: a.Backup,
		}
	}
	return out
}

// RequestView is a recent request as the status page and `agent requests
// --json` show it: TraceID is 32 lowercase hex digits, latencies are in
// milliseconds, TraceURL links the trace in the backend's UI (--trace-ui).
type RequestView struct {
	Seq           uint64        `json:"seq"`
	Time          time.Time     `json:"time"`
	Method        string        `json:"method"`
	Host          string        `json:"host"`
	Path          string        `json:"path"`
	ClientAddress string        `json:"client_address"`
	Service       string        `json:"service"`
	Status        int32         `json:"status"`
	GRPCStatus    string        `json:"grpc_status,omitempty"`
	LatencyMillis float64       `json:"latency_ms"`
	Attempts      []AttemptView `json:"attempts"`
	Retries       uint32        `json:"retries"`
	Hedges        uint32        `json:"hedges"`
	CacheStatus   string        `json:"cache_status,omitempty"`
	TraceID       string        `json:"trace_id"`
	TraceURL      string        `json:"trace_url,omitempty"`
	Error         string        `json:"error,omitempty"`
}

// AttemptView is one try of a request; PID is 0 when unknown.
type AttemptView struct {
	Number        uint32  `json:"number"`
	InstanceID    string  `json:"instance_id"`
	Address       string  `json:"address"`
	Host          string  `json:"host,omitempty"`
	PID           int64   `json:"pid"`
	Outcome       string  `json:"outcome"`
	Status        int32   `json:"status,omitempty"`
	LatencyMillis float64 `json:"latency_ms"`
	Datacenter    string  `json:"datacenter,omitempty"`
	Backup        bool    `json:"backup,omitempty"`
}

// ViewRequest converts a RequestRecord; traceUI is --trace-ui ("" for no
// link).
func ViewRequest(r *adminpb.RequestRecord, traceUI string) RequestView {
	v := RequestView{
		Seq: r.GetSeq(), Time: r.GetTime().AsTime(), Method: r.GetMethod(), Host: r.GetHost(), Path: r.GetPath(),
		ClientAddress: r.GetClientAddress(), Service: r.GetService(), Status: r.GetStatus(), GRPCStatus: r.GetGrpcStatus(),
		LatencyMillis: millis(r.GetLatency()), Retries: r.GetRetries(), Hedges: r.GetHedges(), CacheStatus: r.GetCacheStatus(),
		TraceID: r.GetTraceId(), TraceURL: TraceURL(traceUI, r.GetTraceId()), Error: r.GetError(),
		Attempts: make([]AttemptView, 0, len(r.GetAttempts())),
	}
	for _, a := range r.GetAttempts() {
		v.Attempts = append(v.Attempts, AttemptView{
			Number: a.GetNumber(), InstanceID: a.GetInstanceId(), Address: a.GetAddress(), Host: a.GetHost(), PID: a.GetPid(),
			Outcome: a.GetOutcome(), Status: a.GetStatus(), LatencyMillis: millis(a.GetLatency()),
			Datacenter: a.GetDatacenter(), Backup: a.GetBackup(),
		})
	}
	return v
}

func millis(d *durationpb.Duration) float64 {
	return float64(d.AsDuration().Microseconds()) / 1000
}

// TraceURL links traceID in a trace backend's UI: base with "{trace_id}"
// replaced, or base + "/trace/" + id (Jaeger's UI) when base has no
// placeholder. "" when either is empty.
func TraceURL(base, traceID string) string {
	if base == "" || traceID == "" {
		return ""
	}
	if strings.Contains(base, "{trace_id}") {
		return strings.ReplaceAll(base, "{trace_id}", traceID)
	}
	return strings.TrimRight(base, "/") + "/trace/" + traceID
}

// CheckTraceUI validates a --trace-ui value: an absolute http or https URL,
// optionally with a "{trace_id}" placeholder.
func CheckTraceUI(v string) error {
	u, err := url.Parse(strings.ReplaceAll(v, "{trace_id}", "0"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("invalid trace UI URL %q: want an absolute http(s) URL such as http://127.0.0.1:16686 (Jaeger; /trace/ID is appended) or one with {trace_id} where the id goes", v)
	}
	return nil
}

// recentViews is the newest records for the status page.
func (s *Server) recentViews(f recent.Filter, limit int) []RequestView {
	out := []RequestView{}
	if s.recent == nil {
		return out
	}
	for _, r := range s.recent.List(f, limit) {
		out = append(out, ViewRequest(RequestProto(r), s.traceUI))
	}
	return out
}

// serveRequests is the JSON API of the recent requests, with the gRPC
// filters as query parameters: failed=1, status=5xx (repeatable),
// service=NAME (repeatable), min_latency=200ms, trace_id=ID, limit=N.
func (s *Server) serveRequests(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := &adminpb.ListRequestsRequest{Status: q["status"], Services: q["service"], TraceId: q.Get("trace_id")}
	if v := q.Get("failed"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			http.Error(w, fmt.Sprintf("invalid failed=%q: want true or false", v), http.StatusBadRequest)
			return
		}
		req.Failed = b
	}
	if v := q.Get("min_latency"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			http.Error(w, fmt.Sprintf("invalid min_latency=%q: want a duration such as 200ms", v), http.StatusBadRequest)
			return
		}
		req.MinLatency = durationpb.New(d)
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			http.Error(w, fmt.Sprintf("invalid limit=%q: want a number, 0 for all", v), http.StatusBadRequest)
			return
		}
		req.Limit = uint32(n)
	}
	res, err := (&adminService{s: s}).ListRequests(r.Context(), req)
	if err != nil {
		st := status.Convert(err)
		code := http.StatusBadRequest
		if st.Code() == codes.NotFound || st.Code() == codes.FailedPrecondition {
			code = http.StatusNotFound
		}
		http.Error(w, st.Message(), code)
		return
	}
	views := make([]RequestView, len(res.GetRequests()))
	for i, rec := range res.GetRequests() {
		views[i] = ViewRequest(rec, s.traceUI)
	}
	writeJSON(w, struct {
		Requests []RequestView `json:"requests"`
		Size     uint32        `json:"size"`
		Kept     uint32        `json:"kept"`
		Recorded uint64        `json:"recorded"`
	}{views, res.GetSize(), res.GetKept(), res.GetRecorded()})
}
