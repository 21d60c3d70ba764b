// Package multihost builds a multi-host test topology out of Linux network
// namespaces, so integration tests can run Consul servers and clients,
// registrars, apps and the edge agent as if on separate machines, cut a host
// off and plug it back in.
//
// Every host is a namespace with its own loopback (so each host's Consul
// client listens on the default 127.0.0.1:8500) and one veth, eth0, plugged
// into a bridge that lives in a dedicated "switch" namespace. Addresses come
// from the benchmarking range 198.18.0.0/15 (RFC 2544). The test process
// itself reaches a host by opening its sockets inside that host's namespace
// (see Host.Dial), so nothing is ever added to the root namespace.
//
// The package must not touch the root namespace's links or routes, send
// traffic anywhere but to loopback or addresses it created, or remove
// anything it did not create: every namespace it makes carries a per-run
// prefix ("mlb<pid%1000>-"), is removed when the test ends, also on failure,
// and only leftovers of that prefix pattern from crashed earlier runs are
// ever cleaned up. It needs root.
package multihost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sys/unix"

	"github.com/meshlb/meshlb/internal/testing/consultest"
	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// Subnet is the topology's network: a /24 of the RFC 2544 benchmarking
// range, which no real network routes. Every topology uses the same one;
// topologies never see each other, as each has its own switch.
var Subnet = netip.MustParsePrefix("198.18.0.0/24")

// benchRange is the whole RFC 2544 range; Subnet must stay inside it.
var benchRange = netip.MustParsePrefix("198.18.0.0/15")

const (
	bridge   = "br0"  // the switch namespace's bridge
	hostDev  = "eth0" // each host's veth
	netnsDir = "/run/netns"
	// lockPath is where runs lock their prefix; a run holds its lock
	// until its process ends, so a prefix whose lock is free belongs to no
	// live run.
	lockPath = "/run/meshlb-multihost.lock"
)

// nameRE matches every namespace name this package makes:
// mlb<pid%1000>-<topology>-<host>. Nothing else is ever removed.
var nameRE = regexp.MustCompile(`^(mlb(0|[1-9][0-9]{0,2})-)[0-9]+-[a-z0-9]+$`)

// hostNameRE is what a host name may be: it becomes part of a namespace
// name and of the switch-side veth name (at most 15 bytes).
var hostNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// startedAt is when this test process started: leftovers are only ever
// ones created before it.
var startedAt = time.Now()

// run is this process's claim on a prefix, shared by every topology it builds.
var run struct {
	once   sync.Once
	prefix string
	lock   *os.File // held (never closed) until the process ends
	err    error
	seq    atomic.Int64
}

// Net is one topology: a switch namespace holding a bridge, and a namespace
// per host plugged into it. Build it with New; it is torn down when the
// test ends.
type Net struct {
	t      testing.TB
	prefix string // e.g. "mlb123-2-"
	sw     string // the switch namespace

	mu      sync.Mutex
	created []string // namespaces, in creation order
	hosts   map[string]*Host
	routes  map[string]bool // "ns dst" pairs whose route was checked
}

// Host is one machine of the topology: a network namespace with loopback
// and eth0 on the bridge.
type Host struct {
	// Name is the short name given to AddHost, e.g. "a".
	Name string
	// Hostname is what processes started with Start see as the host name
	// (their own UTS namespace), and the Consul node name: "host-" + Name.
	Hostname string
	// NS is the network namespace's name (ip netns).
	NS string
	// Addr is the host's address on the bridge.
	Addr netip.Addr

	port string // the switch-side end of the host's veth
	n    *Net

	consulOnce sync.Once
	consul     *api.Client
}

// New builds an empty topology (the switch and its bridge) and registers its
// teardown with t.Cleanup. It fails the test if not run as root, or if a
// leftover of an earlier run is in the way.
func New(t testing.TB) *Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("multihost: these tests build network namespaces and need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run them as root, e.g. sudo go test ./internal/multihost/")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("multihost: the ip command is missing: install iproute2 (apt-get install iproute2, or make deps): %v", err)
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("multihost: the unshare command is missing: install util-linux: %v", err)
	}
	run.once.Do(func() { run.prefix, run.lock, run.err = claimPrefix(t.Logf) })
	if run.err != nil {
		t.Fatalf("multihost: %v", run.err)
	}
	n := &Net{
		t:      t,
		prefix: fmt.Sprintf("%s%d-", run.prefix, run.seq.Add(1)),
		hosts:  map[string]*Host{},
		routes: map[string]bool{},
	}
	n.sw = n.prefix + "sw"
	t.Cleanup(n.destroy) // before creating anything: a failed setup is cleaned too
	if err := n.addNS(n.sw); err != nil {
		t.Fatalf("multihost: %v", err)
	}
	for _, args := range [][]string{
		{"-n", n.sw, "link", "set", "lo", "up"},
		{"-n", n.sw, "link", "add", bridge, "type", "bridge"},
		{"-n", n.sw, "link", "set", bridge, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatalf("multihost: building the switch: %v", err)
		}
	}
	return n
}

// Prefix returns the prefix of every namespace name of this topology.
func (n *Net) Prefix() string { return n.prefix }

// Switch returns the name of the namespace holding the bridge.
func (n *Net) Switch() string { return n.sw }

// AddHost creates host name (lowercase letters and digits, at most 10) at
// 198.18.0.<octet> and plugs it into the bridge. Before returning it checks
// that the host's only route is Subnet over its own veth, whose peer is on
// this topology's switch, and fails t otherwise. The host lives as long as
// the topology, whichever test or subtest t is.
func (n *Net) AddHost(t testing.TB, name string, octet int) *Host {
	t.Helper()
	h, err := n.addHost(name, octet)
	if err != nil {
		t.Fatalf("multihost: %v", err)
	}
	return h
}

func (n *Net) addHost(name string, octet int) (*Host, error) {
	if !hostNameRE.MatchString(name) || name == "sw" {
		return nil, fmt.Errorf("invalid host name %q: want 1-10 lowercase letters or digits starting with a letter, not \"sw\"", name)
	}
	if octet < 1 || octet > 254 {
		return nil, fmt.Errorf("invalid octet %d for host %q: want 1-254 (198.18.0.1-198.18.0.254)", octet, name)
	}
	addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(octet)})
	n.mu.Lock()
	for _, o := range n.hosts {
		if o.Name == name || o.Addr == addr {
			n.mu.Unlock()
			return nil, fmt.Errorf("host %q at %v: name or address already used by host %q at %v", name, addr, o.Name, o.Addr)
		}
	}
	n.mu.Unlock()
	h := &Host{Name: name, Hostname: "host-" + name, NS: n.prefix + name, Addr: addr, port: "p-" + name, n: n}
	if err := n.addNS(h.NS); err != nil {
		return nil, err
	}
	prefixed := fmt.Sprintf("%v/%d", addr, Subnet.Bits())
	for _, args := range [][]string{
		{"-n", h.NS, "link", "set", "lo", "up"},
		// Create both ends inside our namespaces: nothing appears in the root one.
		{"-n", n.sw, "link", "add", h.port, "type", "veth", "peer", "name", hostDev, "netns", h.NS},
		{"-n", n.sw, "link", "set", h.port, "master", bridge},
		{"-n", n.sw, "link", "set", h.port, "up"},
		{"-n", h.NS, "addr", "add", prefixed, "dev", hostDev},
		{"-n", h.NS, "link", "set", hostDev, "up"},
	} {
		if err := ip(args...); err != nil {
			return nil, fmt.Errorf("building host %q: %w", name, err)
		}
	}
	if err := h.checkIsolated(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.hosts[name] = h
	n.mu.Unlock()
	return h, nil
}

// addNS creates a namespace and records it for teardown.
func (n *Net) addNS(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("internal error: namespace name %q does not match %v", name, nameRE)
	}
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	n.mu.Lock()
	n.created = append(n.created, name)
	n.mu.Unlock()
	return nil
}

// checkIsolated verifies that the host can reach nothing but Subnet, over
// its own veth whose peer sits on our switch.
func (h *Host) checkIsolated() error {
	out, err := ipOut("-n", h.NS, "-o", "link", "show", hostDev)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "link-netns "+h.n.sw) {
		return fmt.Errorf("host %q: %s is not our veth into switch %s: %s", h.Name, hostDev, h.n.sw, out)
	}
	out, err = ipOut("-n", h.NS, "-4", "route", "show", "table", "main")
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], Subnet.String()+" dev "+hostDev+" ") {
		return fmt.Errorf("host %q: refusing to run: its routes should be only %v dev %s, got:\n%s", h.Name, Subnet, hostDev, out)
	}
	return nil
}

// Host returns the host named name, or nil.
func (n *Net) Host(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hosts[name]
}

// SetLink takes the host's link down (cut it off) or up again, on the
// bridge side when bridgeSide is set (the host sees its carrier drop), else
// on the host side (the host's eth0 goes down, and its route with it).
func (h *Host) SetLink(up, bridgeSide bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if bridgeSide {
		return ip("-n", h.n.sw, "link", "set", h.port, state)
	}
	return ip("-n", h.NS, "link", "set", hostDev, state)
}

// Start runs argv on the host, in the host's network namespace and with its
// host name (a UTS namespace of its own), with env added to the test's
// environment minus any CONSUL_HTTP_* and OTEL_* variables, so programs use
// their defaults (the host's own Consul agent on 127.0.0.1:8500). The
// process is killed when the test ends and its output logged if it failed.
func (h *Host) Start(t testing.TB, env []string, argv ...string) *testproc.Proc {
	t.Helper()
	if len(argv) == 0 {
		t.Fatalf("multihost: Start on host %q without a command", h.Name)
	}
	args := append([]string{"netns", "exec", h.NS, "unshare", "--uts", "--",
		"sh", "-c", `hostname "$1" && shift && exec "$@"`, "sh", h.Hostname}, argv...)
	// ip netns exec, unshare and sh all exec: the PID is the program's.
	p := testproc.Prepare(nil, "ip", args...)
	p.Cmd.Env = append(cleanEnv(), env...)
	if err := p.Launch(); err != nil {
		t.Fatalf("multihost: start %s on host %q: %v", argv[0], h.Name, err)
	}
	p.KillAtEnd(t, h.Hostname+"/"+filepath.Base(argv[0]))
	return p
}

// cleanEnv is the test's environment without settings that would point
// the programs elsewhere than their host's own agent or collector.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONSUL_HTTP_") || strings.HasPrefix(kv, "CONSUL_CACERT") ||
			strings.HasPrefix(kv, "CONSUL_CAPATH") || strings.HasPrefix(kv, "CONSUL_CLIENT_") ||
			strings.HasPrefix(kv, "CONSUL_TLS_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Dial connects from inside the host's namespace, as a program on the host
// would. It only dials loopback or Subnet, and only after `ip route get`
// in the namespace confirms the destination goes over lo or the host's own
// veth; anything else is refused.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("multihost: dial %q from host %q: want an IP:port literal: %w", addr, h.Name, err)
	}
	if err := h.checkRoute(ap.Addr()); err != nil {
		return nil, err
	}
	return dialInNS(ctx, filepath.Join(netnsDir, h.NS), network, addr)
}

// checkRoute refuses destinations outside loopback and Subnet, and any
// whose route in the host's namespace is not over lo or our veth.
func (h *Host) checkRoute(dst netip.Addr) error {
	dst = dst.Unmap()
	want := hostDev
	switch {
	case dst.IsLoopback() || dst == h.Addr:
		want = "lo"
	case Subnet.Contains(dst) && benchRange.Contains(dst):
	default:
		return fmt.Errorf("multihost: refusing to send from host %q to %v: only loopback and %v are allowed", h.Name, dst, Subnet)
	}
	key := h.NS + " " + dst.String()
	h.n.mu.Lock()
	ok := h.n.routes[key]
	h.n.mu.Unlock()
	if ok {
		return nil
	}
	out, err := ipOut("-n", h.NS, "route", "get", dst.String())
	if err != nil {
		return fmt.Errorf("multihost: refusing to send from host %q to %v: %w", h.Name, dst, err)
	}
	if dev := routeDev(out); dev != want {
		return fmt.Errorf("multihost: refusing to send from host %q to %v: it routes over %q, not %q: %s", h.Name, dst, dev, want, strings.TrimSpace(out))
	}
	h.n.mu.Lock()
	h.n.routes[key] = true
	h.n.mu.Unlock()
	return nil
}

// routeDev returns the device named in `ip route get` output.
func routeDev(out string) string {
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "dev" {
			return f[i+1]
		}
	}
	return ""
}

// dialInNS opens the connection on an OS thread moved into the namespace
// at nsPath, then moves the thread back. A socket keeps the namespace it
// was created in. The goroutine stays locked to its thread while the
// thread is in the namespace, so no other goroutine ever runs there; a
// thread that cannot move back is never unlocked and ends with the
// goroutine. (Moving back matters: if the thread is the main one, the
// process would show up in the namespace, for `ip netns pids` as well.)
func dialInNS(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("multihost: open own namespace: %w", err)}
			return
		}
		defer orig.Close()
		f, err := os.Open(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("multihost: open namespace: %w", err)}
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			ch <- result{err: fmt.Errorf("multihost: enter namespace %s: %w", nsPath, err)}
			return // the thread's state is unknown: it ends with this goroutine
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
		// Go back so the thread can serve other goroutines; if that fails
		// the thread stays locked and ends with this goroutine.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	r := <-ch
	return r.c, r.err
}

// HTTPClient returns a client whose connections are opened on the host.
// It never uses a proxy from the environment.
func (h *Host) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Transport: h.transport(), Timeout: timeout}
}

func (h *Host) transport() *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         h.Dial,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
	}
}

// Consul returns a client of the host's own Consul agent (127.0.0.1:8500
// in the host's namespace), ignoring CONSUL_HTTP_* in the environment. It is
// made once per host: one connection pool, so polling does not pile up idle
// connections until the agent refuses more (http_max_conns_per_client).
func (h *Host) Consul() *api.Client {
	h.consulOnce.Do(func() {
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = "127.0.0.1:8500", "http", "", ""
		cfg.TLSConfig = api.TLSConfig{}
		cfg.Transport = h.transport()
		c, err := api.NewClient(cfg)
		if err != nil {
			panic(err) // only fails on bad TLS settings, which are cleared above
		}
		h.consul = c
	})
	return h.consul
}

// ConsulHCL is the configuration every Consul agent of a topology gets: no
// DNS or gRPC ports, no calls home, and LAN gossip tuned so a host cut off
// is declared failed within seconds instead of tens of seconds (defaults:
// probe_interval 1s, probe_timeout 500ms, suspicion_mult 4).
const ConsulHCL = `ports { dns = -1, grpc = -1, grpc_tls = -1 }
disable_update_check = true
disable_anonymous_signature = true
gossip_lan {
  gossip_interval = "100ms"
  probe_interval  = "300ms"
  probe_timeout   = "200ms"
  suspicion_mult  = 3
}
performance { raft_multiplier = 1 }
`

// StartConsul starts a Consul agent on the host: the single server of the
// topology (bootstrap_expect 1) when join is the zero Addr, else a client
// joining the server at join. It binds the host's address for gossip and
// RPC and 127.0.0.1 for the HTTP API, with the node name h.Hostname.
func (h *Host) StartConsul(t testing.TB, join netip.Addr) *testproc.Proc {
	t.Helper()
	bin, err := consultest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{bin, "agent", "-data-dir", t.TempDir(), "-bind", h.Addr.String(),
		"-client", "127.0.0.1", "-node", h.Hostname, "-disable-host-node-id",
		"-log-level", "warn", "-hcl", ConsulHCL}
	if join.IsValid() {
		args = append(args, "-retry-join", join.String(), "-retry-interval", "500ms")
	} else {
		args = append(args, "-server", "-bootstrap-expect", "1")
	}
	return h.Start(t, nil, args...)
}

// WaitConsul waits until the host's Consul agent answers and knows a
// leader (for a client: it has joined the cluster).
func (h *Host) WaitConsul(ctx context.Context) error {
	c := h.Consul()
	var last error
	for {
		leader, err := c.Status().Leader()
		if err == nil && leader != "" {
			return nil
		}
		if err == nil {
			err = errors.New("no leader yet")
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul agent on host %q not ready: %w", h.Name, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitMembers waits until the host's Consul agent sees every named node
// alive.
func (h *Host) WaitMembers(ctx context.Context, nodes ...string) error {
	c := h.Consul()
	for {
		ms, err := c.Agent().Members(false)
		alive := map[string]bool{}
		for _, m := range ms {
			alive[m.Name] = m.Status == 1 // serf StatusAlive
		}
		missing := []string{}
		for _, n := range nodes {
			if !alive[n] {
				missing = append(missing, n)
			}
		}
		if err == nil && len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("consul members not alive as seen from host %q: %v (error %v)", h.Name, missing, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// destroy kills whatever still runs in the topology's namespaces (only
// programs the test started can be there), deletes the namespaces, which
// takes their links with them, and checks nothing of the topology is left.
func (n *Net) destroy() {
	n.mu.Lock()
	names := append([]string(nil), n.created...)
	n.mu.Unlock()
	for i := len(names) - 1; i >= 0; i-- {
		if err := killAll(names[i]); err != nil {
			n.t.Errorf("multihost: cleanup: %v", err)
		}
	}
	for i := len(names) - 1; i >= 0; i-- {
		if err := ip("netns", "del", names[i]); err != nil {
			n.t.Errorf("multihost: cleanup: %v", err)
		}
	}
	left, err := listNetns()
	if err != nil {
		n.t.Errorf("multihost: cleanup: %v", err)
	}
	for _, l := range left {
		if strings.HasPrefix(l, n.prefix) {
			n.t.Errorf("multihost: cleanup: namespace %s is still there", l)
		}
	}
}

// killAll SIGKILLs every process in namespace ns and waits until they are
// gone, so the namespace and its links really go away once deleted.
func killAll(ns string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := nsPIDs(ns)
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in namespace %s survive SIGKILL", pids, ns)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nsPIDs lists the processes in namespace ns (zombies waiting to be reaped
// by their parent excluded: they hold nothing).
func nsPIDs(ns string) ([]int, error) {
	out, err := ipOut("netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if pid == os.Getpid() {
			return nil, fmt.Errorf("this test process (pid %d) shows up in namespace %s; not killing it", pid, ns)
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// claimPrefix picks this run's prefix "mlb<pid%1000>-" (the next free
// number if a live run holds that one) and locks it for the life of the
// process. First it removes leftovers: namespaces matching the prefix
// pattern whose run's lock is free (that process is gone), created before
// this process started, with no process left in them.
//
// The locks are byte ranges of one file, byte N for prefix mlbN-, taken as
// open file description locks: the kernel drops them when the process
// ends, however it ends, and the file never grows past 1000 bytes.
func claimPrefix(logf func(string, ...any)) (string, *os.File, error) {
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", nil, fmt.Errorf("lock file: %w", err)
	}
	names, err := listNetns()
	if err != nil {
		f.Close()
		return "", nil, err
	}
	groups := map[int][]string{}
	for _, nm := range names {
		if m := nameRE.FindStringSubmatch(nm); m != nil {
			n, _ := strconv.Atoi(m[2])
			groups[n] = append(groups[n], nm)
		}
	}
	for n, nss := range groups {
		ok, err := lockByte(f, n, true)
		if err != nil {
			f.Close()
			return "", nil, err
		}
		if !ok {
			continue // a live run owns it
		}
		removeStale(nss, logf)
		if _, err := lockByte(f, n, false); err != nil {
			f.Close()
			return "", nil, err
		}
	}
	for i := range 1000 {
		n := (os.Getpid() + i) % 1000
		ok, err := lockByte(f, n, true)
		if err != nil {
			f.Close()
			return "", nil, err
		}
		if !ok {
			continue
		}
		p := fmt.Sprintf("mlb%d-", n)
		if left, _ := listNetns(); hasPrefix(left, p) {
			// Leftovers we could not remove: use another prefix.
			if _, err := lockByte(f, n, false); err != nil {
				f.Close()
				return "", nil, err
			}
			continue
		}
		return p, f, nil
	}
	f.Close()
	return "", nil, errors.New("no free namespace prefix mlb0- to mlb999-")
}

// lockByte locks (or unlocks) byte n of the lock file without waiting; ok
// is false when another run holds it.
func lockByte(f *os.File, n int, lock bool) (ok bool, err error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(n), Len: 1}
	if !lock {
		lk.Type = unix.F_UNLCK
	}
	err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lock byte %d of %s: %w", n, f.Name(), err)
	}
	return true, nil
}

// removeStale deletes the leftover namespaces nss, whose run's lock the
// caller holds, if they are all older than this process and empty.
func removeStale(nss []string, logf func(string, ...any)) {
	for _, ns := range nss {
		fi, err := os.Stat(filepath.Join(netnsDir, ns))
		if err != nil || !fi.ModTime().Before(startedAt) {
			logf("multihost: leaving %s alone: not older than this run", ns)
			return
		}
		if pids, err := nsPIDs(ns); err != nil || len(pids) > 0 {
			logf("multihost: leaving %s alone: processes %v still run in it", ns, pids)
			return
		}
	}
	for _, ns := range nss {
		if err := ip("netns", "del", ns); err != nil {
			logf("multihost: removing leftover %s: %v", ns, err)
			continue
		}
		logf("multihost: removed leftover namespace %s of a crashed earlier run", ns)
	}
}

func hasPrefix(names []string, p string) bool {
	for _, n := range names {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

// listNetns returns the names of the named network namespaces.
func listNetns() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

func ip(args ...string) error {
	_, err := ipOut(args...)
	return err
}

func ipOut(args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
