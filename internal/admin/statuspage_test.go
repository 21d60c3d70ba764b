package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

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

// browser is a headless Chromium driven over the DevTools protocol.
type browser struct {
	ws     *websocket.Conn
	nextID int
}

// chromiumFlags start a quiet, throwaway, headless browser; the DevTools
// port is picked by Chromium and read from its stderr.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio",
	"--remote-debugging-port=0", "--remote-allow-origins=http://127.0.0.1",
}

var devtoolsRE = regexp.MustCompile(`DevTools listening on (ws://\S+)\r?\n`)

// startChromium starts Debian's chromium and connects to it. Its absence
// fails the test: the status page test is part of `make test`, which
// installs it.
func startChromium(t *testing.T, ctx context.Context) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (%v): run `apt-get install chromium` (make test installs it)", err)
	}
	profile := t.TempDir() // removed after the browser has exited (cleanups run last-in first-out)
	cmd := exec.Command(path, append(chromiumFlags, "--user-data-dir="+profile, "about:blank")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // so that its helpers can be stopped with it
	stderr := &watchWriter{found: make(chan string, 1)}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	exited := make(chan struct{}) // closed when cmd.Wait returns, with waitErr set
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	pgid := cmd.Process.Pid
	b := &browser{}
	t.Cleanup(func() {
		if b.ws != nil {
			// Ask politely, then make sure.
			_ = b.send(context.Background(), "", "Browser.close", nil, nil)
			b.ws.Close()
		}
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // helpers left in its process group
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("chromium (pid %d) did not exit", pgid)
		}
	})

	var wsURL string
	select {
	case wsURL = <-stderr.found:
	case <-exited:
		t.Fatalf("chromium exited before opening DevTools (%v):\n%s", waitErr, stderr.tail())
	case <-ctx.Done():
		t.Fatalf("chromium did not open DevTools in time:\n%s", stderr.tail())
	}
	cfg, err := websocket.NewConfig(wsURL, "http://127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("connect to chromium DevTools at %s: %v", wsURL, err)
	}
	ws.MaxPayloadBytes = 64 << 20
	b.ws = ws
	return b
}

// send runs one DevTools command (in session, if not empty) and decodes its
// result into out. Events that arrive meanwhile are skipped.
func (b *browser) send(ctx context.Context, session, method string, params, out any) error {
	b.nextID++
	id := b.nextID
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	if err := b.ws.SetDeadline(deadline); err != nil {
		return err
	}
	if err := websocket.JSON.Send(b.ws, msg); err != nil {
		return fmt.Errorf("send %s: %w", method, err)
	}
	for {
		var reply struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := websocket.JSON.Receive(b.ws, &reply); err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if reply.ID != id {
			continue // an event, or a reply to an abandoned command
		}
		if reply.Error != nil {
			return fmt.Errorf("%s: devtools error %d: %s", method, reply.Error.Code, reply.Error.Message)
		}
		if out == nil {
			return nil
		}
		return json.Unmarshal(reply.Result, out)
	}
}

// page is a browser tab.
type page struct {
	b       *browser
	session string
}

// open opens url in a new tab.
func (b *browser) open(t *testing.T, ctx context.Context, url string) *page {
	t.Helper()
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.send(ctx, "", "Target.createTarget", map[string]any{"url": url}, &target); err != nil {
		t.Fatal(err)
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.send(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		t.Fatal(err)
	}
	return &page{b: b, session: att.SessionID}
}

// eval evaluates a JavaScript expression in the page and returns its value.
func (p *page) eval(t *testing.T, ctx context.Context, expr string) any {
	t.Helper()
	v, err := p.tryEval(ctx, expr)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (p *page) tryEval(ctx context.Context, expr string) (any, error) {
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := p.b.send(ctx, p.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res); err != nil {
		return nil, err
	}
	if e := res.ExceptionDetails; e != nil {
		return nil, fmt.Errorf("evaluate %s: %s %s", expr, e.Text, e.Exception.Description)
	}
	return res.Result.Value, nil
}

// waitFor polls a JavaScript condition until it is true, for at most 30
// seconds. Errors (the page still loading) count as false.
func (p *page) waitFor(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		v, err := p.tryEval(wctx, cond)
		if err == nil && v == true {
			return
		}
		lastErr = err
		select {
		case <-wctx.Done():
			body, _ := p.tryEval(ctx, `document.body ? document.body.innerText : "(no body)"`)
			t.Fatalf("the page never showed %s (%s); last error %v; page text:\n%v", what, cond, lastErr, body)
		case <-tick.C:
		}
	}
}

// watchWriter collects Chromium's stderr and reports the DevTools URL.
type watchWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	found chan string
	sent  bool
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() < 1<<20 {
		w.buf.Write(p)
	}
	if !w.sent {
		if m := devtoolsRE.FindSubmatch(w.buf.Bytes()); m != nil {
			w.sent = true
			w.found <- string(m[1])
		}
	}
	return len(p), nil
}

func (w *watchWriter) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf.Bytes()
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
