package adminclient

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshlb/meshlb/internal/admin"
	"github.com/meshlb/meshlb/internal/admin/adminpb"
)

const statusUsage = `Usage: agent status [--admin ADDR] [--json] [--watch] [SERVICE...]

Shows the pools of a running agent (all services, or the ones named), read
from its admin API: one line per instance with its state (serving, ejected,
draining), requests in flight, request and error counts, latency EWMA and
weight. --watch then prints every change as it happens; --json prints the
pools as JSON (and, with --watch, one JSON event per line after them).

Flags:
`

// Status is `agent status`: it prints the pools of the agent whose admin
// API listens on --admin, and with --watch follows their changes until
// interrupted. It returns the exit code.
func Status(args []string, stdout, stderr io.Writer) int {
	return interruptible(statusMain, args, stdout, stderr)
}

// statusMain is Status with the context that ends --watch.
func statusMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("agent status", statusUsage, stderr)
	fs, addr, timeout := cmd.fs, cmd.addr, cmd.timeout
	asJSON := fs.Bool("json", false, "print JSON (for scripts) instead of a table")
	watch := fs.Bool("watch", false, "after the pools, print their changes as they happen, until interrupted")
	if ok, code := cmd.parse(args); !ok {
		return code
	}
	if err := checkAdminAddr(*addr); err != nil {
		fmt.Fprintf(stderr, "agent status: invalid --admin %q: %v\n", *addr, err)
		return exitBadInput
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "agent status: invalid --timeout %s: must be positive\n", *timeout)
		return exitBadInput
	}

	conn, ok := cmd.dial(stderr)
	if !ok {
		return exitBadInput
	}
	defer conn.Close()
	client := adminpb.NewAdminClient(conn)

	lctx, cancel := context.WithTimeout(ctx, *timeout)
	resp, err := client.ListPools(lctx, &adminpb.ListPoolsRequest{Services: fs.Args()})
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "agent status: %v\n", callError(*addr, *timeout, err))
		return exitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		if !*watch {
			enc.SetIndent("", "  ")
		}
		if err := enc.Encode(admin.ViewPools(resp)); err != nil {
			fmt.Fprintf(stderr, "agent status: %v\n", err)
			return exitFailure
		}
	} else if err := printPools(stdout, resp); err != nil {
		fmt.Fprintf(stderr, "agent status: %v\n", err)
		return exitFailure
	}
	if !*watch {
		return exitOK
	}

	// Continue from the snapshot just printed: the agent replays what
	// changed since, so nothing falls between the table and the watch.
	stream, err := client.WatchPools(ctx, &adminpb.WatchPoolsRequest{
		Services: fs.Args(), Replay: true, AfterSeq: resp.GetLastEventSeq(),
	})
	if err == nil && !*asJSON {
		fmt.Fprintln(stderr, "watching for changes (Ctrl-C to stop)")
	}
	for err == nil {
		var ev *adminpb.PoolEvent
		if ev, err = stream.Recv(); err != nil {
			break
		}
		if *asJSON {
			err = json.NewEncoder(stdout).Encode(admin.ViewEvent(ev))
		} else {
			err = printEvent(stdout, ev)
		}
	}
	if ctx.Err() != nil {
		return exitOK // interrupted: the normal end of --watch
	}
	fmt.Fprintf(stderr, "agent status: watch ended: %v\n", callError(*addr, *timeout, err))
	return exitFailure
}

// printPools writes the pools as a table, then a note for every pool whose
// discovery is failing.
func printPools(w io.Writer, resp *adminpb.ListPoolsResponse) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tADDRESS\tPID\tHOST\tSTATE\tINFLIGHT\tREQS\tERRS\tEWMA\tWEIGHT")
	for _, p := range resp.GetPools() {
		switch {
		case !p.GetHasPool():
			fmt.Fprintf(tw, "%s\t(no pool yet)\t\t\t\t\t\t\t\t\t\n", p.GetService())
		case len(p.GetInstances()) == 0:
			fmt.Fprintf(tw, "%s\t(no instances)\t\t\t\t\t\t\t\t\t\n", p.GetService())
		}
		for _, in := range p.GetInstances() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\n",
				p.GetService(), in.GetId(), dash(in.GetAddress()), dash(in.GetPid()), dash(in.GetHost()),
				admin.StateName(in.GetState()), in.GetInFlight(), in.GetRequests(), in.GetFailures(),
				formatEWMA(in), in.GetWeight())
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// The padding of empty trailing cells is noise.
	for line := range strings.Lines(buf.String()) {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	if err := printServing(w, resp); err != nil {
		return err
	}
	for _, p := range resp.GetPools() {
		wi := p.GetWatch()
		if wi.GetLastError() == "" {
			continue
		}
		last := "never"
		if wi.GetLastSuccess() != nil {
			last = wi.GetLastSuccess().AsTime().Local().Format(time.DateTime)
		}
		if _, err := fmt.Fprintf(w, "\n%s: discovery failing (%d errors, last success %s): %s\n",
			p.GetService(), wi.GetErrors(), last, wi.GetLastError()); err != nil {
			return err
		}
	}
	return nil
}

// printServing writes, for every pool with backups or failover datacenters
// (or that switched tiers), which tier serves, since when and why.
func printServing(w io.Writer, resp *adminpb.ListPoolsResponse) error {
	for _, p := range resp.GetPools() {
		sv := p.GetServing()
		if sv == nil || (len(p.GetTiers()) < 2 && sv.GetSwitches() == 0 && !sv.GetRemote() && sv.GetTier() != "backup") {
			continue
		}
		var tiers []string
		for _, t := range p.GetTiers() {
			name := "primary"
			if t.GetBackup() {
				name = "backup"
			}
			tiers = append(tiers, fmt.Sprintf("%s %s (%d)", cmp.Or(t.GetDatacenter(), "local"), name, t.GetInstances()))
		}
		since := "-"
		if sv.GetSince() != nil {
			since = sv.GetSince().AsTime().Local().Format(time.DateTime)
		}
		line := fmt.Sprintf("\n%s: serving %s %s since %s, %d switches; tiers: %s\n", p.GetService(),
			cmp.Or(sv.GetDatacenter(), "local"), sv.GetTier(), since, sv.GetSwitches(), strings.Join(tiers, ", "))
		if sv.GetReason() != "" {
			line += fmt.Sprintf("%s: last switch: %s\n", p.GetService(), sv.GetReason())
		}
		if _, err := io.WriteString(w, line); err != nil {
			return err
		}
	}
	return nil
}

// printEvent writes one change as a line.
func printEvent(w io.Writer, ev *adminpb.PoolEvent) error {
	in := ev.GetInstance()
	_, err := fmt.Fprintf(w, "%s  %-9s  %s  %s  %s  pid=%s host=%s state=%s\n",
		ev.GetTime().AsTime().Local().Format("15:04:05.000"), admin.KindName(ev.GetKind()),
		ev.GetService(), in.GetId(), dash(in.GetAddress()), dash(in.GetPid()), dash(in.GetHost()),
		admin.StateName(in.GetState()))
	return err
}

func formatEWMA(in *adminpb.Instance) string {
	d := in.GetEwmaLatency().AsDuration()
	switch {
	case in.GetEwmaLatency() == nil || d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
