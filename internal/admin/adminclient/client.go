// Package adminclient holds the agent's subcommands that talk to a running
// agent through its admin API: `agent status`, `agent requests` and `agent
// cache purge`. Each parses its own flags, calls the API over gRPC and
// prints for a person (a table) or a script (--json); each returns the exit
// code. The server side is package admin; this package must not import the
// agent (cmd/agent dispatches to it with one line per subcommand).
package adminclient

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// The exit codes, the agent's own: 2 for bad input (a flag, an address), 1
// for a call that failed.
const (
	exitOK       = 0
	exitFailure  = 1
	exitBadInput = 2
)

// command is what every subcommand has: a flag set with --admin and
// --timeout, and the usage printed for -h before the flags.
type command struct {
	name    string // "agent status", in front of its messages
	fs      *flag.FlagSet
	addr    *string
	timeout *time.Duration
}

func newCommand(name, usage string, stderr io.Writer) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return &command{name: name, fs: fs,
		addr:    fs.String("admin", "127.0.0.1:9070", "the agent's admin listener `ADDR`"),
		timeout: fs.Duration("timeout", 5*time.Second, "how long to wait for the agent's answer"),
	}
}

// parse parses args; when the command ends there (-h, a bad flag: the
// flag package has said why) it returns false and the exit code.
func (c *command) parse(args []string) (bool, int) {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, exitOK
		}
		return false, exitBadInput
	}
	return true, 0
}

// dial makes the client of the admin API at --admin; it says why it
// cannot to stderr.
func (c *command) dial(stderr io.Writer) (*grpc.ClientConn, bool) {
	conn, err := grpc.NewClient(*c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid --admin %q: %v\n", c.name, *c.addr, err)
		return nil, false
	}
	return conn, true
}

// interruptible runs a subcommand with a context that ends on SIGINT or
// SIGTERM (how --watch ends).
func interruptible(run func(context.Context, []string, io.Writer, io.Writer) int, args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, stdout, stderr)
}

// checkAdminAddr accepts HOST:PORT with a numeric port.
func checkAdminAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want HOST:PORT, e.g. 127.0.0.1:9070: %w", err)
	}
	if host == "" {
		return errors.New("want HOST:PORT with a host, e.g. 127.0.0.1:9070")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 1 to 65535", port)
	}
	return nil
}

// callError explains a failed call to the admin API at addr in words a
// person can act on.
func callError(addr string, timeout time.Duration, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("cannot reach the agent's admin API at %s (is the agent running with --admin %s?): %s",
			addr, addr, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("no answer from the agent's admin API at %s within %s", addr, timeout)
	case codes.Unimplemented:
		return fmt.Errorf("%s does not serve the meshlb admin API: %s", addr, st.Message())
	default:
		return fmt.Errorf("admin API at %s: %s", addr, st.Message())
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
