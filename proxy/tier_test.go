package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/lb"
)

// TestRetriesGoOnIntoBackupsAndFailoverTiers: every primary is dead and
// there are more of them than max_attempts; a GET and a POST (dial errors
// only: never sent) still reach the backup, and with the backups dead too
// the failover datacenter, within the same request. Tries do not carry over
// from one tier to the next.
func TestRetriesGoOnIntoBackupsAndFailoverTiers(t *testing.T) {
	ctx := testCtx(t)
	echo := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}
	var primaries, backups []lb.Instance
	for i := range 4 {
		primaries = append(primaries, instanceAt(fmt.Sprintf("p%d", i), closedAddr(t)))
	}
	backup := newUpstream(t, "b0", echo)
	remote := newUpstream(t, "r0", echo)
	bal, err := lb.NewBalancer("web", lb.Config{MaxFails: -1})
	if err != nil {
		t.Fatal(err)
	}
	bal.UpdateTiers([]lb.Tier{
		{Datacenter: "dc1", Instances: primaries},
		{Datacenter: "dc1", Backup: true, Instances: append(backups, backup.instance())},
		{Datacenter: "dc2", Remote: true, Instances: []lb.Instance{remote.instance()}},
	})
	f := newFrontend(t, Config{MaxAttempts: 2}, Route{Balancer: bal})
	for i, method := range []string{"GET", "POST", "GET", "POST"} {
		want := fmt.Sprintf("payload-%d", i)
		var body io.Reader
		if method == "POST" {
			body = strings.NewReader(want)
		} else {
			want = ""
		}
		res, got := f.do(t, ctx, method, "/", body, nil)
		if res.StatusCode != http.StatusOK || got != want {
			t.Fatalf("%s %d: status %d body %q, want 200 %q", method, i, res.StatusCode, got, want)
		}
	}
	if backup.hits.Load() != 4 || remote.hits.Load() != 0 {
		t.Fatalf("backup got %d, dc2 %d requests; want 4 and 0", backup.hits.Load(), remote.hits.Load())
	}
	failures := uint64(0)
	for _, in := range bal.Pool().Instances[:4] {
		failures += in.Stats.Failures.Load()
	}
	if failures != 8 {
		t.Errorf("the primaries failed %d tries, want 8: two per request (max_attempts 2), then the backup", failures)
	}

	// The backup dies as well: dc2 serves. Its idle connections close as
	// the agent closes them when Consul reports the instance failed
	// (InstancesLeft): otherwise the POST could take the kept-alive one
	// before the transport saw it closed (under load it did: broken pipe
	// after the head went, so not resent, 502), a race this test is not
	// about.
	backup.srv.Close()
	f.p.InstancesLeft([]*lb.Instance{bal.Pool().Instances[4]})
	for i, method := range []string{"GET", "POST"} {
		res, _ := f.do(t, ctx, method, "/", strings.NewReader("x"), nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s %d with every dc1 instance dead: status %d, want 200 from dc2", method, i, res.StatusCode)
		}
	}
	if remote.hits.Load() != 2 {
		t.Errorf("dc2 got %d requests, want 2", remote.hits.Load())
	}
}

// TestPostSentIsNotRetriedIntoBackup: a POST that reached a primary which
// then died is never sent to the backup.
func TestPostSentIsNotRetriedIntoBackup(t *testing.T) {
	ctx := testCtx(t)
	dies := newUpstream(t, "dies", resetAfterRead(t))
	backup := nameUpstream(t, "b0")
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	bal.UpdateTiers([]lb.Tier{
		{Datacenter: "dc1", Instances: []lb.Instance{dies.instance()}},
		{Datacenter: "dc1", Backup: true, Instances: []lb.Instance{backup.instance()}},
	})
	f := newFrontend(t, Config{}, Route{Balancer: bal})
	res, _ := f.do(t, ctx, "POST", "/", strings.NewReader("order"), nil)
	if res.StatusCode != http.StatusBadGateway || backup.hits.Load() != 0 || dies.hits.Load() != 1 {
		t.Fatalf("POST: status %d, primary %d, backup %d requests; want 502, 1, 0",
			res.StatusCode, dies.hits.Load(), backup.hits.Load())
	}
	// A GET is retried on the backup.
	res, body := f.do(t, ctx, "GET", "/", nil, nil)
	if res.StatusCode != http.StatusOK || body != "b0" {
		t.Fatalf("GET: status %d body %q, want 200 from b0", res.StatusCode, body)
	}
}

// TestSpanNamesTheInstanceDatacenter: an attempt span carries the
// instance's datacenter, and marks a backup.
func TestSpanNamesTheInstanceDatacenter(t *testing.T) {
	ctx := testCtx(t)
	sr := withRecorder(t)
	backup := nameUpstream(t, "b0")
	remote := nameUpstream(t, "r0")
	bal, err := lb.NewBalancer("web", lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	bal.UpdateTiers([]lb.Tier{
		{Datacenter: "dc1", Instances: []lb.Instance{instanceAt("dead", closedAddr(t))}},
		{Datacenter: "dc1", Backup: true, Instances: []lb.Instance{backup.instance()}},
		{Datacenter: "dc2", Remote: true, Instances: []lb.Instance{remote.instance()}},
	})
	f := newFrontend(t, Config{Tracing: true}, Route{Balancer: bal})
	if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "b0" {
		t.Fatalf("GET: %d %q, want the backup", res.StatusCode, body)
	}
	backup.srv.Close()
	if res, body := f.do(t, ctx, "GET", "/", nil, nil); res.StatusCode != 200 || body != "r0" {
		t.Fatalf("GET: %d %q, want dc2", res.StatusCode, body)
	}
	got := map[string]string{}
	for _, s := range waitServerSpans(t, ctx, sr, 2) {
		if s.SpanKind() != trace.SpanKindClient {
			continue
		}
		a := attrs(s)
		got[a["service.instance.id"].AsString()] = a["meshlb.instance.datacenter"].AsString() + "/" + a["meshlb.instance.tier"].AsString()
	}
	if got["dead"] != "dc1/" || got["b0"] != "dc1/backup" || got["r0"] != "dc2/" {
		t.Errorf("attempt spans: instance → datacenter/tier %v; want dead dc1/, b0 dc1/backup, r0 dc2/", got)
	}
}
