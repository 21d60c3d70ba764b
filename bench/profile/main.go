// Command profile runs meshlb's request path (lb.Balancer + proxy.Proxy +
// proxy.NewServer, configured as the agent configures them) in-process over
// fixed backends, drives it with wrk and writes a CPU profile of the run:
// where the time goes per request, for bench/README.md. It leaves out only
// what has nothing to do with proxying: Consul (the pool is set once) and
// the agent's Prometheus request counters. It is a measuring tool; it must
// not be used to serve traffic.
//
//	go run ./bench/profile -backends 127.0.0.1:8071,127.0.0.1:8072 -cpuprofile cpu.pprof
//	go tool pprof -top cpu.pprof
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshlb/meshlb/internal/httpguard"
	"github.com/meshlb/meshlb/lb"
	"github.com/meshlb/meshlb/proxy"
	"github.com/meshlb/meshlb/proxy/httpcache"
)

func main() {
	backends := flag.String("backends", "", "comma-separated `HOST:PORT` list of backends (required)")
	out := flag.String("cpuprofile", "cpu.pprof", "where to write the CPU profile")
	wrk := flag.String("wrk", "wrk -t1 -c64 -d10s --latency", "load `COMMAND`; the proxy's URL is appended")
	loops := flag.Int("event-loops", 1, "event loops of the proxy.LoopServer in front, as the agent serves cleartext listeners (0: net/http's server alone)")
	guard := flag.Bool("guard", true, "put internal/httpguard on the listener, as the agent does")
	cacheMiB := flag.Int("cache-mib", 0, "put an HTTP cache of this many MiB on the route (0: none), as --cache does")
	path := flag.String("path", "/", "the `PATH` wrk asks for, e.g. /cached?max_age=600 with -cache-mib")
	onLoop := flag.Bool("on-loop", true, "let the event loop serve GETs itself (proxy.LoopOptions.Proxy), as the agent does; false: every request through the handler on a goroutine")
	flag.Parse()
	if err := run(*backends, *out, *wrk, *loops, *guard, *cacheMiB, *path, *onLoop); err != nil {
		fmt.Fprintf(os.Stderr, "profile: %v\n", err)
		os.Exit(1)
	}
}

func run(backends, out, wrk string, loops int, guard bool, cacheMiB int, path string, onLoop bool) error {
	if backends == "" {
		return errors.New("-backends is required: e.g. -backends 127.0.0.1:8071,127.0.0.1:8072")
	}
	var insts []lb.Instance
	for i, hp := range strings.Split(backends, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			return fmt.Errorf("invalid backend %q: want HOST:PORT", hp)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return fmt.Errorf("invalid backend %q: port must be a number", hp)
		}
		insts = append(insts, lb.Instance{ID: "b" + strconv.Itoa(i), Service: "bench", Address: host, Port: p, HostPort: hp, Weight: 1})
	}
	b, err := lb.NewBalancer("bench", lb.Config{Policy: "round_robin", MaxFails: 3, FailTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	b.Update(insts)
	// The agent's defaults (cmd/agent/config.go).
	p, err := proxy.New(proxy.Config{
		ConnectTimeout:        time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxAttempts:           3,
	}, []proxy.Route{{Balancer: b}})
	if err != nil {
		return err
	}
	if cacheMiB > 0 {
		c, err := httpcache.New(httpcache.Config{MaxSize: int64(cacheMiB) << 20})
		if err != nil {
			return err
		}
		if err := p.SetRoutes([]proxy.Route{{Balancer: b, Cache: c}}); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := proxy.NewServer(ln.Addr().String(), p, proxy.ServerConfig{}, nil)
	if guard {
		ln = httpguard.Listen(ln, httpguard.Options{})
		srv.ConnState = httpguard.ConnState
	}
	if loops > 0 {
		opts := proxy.LoopOptions{Loops: loops}
		if onLoop {
			opts.Proxy = p
		}
		fs := proxy.NewLoopServer(srv, opts)
		go fs.Serve(ln)
		defer fs.Shutdown(context.Background())
	} else {
		go srv.Serve(ln)
		defer srv.Shutdown(context.Background())
	}
	url := "http://" + ln.Addr().String() + path

	// Warm the upstream connections before profiling.
	warm := strings.Fields(wrk)
	for i, a := range warm {
		if strings.HasPrefix(a, "-d") {
			warm[i] = "-d1s"
		}
	}
	if err := exec.Command(warm[0], append(warm[1:], url)...).Run(); err != nil {
		return fmt.Errorf("warm-up %v: %w", warm, err)
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	args := strings.Fields(wrk)
	cmd := exec.Command(args[0], append(args[1:], url)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	err = cmd.Run()
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	pprof.StopCPUProfile()
	if err != nil {
		return fmt.Errorf("%s: %w", wrk, err)
	}
	// The proxy's own CPU time under load (wrk's is not counted): divided
	// by the requests wrk reports, the CPU cost of one proxied request,
	// which other load on the machine disturbs far less than rps.
	cpu := func(tv syscall.Timeval) time.Duration { return time.Duration(tv.Nano()) }
	fmt.Fprintf(os.Stderr, "profile: proxy CPU during the load: user %v, system %v\n",
		(cpu(after.Utime) - cpu(before.Utime)).Round(time.Millisecond),
		(cpu(after.Stime) - cpu(before.Stime)).Round(time.Millisecond))
	fmt.Fprintf(os.Stderr, "profile: CPU profile written to %s\n", out)
	return nil
}
