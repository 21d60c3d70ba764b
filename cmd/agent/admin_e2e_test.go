package main

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
)

// TestStatusListsInstancesAndDrainStopsTraffic runs the demo's topology:
// `agent status` shows the five instances with their PIDs, and draining one
// through the gRPC admin API stops its traffic at once without failing a
// request.
func TestStatusListsInstancesAndDrainStopsTraffic(t *testing.T) {
	c := newCluster(t, "hello", 5)
	pids := c.passingPIDs()

	out, err := exec.Command(bin(t, "agent"), "status", "--admin", c.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("agent status: %v\n%s", err, out)
	}
	for pid := range pids {
		if !strings.Contains(string(out), strconv.Itoa(pid)) {
			t.Errorf("agent status does not list pid %d:\n%s", pid, out)
		}
	}

	entries, _, err := c.capi.Health().Service("hello", "", true, nil)
	if err != nil || len(entries) != 5 {
		t.Fatalf("consul: %d entries, %v", len(entries), err)
	}
	victimID := entries[0].Service.ID
	victimPID, _ := strconv.Atoi(entries[0].Service.Meta["pid"])

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := c.runLoad(ctx, 4, 0)
	time.Sleep(300 * time.Millisecond)

	conn, err := grpc.NewClient(c.admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := adminpb.NewAdminClient(conn).Drain(ctx, &adminpb.DrainRequest{Service: "hello", InstanceId: victimID}); err != nil {
		t.Fatalf("Drain %s: %v", victimID, err)
	}
	// Requests picked before the drain may still be in flight; from the
	// next request on, none goes to the drained instance.
	for i := range 50 {
		code, pid, err := c.get("/")
		if err != nil || code != 200 {
			t.Fatalf("request %d after drain: %d %v", i, code, err)
		}
		if pid == victimPID {
			t.Fatalf("request %d after Drain was served by the drained instance %d", i, pid)
		}
	}
	cancel()
	l.wait()
	t.Logf("MEASURE drain through the admin API under load: %d GETs, %d failed", l.gets.Load(), l.getFails.Load())
	if l.getFails.Load() != 0 {
		t.Errorf("%d requests failed around the drain: %v", l.getFails.Load(), l.firstErrs)
	}
	out, _ = exec.Command(bin(t, "agent"), "status", "--admin", c.admin).CombinedOutput()
	if !strings.Contains(string(out), "draining") {
		t.Errorf("agent status does not show the drained instance:\n%s", out)
	}
}
