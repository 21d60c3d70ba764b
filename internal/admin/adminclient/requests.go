package adminclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/internal/cli"
	"github.com/meshlb/meshlb/internal/recent"
)

const requestsUsage = `Usage: agent requests [--admin ADDR] [--failed] [--slow DURATION] [--json] [flags]

Shows the recent requests of a running agent, newest first, read from its
admin API: when each arrived, method, path, status, latency, the service,
the instance and the PID of the process that served it (or failed it last),
every attempt, and the trace id (the client's traceparent's, or one the
agent made and returned in the traceresponse header). The agent keeps the
last --recent N requests (default 1000) and keeps failed and slow ones
longer.

--json prints one JSON object per line: trace_id (32 lowercase hex digits),
attempts[] with instance_id, address, host, pid (a number) and outcome, and
the rest of the record.

Examples:
  agent requests --failed
  agent requests --slow 200ms --service hello
  agent requests --trace-id 4bf92f3577b34da6a3ce929d0e0e4736 --json

Flags:
`

// Requests is `agent requests`: it prints the recent requests of the
// agent whose admin API listens on --admin. It returns the exit code.
func Requests(args []string, stdout, stderr io.Writer) int {
	return interruptible(requestsMain, args, stdout, stderr)
}

func requestsMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("agent requests", requestsUsage, stderr)
	fs, addr, timeout := cmd.fs, cmd.addr, cmd.timeout
	var statuses, services cli.StringList
	asJSON := fs.Bool("json", false, "print one JSON object per request and line (for scripts) instead of a table")
	failed := fs.Bool("failed", false, "only failed requests (answered 5xx)")
	slow := fs.Duration("slow", 0, "only requests that took at least `DURATION`, e.g. 200ms")
	fs.Var(&statuses, "status", "only requests answered with `STATUS`: a code (502) or a class (5xx); repeatable")
	fs.Var(&services, "service", "only requests routed to service `NAME`; repeatable")
	traceID := fs.String("trace-id", "", "only the request of trace `ID` (32 hex digits)")
	limit := fs.Uint("limit", 50, "print at most `N` requests; 0 for all the agent keeps")
	if ok, code := cmd.parse(args); !ok {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "agent requests: "+format+"\n", a...)
		return exitBadInput
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q (filters are flags: --service NAME, --status 5xx ...)", fs.Arg(0))
	}
	if err := checkAdminAddr(*addr); err != nil {
		return bad("invalid --admin %q: %v", *addr, err)
	}
	if *timeout <= 0 {
		return bad("invalid --timeout %s: must be positive", *timeout)
	}
	if *slow < 0 {
		return bad("invalid --slow %s: must not be negative", *slow)
	}
	for _, s := range statuses {
		if _, err := recent.ParseStatus(s); err != nil {
			return bad("--status: %v", err)
		}
	}
	if *traceID != "" {
		if _, err := recent.ParseTraceID(*traceID); err != nil {
			return bad("--trace-id: %v", err)
		}
	}
	if *limit > 1<<31 {
		return bad("invalid --limit %d: too large", *limit)
	}

	conn, ok := cmd.dial(stderr)
	if !ok {
		return exitBadInput
	}
	defer conn.Close()
	req := &adminpb.ListRequestsRequest{Failed: *failed, Status: statuses, Services: services,
		TraceId: *traceID, Limit: uint32(*limit)}
	if *slow > 0 {
		req.MinLatency = durationpb.New(*slow)
	}
	lctx, cancel := context.WithTimeout(ctx, *timeout)
	resp, err := adminpb.NewAdminClient(conn).ListRequests(lctx, req)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "agent requests: %v\n", callError(*addr, *timeout, err))
		return exitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, r := range resp.GetRequests() {
			if err := enc.Encode(admin.ViewRequest(r, "")); err != nil {
				fmt.Fprintf(stderr, "agent requests: %v\n", err)
				return exitFailure
			}
		}
		return exitOK
	}
	if err := printRequests(stdout, resp); err != nil {
		fmt.Fprintf(stderr, "agent requests: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// printRequests writes the requests as a table: the instance and PID are
// those of the last attempt (the one that served, or failed last); TRIES
// lists every attempt's outcome when there was more than one or it failed.
func printRequests(w io.Writer, resp *adminpb.ListRequestsResponse) error {
	if len(resp.GetRequests()) == 0 {
		_, err := fmt.Fprintf(w, "no matching requests (%d recorded since the agent started)\n", resp.GetRecorded())
		return err
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tMETHOD\tPATH\tSTATUS\tLATENCY\tSERVICE\tINSTANCE\tPID\tHOST\tTRIES\tTRACE_ID")
	for _, r := range resp.GetRequests() {
		inst, pid, host := "-", "-", "-"
		var tries []string
		for _, a := range r.GetAttempts() {
			inst, host = a.GetInstanceId(), dash(a.GetHost())
			pid = "-"
			if a.GetPid() != 0 {
				pid = fmt.Sprint(a.GetPid())
			}
			tries = append(tries, a.GetOutcome())
		}
		triesCol := fmt.Sprint(len(tries))
		if len(tries) > 1 || len(tries) == 1 && tries[0] != "served" {
			triesCol += " (" + strings.Join(tries, ",") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			r.GetTime().AsTime().Local().Format("15:04:05.000"), r.GetMethod(), r.GetPath(), r.GetStatus(),
			formatLatency(r.GetLatency().AsDuration()), dash(r.GetService()), inst, pid, host, triesCol, r.GetTraceId())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d shown; the agent keeps the last %d requests plus up to %d failed and %d slow ones (%d recorded since it started)\n",
		len(resp.GetRequests()), resp.GetSize(), resp.GetKept(), resp.GetKept(), resp.GetRecorded())
	return err
}

func formatLatency(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
