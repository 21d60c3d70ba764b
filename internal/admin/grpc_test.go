package admin

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/lb"
)

func TestListPools(t *testing.T) {
	ctx := testContext(t, testTimeout)
	web := newBalancer(t, "web", inst("web", "web-a", 8071), inst("web", "web-b", 8072), inst("web", "web-c", 8073))
	api := newBalancer(t, "api") // no pool yet
	srv := startServer(t, ctx, Options{Services: []Service{
		{Balancer: web, Status: func() WatchInfo {
			return WatchInfo{LastSuccess: time.Unix(1700000000, 0), LastError: "consul down", Errors: 3, Index: 42}
		}},
		{Balancer: api},
	}}, nil)

	// Load on web-a: one request done in 20ms, one failed, one in flight.
	p := web.Pool()
	a, b, c := p.Instances[0], p.Instances[1], p.Instances[2]
	a.Stats.Requests.Add(3)
	a.Stats.InFlight.Add(1)
	web.Done(a, lb.Result{Status: 200, Latency: 20 * time.Millisecond})
	a.Stats.InFlight.Add(1)
	web.Done(a, lb.Result{Status: 502, Latency: time.Millisecond})
	a.Stats.InFlight.Add(1)
	b.Stats.EjectedUntil.Store(time.Now().Add(time.Hour).UnixNano())
	c.Stats.Draining.Store(true)

	client := adminpb.NewAdminClient(dial(t, srv.addr))
	resp, err := client.ListPools(ctx, &adminpb.ListPoolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(resp.GetPools()); got != 2 {
		t.Fatalf("got %d pools, want 2 (web, api)", got)
	}
	wp, ap := resp.Pools[0], resp.Pools[1]
	if wp.GetService() != "web" || !wp.GetHasPool() || wp.GetPolicy() != "round_robin" || wp.GetVersion() != 1 {
		t.Errorf("web pool = %v", wp)
	}
	if w := wp.GetWatch(); w.GetLastError() != "consul down" || w.GetErrors() != 3 || w.GetIndex() != 42 ||
		!w.GetLastSuccess().AsTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("web watch = %v", w)
	}
	if ap.GetService() != "api" || ap.GetHasPool() || len(ap.GetInstances()) != 0 || ap.GetWatch() != nil {
		t.Errorf("api pool = %v, want no pool and no watch info", ap)
	}

	tests := []struct {
		id, addr string
		state    adminpb.InstanceState
		inFlight int64
		reqs     uint64
		fails    uint64
		ewma     bool
	}{
		{"web-a", "127.0.0.1:8071", adminpb.InstanceState_INSTANCE_STATE_SERVING, 1, 3, 1, true},
		{"web-b", "127.0.0.1:8072", adminpb.InstanceState_INSTANCE_STATE_EJECTED, 0, 0, 0, false},
		{"web-c", "127.0.0.1:8073", adminpb.InstanceState_INSTANCE_STATE_DRAINING, 0, 0, 0, false},
	}
	if len(wp.GetInstances()) != len(tests) {
		t.Fatalf("got %d instances, want %d", len(wp.GetInstances()), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			in := wp.Instances[i]
			if in.GetId() != tt.id || in.GetAddress() != tt.addr || in.GetPid() != "4242" || in.GetHost() != "testhost" ||
				in.GetWeight() != 1 {
				t.Errorf("instance = %v", in)
			}
			if in.GetState() != tt.state {
				t.Errorf("state = %v, want %v", in.GetState(), tt.state)
			}
			if in.GetInFlight() != tt.inFlight || in.GetRequests() != tt.reqs || in.GetFailures() != tt.fails {
				t.Errorf("in flight %d, requests %d, failures %d; want %d, %d, %d",
					in.GetInFlight(), in.GetRequests(), in.GetFailures(), tt.inFlight, tt.reqs, tt.fails)
			}
			if got := in.GetEwmaLatency() != nil; got != tt.ewma {
				t.Errorf("has EWMA = %v, want %v", got, tt.ewma)
			}
			if got := in.GetEjectedUntil() != nil; got != (tt.state == adminpb.InstanceState_INSTANCE_STATE_EJECTED) {
				t.Errorf("ejected_until = %v", in.GetEjectedUntil())
			}
		})
	}

	t.Run("filter", func(t *testing.T) {
		resp, err := client.ListPools(ctx, &adminpb.ListPoolsRequest{Services: []string{"api"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetPools()) != 1 || resp.Pools[0].GetService() != "api" {
			t.Errorf("pools = %v, want only api", resp.GetPools())
		}
		_, err = client.ListPools(ctx, &adminpb.ListPoolsRequest{Services: []string{"nope"}})
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("unknown service: err = %v, want NotFound naming it", err)
		}
	})
}

func TestDrain(t *testing.T) {
	ctx := testContext(t, testTimeout)
	web := newBalancer(t, "web", inst("web", "web-a", 8071), inst("web", "shared", 8072))
	api := newBalancer(t, "api", inst("api", "api-a", 9071), inst("api", "shared", 9072))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}, {Balancer: api}}}, nil)
	client := adminpb.NewAdminClient(dial(t, srv.addr))

	drain := func(svc, id string) (*adminpb.Instance, bool, error) {
		r, err := client.Drain(ctx, &adminpb.DrainRequest{Service: svc, InstanceId: id})
		return r.GetInstance(), r.GetChanged(), err
	}
	undrain := func(svc, id string) (*adminpb.Instance, bool, error) {
		r, err := client.Undrain(ctx, &adminpb.UndrainRequest{Service: svc, InstanceId: id})
		return r.GetInstance(), r.GetChanged(), err
	}
	statsOf := func(b *lb.Balancer, id string) *lb.Stats {
		return findIn(b.Pool(), id).Stats
	}
	tests := []struct {
		name      string
		call      func(svc, id string) (*adminpb.Instance, bool, error)
		svc, id   string
		code      codes.Code
		errHas    string
		changed   bool
		draining  bool // afterwards, on stats
		statsFrom *lb.Balancer
	}{
		{"unknown instance", drain, "web", "web-zz", codes.NotFound, `"web-zz"`, false, false, nil},
		{"unknown service", drain, "nope", "web-a", codes.NotFound, `"nope"`, false, false, nil},
		{"empty id", drain, "web", "", codes.InvalidArgument, "instance_id", false, false, nil},
		{"unknown anywhere", drain, "", "web-zz", codes.NotFound, `"web-zz"`, false, false, nil},
		{"ambiguous", drain, "", "shared", codes.InvalidArgument, "web, api", false, false, nil},
		{"drain", drain, "web", "web-a", codes.OK, "", true, true, web},
		{"drain again", drain, "web", "web-a", codes.OK, "", false, true, web},
		{"undrain", undrain, "web", "web-a", codes.OK, "", true, false, web},
		{"undrain again", undrain, "web", "web-a", codes.OK, "", false, false, web},
		{"drain by unique id", drain, "", "api-a", codes.OK, "", true, true, api},
		{"undrain unknown", undrain, "api", "gone", codes.NotFound, `"gone"`, false, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, changed, err := tt.call(tt.svc, tt.id)
			if status.Code(err) != tt.code {
				t.Fatalf("err = %v, want code %v", err, tt.code)
			}
			if err != nil {
				if !strings.Contains(status.Convert(err).Message(), tt.errHas) {
					t.Errorf("error %q does not name %s", status.Convert(err).Message(), tt.errHas)
				}
				return
			}
			if changed != tt.changed {
				t.Errorf("changed = %v, want %v", changed, tt.changed)
			}
			if got := statsOf(tt.statsFrom, tt.id).Draining.Load(); got != tt.draining {
				t.Errorf("Stats.Draining = %v, want %v", got, tt.draining)
			}
			wantState := adminpb.InstanceState_INSTANCE_STATE_SERVING
			if tt.draining {
				wantState = adminpb.InstanceState_INSTANCE_STATE_DRAINING
			}
			if in.GetId() != tt.id || in.GetState() != wantState {
				t.Errorf("instance = %v, want %s in state %v", in, tt.id, wantState)
			}
		})
	}
}

// recvUntil receives events until one of kind for id arrives.
func recvUntil(t *testing.T, stream adminpb.Admin_WatchPoolsClient, kind adminpb.PoolEvent_Kind, id string) *adminpb.PoolEvent {
	t.Helper()
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for %v of %s: %v", kind, id, err)
		}
		if ev.GetKind() == kind && ev.GetInstance().GetId() == id {
			return ev
		}
	}
}

func TestWatchPools(t *testing.T) {
	ctx := testContext(t, testTimeout)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	other := newBalancer(t, "other", inst("other", "other-a", 7071))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}, {Balancer: other}}}, nil)
	client := adminpb.NewAdminClient(dial(t, srv.addr))

	t.Run("live", func(t *testing.T) {
		// ListPools first, then watch from its sequence number: what happens
		// between the two is replayed, not lost.
		list, err := client.ListPools(ctx, &adminpb.ListPoolsRequest{Services: []string{"web"}})
		if err != nil {
			t.Fatal(err)
		}
		web.Update([]lb.Instance{inst("web", "web-a", 8071), inst("web", "web-b", 8072)})
		stream, err := client.WatchPools(ctx, &adminpb.WatchPoolsRequest{
			Services: []string{"web"}, Replay: true, AfterSeq: list.GetLastEventSeq(),
		})
		if err != nil {
			t.Fatal(err)
		}
		ev := recvUntil(t, stream, adminpb.PoolEvent_KIND_JOINED, "web-b")
		if ev.GetService() != "web" || ev.GetSeq() <= list.GetLastEventSeq() || ev.GetInstance().GetAddress() != "127.0.0.1:8072" {
			t.Errorf("joined event = %v", ev)
		}
		// Live events after the replay: a drain, then a departure.
		if _, err := client.Drain(ctx, &adminpb.DrainRequest{Service: "web", InstanceId: "web-a"}); err != nil {
			t.Fatal(err)
		}
		ev = recvUntil(t, stream, adminpb.PoolEvent_KIND_DRAINING, "web-a")
		if ev.GetInstance().GetState() != adminpb.InstanceState_INSTANCE_STATE_DRAINING {
			t.Errorf("draining event = %v", ev)
		}
		web.Update([]lb.Instance{inst("web", "web-b", 8072)})
		ev = recvUntil(t, stream, adminpb.PoolEvent_KIND_LEFT, "web-a")
		if ev.GetService() != "web" {
			t.Errorf("left event = %v", ev)
		}
		// Filtered out of this stream; the replay below sees it.
		other.Update(nil)
	})

	t.Run("replay", func(t *testing.T) {
		stream, err := client.WatchPools(ctx, &adminpb.WatchPoolsRequest{Replay: true})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for len(got) < 6 {
			ev, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, KindName(ev.GetKind())+" "+ev.GetInstance().GetId())
		}
		// The first poll sees both pools; then the changes of "live".
		want := []string{"joined web-a", "joined other-a", "joined web-b", "draining web-a", "left web-a", "left other-a"}
		if !slices.Equal(got, want) {
			t.Errorf("replayed %q, want %q", got, want)
		}
	})

	t.Run("unknown service", func(t *testing.T) {
		stream, err := client.WatchPools(ctx, &adminpb.WatchPoolsRequest{Services: []string{"nope"}})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("err = %v, want NotFound naming the service", err)
		}
	})
}

// TestRunStopEndsStreams checks that stopping Run ends the watches and
// turns health to NOT_SERVING, so that the admin listener can shut down
// while clients are still watching.
func TestRunStopEndsStreams(t *testing.T) {
	ctx := testContext(t, testTimeout)
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: newBalancer(t, "web", inst("web", "web-a", 8071))}}}, nil)
	conn := dial(t, srv.addr)
	stream, err := adminpb.NewAdminClient(conn).WatchPools(ctx, &adminpb.WatchPoolsRequest{Replay: true})
	if err != nil {
		t.Fatal(err)
	}
	recvUntil(t, stream, adminpb.PoolEvent_KIND_JOINED, "web-a") // the stream is up
	srv.stopRun()
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("watch ended with %v, want Unavailable", err)
		}
		break
	}
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health after Run stopped = %v, %v; want NOT_SERVING", r, err)
	}
}

func TestHealth(t *testing.T) {
	ctx := testContext(t, testTimeout)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	api := newBalancer(t, "api")
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}, {Balancer: api}}}, nil)
	hc := healthpb.NewHealthClient(dial(t, srv.addr))

	check := func(name string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil {
			t.Fatalf("check %q: %v", name, err)
		}
		return r.GetStatus()
	}
	for _, tt := range []struct {
		name string
		want healthpb.HealthCheckResponse_ServingStatus
	}{
		{"", healthpb.HealthCheckResponse_NOT_SERVING},
		{"web", healthpb.HealthCheckResponse_SERVING},
		{"api", healthpb.HealthCheckResponse_NOT_SERVING},
	} {
		t.Run("before/"+tt.name, func(t *testing.T) {
			if got := check(tt.name); got != tt.want {
				t.Errorf("status = %v, want %v", got, tt.want)
			}
		})
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown service: err = %v, want NotFound", err)
	}

	// Watch (as Kubernetes-style probes and grpc clients do) sees the change
	// once api gets its first pool.
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("first watch answer = %v, %v; want NOT_SERVING", r, err)
	}
	api.Update(nil) // an empty pool is still a pool
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch answer = %v, %v; want SERVING", r, err)
	}
	if got := check("api"); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("api status = %v, want SERVING", got)
	}
}

func TestReflection(t *testing.T) {
	ctx := testContext(t, testTimeout)
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: newBalancer(t, "web")}}}, nil)
	rc := reflectionpb.NewServerReflectionClient(dial(t, srv.addr))
	stream, err := rc.ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"meshlb.admin.v1.Admin", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %q, want %s among them", names, want)
		}
	}
	// The admin API's descriptors are there for grpcurl to describe it.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "meshlb.admin.v1.Admin"},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("no file descriptor for meshlb.admin.v1.Admin: %v", resp)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("after CloseSend: %v, want EOF", err)
	}
}
