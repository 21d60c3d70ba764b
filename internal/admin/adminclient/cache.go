package adminclient

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc/status"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
)

const cacheUsage = `Usage: agent cache purge [--prefix] [--admin ADDR] URL

Drops stored responses from every HTTP cache of a running agent, through its
admin API: the URL's host (port ignored) and path with query, every Vary
variant of it; with --prefix every stored URL of that host whose path starts
with the URL's path (nginx's proxy_cache_purge, with a wildcard).

Examples:
  agent cache purge http://api.example.com/v1/items?page=2
  agent cache purge --prefix http://api.example.com/static/

Flags:
`

// Cache is `agent cache purge`: it drops stored responses from the HTTP
// caches of the agent whose admin API listens on --admin. It returns the
// exit code.
func Cache(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "purge" {
		fmt.Fprint(stderr, "agent cache: want a subcommand: purge\n\n"+cacheUsage)
		return exitBadInput
	}
	cmd := newCommand("agent cache purge", cacheUsage, stderr)
	fs, addr, timeout := cmd.fs, cmd.addr, cmd.timeout
	prefix := fs.Bool("prefix", false, "drop every stored URL of the host whose path starts with the URL's path")
	if ok, code := cmd.parse(args[1:]); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "agent cache purge: want one URL, got %d arguments\n", fs.NArg())
		return exitBadInput
	}
	if err := checkAdminAddr(*addr); err != nil {
		fmt.Fprintf(stderr, "agent cache purge: invalid --admin %q: %v\n", *addr, err)
		return exitBadInput
	}
	conn, ok := cmd.dial(stderr)
	if !ok {
		return exitBadInput
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := adminpb.NewAdminClient(conn).PurgeCache(ctx, &adminpb.PurgeCacheRequest{Url: fs.Arg(0), Prefix: *prefix})
	if err != nil {
		fmt.Fprintf(stderr, "agent cache purge: %s: %s\n", *addr, status.Convert(err).Message())
		return exitFailure
	}
	if res.GetCaches() == 0 {
		fmt.Fprintln(stderr, "agent cache purge: the agent has no cache (--cache or a cache block)")
		return exitFailure
	}
	fmt.Fprintf(stdout, "purged %d URL(s) from %d cache(s)\n", res.GetPurged(), res.GetCaches())
	return exitOK
}
