package main

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshlb/meshlb/internal/testing/consultest"
)

// TestGRPCHealthCheck attaches to a real gRPC server (in this process)
// and follows its grpc.health.v1 status into Consul.
func TestGRPCHealthCheck(t *testing.T) {
	srv := consultest.New(t)
	c := srv.Client()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	hs.SetServingStatus("greeter", healthpb.HealthCheckResponse_SERVING)
	port := ln.Addr().(*net.TCPAddr).Port

	start(t, srv.Env(), registrarBin, "--service", "greeter", "--port", strconv.Itoa(port),
		"--check", "grpc", "--check-grpc-service", "greeter", "--check-interval", "200ms")
	waitFor(t, 15*time.Second, "instance passing", passing(t, c, "greeter"))
	if pid := lookup(t, c, "greeter")[0].entry.Service.Meta["pid"]; pid != strconv.Itoa(os.Getpid()) {
		t.Errorf("meta pid %s, want this process %d", pid, os.Getpid())
	}
	hs.SetServingStatus("greeter", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, 5*time.Second, "instance critical", func() bool {
		in := lookup(t, c, "greeter")
		return len(in) == 1 && in[0].status == api.HealthCritical
	})
	hs.SetServingStatus("greeter", healthpb.HealthCheckResponse_SERVING)
	waitFor(t, 5*time.Second, "instance passing again", passing(t, c, "greeter"))
}
