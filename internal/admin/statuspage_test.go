package admin

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/browsertest"
	"github.com/meshlb/meshlb/lb"
)

// TestStatusPageLive opens the status page in headless Chromium and checks
// that it follows the pool without a reload: a newly registered instance,
// its "joined" change, a failed request's trace id and a drain all show up
// in the live DOM.
func TestStatusPageLive(t *testing.T) {
	ctx := testContext(t, 2*time.Minute)
	web := newBalancer(t, "web", inst("web", "web-a", 8071))
	srv := startServer(t, ctx, Options{Services: []Service{{Balancer: web}}}, nil)

	br := startChromium(t, ctx)
	page := br.open(t, ctx, "http://"+srv.addr+"/")
	page.waitFor(t, ctx, "the first pool", `!!document.querySelector('[data-service="web"] tr[data-instance="web-a"]')`)
	page.eval(t, ctx, `window.meshlbNoReload = "still here"; true`)

	web.Update([]lb.Instance{inst("web", "web-a", 8071), inst("web", "web-b", 8072)})
	page.waitFor(t, ctx, "the new instance", `!!document.querySelector('[data-service="web"] tr[data-instance="web-b"]')`)
	if got := page.eval(t, ctx, `window.meshlbNoReload || "reloaded"`); got != "still here" {
		t.Fatalf("the page reloaded (marker = %v); it must update in place", got)
	}
	page.waitFor(t, ctx, "the joined change",
		`[...document.querySelectorAll('#events tbody tr')].some(r => /joined/.test(r.textContent) && /web-b/.test(r.textContent))`)

	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	srv.RecordFailure("web", "web-b", trace, 502, time.Now())
	page.waitFor(t, ctx, "the failed request's trace id",
		`document.querySelector('#failures tbody').textContent.includes(`+strconv.Quote(trace)+`)`)

	if _, _, err := srv.setDraining("web", "web-a", true); err != nil {
		t.Fatal(err)
	}
	page.waitFor(t, ctx, "the drained state",
		`document.querySelector('tr[data-instance="web-a"]').textContent.includes("draining")`)
	if got := page.eval(t, ctx, `document.getElementById("conn").textContent`); got != "live" {
		t.Errorf("connection indicator = %v, want live", got)
	}

	// A backup tier: with web-a draining, the backup serves, and the page
	// says so.
	web.UpdateTiers([]lb.Tier{
		{Datacenter: "dc1", Instances: []lb.Instance{inst("web", "web-a", 8071)}},
		{Datacenter: "dc1", Backup: true, Instances: []lb.Instance{inst("web", "web-c", 8073)}},
	})
	page.waitFor(t, ctx, "the serving backup tier",
		`!!document.querySelector('[data-service="web"] [data-serving="dc1 backup"]') &&
		 document.querySelector('tr[data-instance="web-c"]').textContent.includes("backup")`)
}

// The browser itself is internal/testing/browsertest; these adapters keep the
// admin tests' short names.
type browser struct{ *browsertest.Browser }

type page struct{ *browsertest.Page }

func startChromium(t *testing.T, ctx context.Context) *browser {
	return &browser{browsertest.Start(t, ctx)}
}

func (b *browser) open(t *testing.T, ctx context.Context, url string) *page {
	return &page{b.Open(t, ctx, url)}
}

func (p *page) eval(t *testing.T, ctx context.Context, expr string) any { return p.Eval(t, ctx, expr) }

func (p *page) waitFor(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	p.WaitFor(t, ctx, what, cond)
}
