package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/browsertest"
)

// requestLine is the part of an `agent requests --json` line the test
// reads; pid must decode as a number.
type requestLine struct {
	TraceID  string `json:"trace_id"`
	Method   string `json:"method"`
	Path     string `json:"path"`
	Status   int    `json:"status"`
	Service  string `json:"service"`
	Attempts []struct {
		InstanceID string `json:"instance_id"`
		PID        int    `json:"pid"`
		Outcome    string `json:"outcome"`
	} `json:"attempts"`
}

// TestRequestsNameTheServingPID sends requests through the agent (tracing
// off) to real Tornado processes: one with a known traceparent, one
// without. Both show in `agent requests --json` with their trace ids (the
// client's; the one the agent returned in traceresponse) and the PID of the
// process that answered, as the app itself said; the table names them too,
// and the status page shows the traced request live, its trace id linked to
// --trace-ui (screenshot in the test's artifacts).
func TestRequestsNameTheServingPID(t *testing.T) {
	c := newCluster(t, "hello", 2, "--trace-ui", "http://127.0.0.1:16686")
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"

	send := func(parent string) (pid int, traceResponse string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr+"/?x=1", nil)
		if parent != "" {
			req.Header.Set("traceparent", parent)
		}
		resp, err := c.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := pidRE.FindSubmatch(body)
		if resp.StatusCode != 200 || m == nil {
			t.Fatalf("GET through the agent: %d %q", resp.StatusCode, body)
		}
		pid, _ = strconv.Atoi(string(m[1]))
		return pid, resp.Header.Get("traceresponse")
	}
	tracedPID, tr := send("00-" + traceID + "-00f067aa0ba902b7-01")
	if tr != "" {
		t.Errorf("traceresponse %q for a request that brought its traceparent, tracing off", tr)
	}
	madePID, tr := send("")
	parts := strings.Split(tr, "-")
	if len(parts) != 4 || len(parts[1]) != 32 {
		t.Fatalf("traceresponse %q, want 00-<trace id>-<span id>-<flags>", tr)
	}
	madeID := parts[1]

	out, err := exec.Command(bin(t, "agent"), "requests", "--admin", c.admin, "--json").Output()
	if err != nil {
		t.Fatalf("agent requests --json: %v\n%s", err, out)
	}
	byTrace := map[string]requestLine{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var l requestLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		byTrace[l.TraceID] = l
	}
	for _, want := range []struct {
		trace string
		pid   int
	}{{traceID, tracedPID}, {madeID, madePID}} {
		l, ok := byTrace[want.trace]
		if !ok {
			t.Fatalf("trace %s not in agent requests --json:\n%s", want.trace, out)
		}
		if l.Method != "GET" || l.Path != "/" || l.Status != 200 || l.Service != "hello" || len(l.Attempts) == 0 {
			t.Errorf("request %+v", l)
			continue
		}
		last := l.Attempts[len(l.Attempts)-1]
		if last.PID != want.pid || last.Outcome != "served" {
			t.Errorf("trace %s: served by %+v, but the app said PID %d", want.trace, last, want.pid)
		}
	}

	table, err := exec.Command(bin(t, "agent"), "requests", "--admin", c.admin, "--trace-id", traceID).Output()
	if err != nil {
		t.Fatalf("agent requests: %v\n%s", err, table)
	}
	if !strings.Contains(string(table), traceID) || !strings.Contains(string(table), " "+strconv.Itoa(tracedPID)+" ") ||
		strings.Contains(string(table), madeID) {
		t.Errorf("agent requests --trace-id %s:\n%s", traceID, table)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	br := browsertest.Start(t, ctx)
	page := br.Open(t, ctx, "http://"+c.admin+"/")
	row := `document.querySelector('#requests tbody tr[data-trace="` + traceID + `"]')`
	page.WaitFor(t, ctx, "the traced request with its PID",
		`!!`+row+` && !!`+row+`.querySelector('.try[data-pid="`+strconv.Itoa(tracedPID)+`"]')`)
	if href := page.Eval(t, ctx, row+`.querySelector('a').href`); href != "http://127.0.0.1:16686/trace/"+traceID {
		t.Errorf("trace link %v", href)
	}
	page.Screenshot(t, ctx, "status-page-requests")

	// Live: a new request shows without a reload.
	page.Eval(t, ctx, `window.meshlbNoReload = "still here"; true`)
	_, tr = send("")
	newID := strings.Split(tr, "-")[1]
	page.WaitFor(t, ctx, "a request sent after the page opened",
		`!!document.querySelector('#requests tbody tr[data-trace="`+newID+`"]') && window.meshlbNoReload === "still here"`)
}

// TestRecentBadInputIsRefused: bad --recent and --trace-ui values, and bad
// `agent requests` filters, are refused with an error naming them, before
// anything starts or any call is made.
func TestRecentBadInputIsRefused(t *testing.T) {
	serve := []string{"--listen", "127.0.0.1:0", "--service", "s", "--admin", "off"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"negative recent", append(serve, "--recent", "-1"), "invalid --recent -1"},
		{"huge recent", append(serve, "--recent", "100000000"), "invalid --recent 100000000"},
		{"relative trace ui", append(serve, "--trace-ui", "127.0.0.1:16686"), `"127.0.0.1:16686"`},
		{"script trace ui", append(serve, "--trace-ui", "javascript:alert(1)"), `"javascript:alert(1)"`},
		{"requests bad status", []string{"requests", "--status", "6xx"}, `invalid status "6xx"`},
		{"requests bad trace id", []string{"requests", "--trace-id", "xyz"}, `invalid trace id "xyz"`},
		{"requests bad slow", []string{"requests", "--slow", "-1s"}, "invalid --slow -1s"},
		{"requests bad admin", []string{"requests", "--admin", "nohost"}, `invalid --admin "nohost"`},
		{"requests argument", []string{"requests", "hello"}, `unexpected argument "hello"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			if code := run(tc.args, io.Discard, &out); code != exitBadInput {
				t.Fatalf("exit %d, want %d; output:\n%s", code, exitBadInput, out.String())
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("error output %q does not name %q", out.String(), tc.want)
			}
		})
	}
	// No agent there: a failure that says where it looked.
	var out strings.Builder
	if code := run([]string{"requests", "--admin", "127.0.0.1:1", "--timeout", "2s"}, io.Discard, &out); code != exitFailure ||
		!strings.Contains(out.String(), "127.0.0.1:1") {
		t.Errorf("exit %d, output %q", code, out.String())
	}
}
