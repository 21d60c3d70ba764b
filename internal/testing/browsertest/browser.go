// Package browsertest drives a headless Chromium over the DevTools protocol
// for tests of the agent's status page: open a page, evaluate JavaScript in
// it, wait for a condition, save a screenshot. Tests only.
package browsertest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// Browser is a headless Chromium driven over the DevTools protocol.
type Browser struct {
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

// Start starts Debian's chromium and connects to it. Its absence
// fails the test: the status page test is part of `make test`, which
// installs it.
func Start(t *testing.T, ctx context.Context) *Browser {
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
	b := &Browser{}
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
func (b *Browser) send(ctx context.Context, session, method string, params, out any) error {
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

// Page is a browser tab.
type Page struct {
	b       *Browser
	session string
}

// Open opens url in a new tab.
func (b *Browser) Open(t *testing.T, ctx context.Context, url string) *Page {
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
	return &Page{b: b, session: att.SessionID}
}

// Eval evaluates a JavaScript expression in the page and returns its value.
func (p *Page) Eval(t *testing.T, ctx context.Context, expr string) any {
	t.Helper()
	v, err := p.TryEval(ctx, expr)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TryEval is Eval returning its error.
func (p *Page) TryEval(ctx context.Context, expr string) (any, error) {
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

// WaitFor polls a JavaScript condition until it is true, for at most 30
// seconds. Errors (the page still loading) count as false.
func (p *Page) WaitFor(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		v, err := p.TryEval(wctx, cond)
		if err == nil && v == true {
			return
		}
		lastErr = err
		select {
		case <-wctx.Done():
			body, _ := p.TryEval(ctx, `document.body ? document.body.innerText : "(no body)"`)
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

// Screenshot saves a PNG of the page's viewport in the test's artifact
// directory (t.ArtifactDir: kept with go test -artifacts) and returns its
// path.
func (p *Page) Screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	var shot struct {
		Data string `json:"data"`
	}
	if err := p.b.send(ctx, p.session, "Emulation.setDeviceMetricsOverride",
		map[string]any{"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.b.send(ctx, p.session, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot); err != nil {
		t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot is not a PNG (%v)", err)
	}
	path := t.ArtifactDir() + "/" + name + ".png"
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	return path
}
