package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/internal/recent"
	"github.com/meshlb/meshlb/proxy"
)

const (
	traceA = "4bf92f3577b34da6a3ce929d0e0e4736"
	traceB = "0af7651916cd43dd8448eb211c80319c"
)

// recordTwo records a served GET and a failed, slow POST.
func recordTwo(t *testing.T, ring *recent.Ring) {
	t.Helper()
	ok := &proxy.Record{Time: time.Now(), Method: "GET", Path: "/a", Service: "web", Status: 200,
		Latency: 3 * time.Millisecond, ClientAddr: "127.0.0.1:5000",
		Attempts: []proxy.AttemptRecord{{N: 1, InstanceID: "web-a", Address: "127.0.0.1:8071", Host: "h", PID: 4242,
			Outcome: proxy.OutcomeServed, Status: 200, Latency: 2 * time.Millisecond}}}
	bad := &proxy.Record{Time: time.Now(), Method: "POST", Path: "/b", Service: "web", Status: 502,
		Latency: 300 * time.Millisecond, Error: "connection_reset", Retries: 1,
		Attempts: []proxy.AttemptRecord{
			{N: 1, InstanceID: "web-a", PID: 4242, Outcome: "dial_error"},
			{N: 2, InstanceID: "web-b", PID: 4343, Outcome: "connection_reset", Datacenter: "dc2", Backup: true}}}
	var err error
	if ok.TraceID, err = recent.ParseTraceID(traceA); err != nil {
		t.Fatal(err)
	}
	if bad.TraceID, err = recent.ParseTraceID(traceB); err != nil {
		t.Fatal(err)
	}
	ring.Record(ok)
	ring.Record(bad)
}

func TestListRequests(t *testing.T) {
	ctx := testContext(t, testTimeout)
	ring := recent.New(10)
	recordTwo(t, ring)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}, Recent: ring}, nil)
	client := adminpb.NewAdminClient(dial(t, srv.addr))

	resp, err := client.ListRequests(ctx, &adminpb.ListRequestsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetRequests()) != 2 || resp.GetSize() != 10 || resp.GetKept() != 2 || resp.GetRecorded() != 2 {
		t.Fatalf("ListRequests = %v", resp)
	}
	newest := resp.Requests[0]
	if newest.GetTraceId() != traceB || newest.GetStatus() != 502 || newest.GetSeq() != 2 || len(newest.GetAttempts()) != 2 ||
		newest.Attempts[1].GetPid() != 4343 || newest.Attempts[1].GetOutcome() != "connection_reset" || newest.GetRetries() != 1 {
		t.Errorf("newest = %v", newest)
	}
	old := resp.Requests[1]
	if old.GetTraceId() != traceA || old.GetClientAddress() != "127.0.0.1:5000" || old.GetLatency().AsDuration() != 3*time.Millisecond ||
		old.Attempts[0].GetAddress() != "127.0.0.1:8071" || old.Attempts[0].GetHost() != "h" {
		t.Errorf("oldest = %v", old)
	}

	for _, tt := range []struct {
		req  *adminpb.ListRequestsRequest
		want []string
	}{
		{&adminpb.ListRequestsRequest{Failed: true}, []string{traceB}},
		{&adminpb.ListRequestsRequest{Status: []string{"2xx"}}, []string{traceA}},
		{&adminpb.ListRequestsRequest{MinLatency: durationpb.New(200 * time.Millisecond)}, []string{traceB}},
		{&adminpb.ListRequestsRequest{TraceId: traceA}, []string{traceA}},
		{&adminpb.ListRequestsRequest{Services: []string{"web"}, Limit: 1}, []string{traceB}},
	} {
		resp, err := client.ListRequests(ctx, tt.req)
		if err != nil {
			t.Fatalf("%v: %v", tt.req, err)
		}
		var got []string
		for _, r := range resp.GetRequests() {
			got = append(got, r.GetTraceId())
		}
		if len(got) != len(tt.want) || got[0] != tt.want[0] {
			t.Errorf("ListRequests(%v) = %v, want %v", tt.req, got, tt.want)
		}
	}

	for _, tt := range []struct {
		req  *adminpb.ListRequestsRequest
		code codes.Code
	}{
		{&adminpb.ListRequestsRequest{Status: []string{"6xx"}}, codes.InvalidArgument},
		{&adminpb.ListRequestsRequest{TraceId: "xyz"}, codes.InvalidArgument},
		{&adminpb.ListRequestsRequest{Services: []string{"nope"}}, codes.NotFound},
		{&adminpb.ListRequestsRequest{MinLatency: durationpb.New(-time.Second)}, codes.InvalidArgument},
	} {
		if _, err := client.ListRequests(ctx, tt.req); status.Code(err) != tt.code {
			t.Errorf("ListRequests(%v) = %v, want %v", tt.req, err, tt.code)
		}
	}

	off := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}}, nil)
	if _, err := adminpb.NewAdminClient(dial(t, off.addr)).ListRequests(ctx, &adminpb.ListRequestsRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("with --recent 0: %v, want FailedPrecondition", err)
	}
}

// TestRequestsJSON checks /api/requests and the page state: the views'
// shape (trace_id as hex, pid as a number) and the trace links.
func TestRequestsJSON(t *testing.T) {
	ctx := testContext(t, testTimeout)
	ring := recent.New(10)
	recordTwo(t, ring)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}, Recent: ring,
		TraceUI: "http://127.0.0.1:16686"}, nil)
	client := &http.Client{Timeout: 10 * time.Second}

	res, body := get(t, client, "http://"+srv.addr+"/api/requests?failed=true")
	var got struct {
		Requests []map[string]any `json:"requests"`
		Size     int              `json:"size"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil || res.StatusCode != 200 {
		t.Fatalf("%d %s: %v", res.StatusCode, body, err)
	}
	if len(got.Requests) != 1 || got.Size != 10 {
		t.Fatalf("got %s", body)
	}
	r := got.Requests[0]
	attempts, _ := r["attempts"].([]any)
	if r["trace_id"] != traceB || r["trace_url"] != "http://127.0.0.1:16686/trace/"+traceB || len(attempts) != 2 {
		t.Errorf("request %v", r)
	} else if a := attempts[1].(map[string]any); a["pid"] != 4343.0 || a["datacenter"] != "dc2" || a["backup"] != true {
		t.Errorf("attempt %v, want the number 4343 as pid, datacenter dc2, backup", a)
	}
	for _, q := range []string{"status=600", "min_latency=fast", "trace_id=0", "service=nope", "limit=-1", "failed=maybe"} {
		if res, body := get(t, client, "http://"+srv.addr+"/api/requests?"+q); res.StatusCode < 400 {
			t.Errorf("?%s: %d %s, want an error", q, res.StatusCode, body)
		}
	}

	st := srv.state()
	if !st.Recording || len(st.Requests) != 2 || st.Requests[0].TraceID != traceB {
		t.Errorf("page state requests = %+v", st.Requests)
	}
}

func TestTraceURL(t *testing.T) {
	for _, tt := range []struct{ base, want string }{
		{"", ""},
		{"http://127.0.0.1:16686", "http://127.0.0.1:16686/trace/" + traceA},
		{"http://127.0.0.1:16686/", "http://127.0.0.1:16686/trace/" + traceA},
		{"https://grafana.example/explore?trace={trace_id}", "https://grafana.example/explore?trace=" + traceA},
	} {
		if got := TraceURL(tt.base, traceA); got != tt.want {
			t.Errorf("TraceURL(%q) = %q, want %q", tt.base, got, tt.want)
		}
	}
	for _, bad := range []string{"127.0.0.1:16686", "ftp://x", "http://", "javascript:alert(1)"} {
		if CheckTraceUI(bad) == nil {
			t.Errorf("CheckTraceUI(%q) accepted", bad)
		}
	}
	if err := CheckTraceUI("http://127.0.0.1:16686/api/traces/{trace_id}"); err != nil {
		t.Error(err)
	}
}

// TestStatusPageRequests opens the status page in headless Chromium: the
// table shows the newest requests with the serving PID and the trace id
// linked to --trace-ui, and "failed only" shows a failed request older
// than the newest rows (the ring keeps failed ones longer).
func TestStatusPageRequests(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	ring := recent.New(200)
	recordTwo(t, ring) // traceB is a failed request
	for range 250 {
		ring.Record(&proxy.Record{Time: time.Now(), Method: "GET", Path: "/fast", Service: "web", Status: 200,
			Latency: time.Millisecond, Attempts: []proxy.AttemptRecord{{N: 1, InstanceID: "web-a", PID: 4242, Outcome: proxy.OutcomeServed}}})
	}
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}, Recent: ring,
		TraceUI: "http://jaeger.example:16686/"}, nil)

	br := startChromium(t, ctx)
	page := br.open(t, ctx, "http://"+srv.addr+"/")
	page.waitFor(t, ctx, "the newest requests", `document.querySelectorAll('#requests tbody tr[data-seq]').length === 100`)
	if got := page.eval(t, ctx, `document.querySelector('#requests tbody tr[data-seq]').textContent`); !strings.Contains(got.(string), "pid 4242") {
		t.Errorf("newest row %q does not name the PID", got)
	}
	failedRow := `document.querySelector('#requests tbody tr[data-trace="` + traceB + `"]')`
	if got := page.eval(t, ctx, `!!`+failedRow); got != false {
		t.Fatalf("the old failed request is among the newest 100 rows")
	}
	page.eval(t, ctx, `document.getElementById("only-failed").click(); true`)
	page.waitFor(t, ctx, "the failed request kept longer", `!!`+failedRow+` && `+failedRow+`.textContent.includes("pid 4343")`)
	if href := page.eval(t, ctx, failedRow+`.querySelector('a').href`); href != "http://jaeger.example:16686/trace/"+traceB {
		t.Errorf("trace link %v", href)
	}
	if n := page.eval(t, ctx, `document.querySelectorAll('#requests tbody tr[data-seq]').length`); n != 1.0 {
		t.Errorf("%v rows with failed only, want 1", n)
	}
}
