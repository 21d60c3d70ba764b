package consultest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// Cluster is a real Consul cluster on loopback: N servers (raft) and one
// client agent that registrars and edge agents talk to, as on a real host.
type Cluster struct {
	Servers []*Node
	Client  *Node
}

// Node is one agent of a Cluster.
type Node struct {
	Name     string
	HTTPAddr string
	SerfLAN  int
	proc     *testproc.Proc
}

// NewCluster starts n servers and a client agent, waits for a leader and
// for the client to join, and stops them all when the test ends.
func NewCluster(t TB, n int) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	dir := t.TempDir()
	c := &Cluster{}
	ports, err := testproc.FreePorts(5 * (n + 1))
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	t.Cleanup(c.stop)
	join := fmt.Sprintf("127.0.0.1:%d", ports[1])
	for i := 0; i <= n; i++ {
		p := ports[5*i : 5*i+5]
		server := i < n
		name := fmt.Sprintf("server-%d", i+1)
		if !server {
			name = "client"
		}
		args := []string{"agent", "-node", name, "-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-data-dir", filepath.Join(dir, name), "-log-level", "warn", "-retry-join", join,
			"-hcl", fmt.Sprintf(`ports { http = %d, serf_lan = %d, serf_wan = %d, server = %d, dns = -1, grpc = -1, grpc_tls = -1 }
performance { raft_multiplier = 1 }
disable_update_check = true`, p[0], p[1], p[2], p[3])}
		if server {
			args = append(args, "-server", fmt.Sprintf("-bootstrap-expect=%d", n))
		}
		node := &Node{Name: name, HTTPAddr: fmt.Sprintf("127.0.0.1:%d", p[0]), SerfLAN: p[1], proc: testproc.Prepare(nil, bin, args...)}
		if err := node.proc.Launch(); err != nil {
			t.Fatalf("consultest: %s: %v", name, err)
		}
		if server {
			c.Servers = append(c.Servers, node)
		} else {
			c.Client = node
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.waitReady(ctx, n); err != nil {
		t.Fatalf("consultest: cluster: %v\n%s", err, c.logs())
	}
	return c
}

func (c *Cluster) waitReady(ctx context.Context, n int) error {
	client := c.Client.API()
	for {
		leader, err := client.Status().Leader()
		members, merr := client.Agent().Members(false)
		if err == nil && leader != "" && merr == nil && len(members) == n+1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no leader with %d members: leader %q (%v), members %d (%v)", n+1, leader, err, len(members), merr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// API returns a client for the node.
func (n *Node) API() *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = n.HTTPAddr, ""
	c, _ := api.NewClient(cfg)
	return c
}

// Env returns CONSUL_HTTP_ADDR=... pointing at the node.
func (n *Node) Env() []string { return []string{"CONSUL_HTTP_ADDR=" + n.HTTPAddr} }

// Kill stops the node abruptly (SIGKILL), as a crashed host would.
func (n *Node) Kill() { n.proc.Kill() }

// Leader returns the server that is the raft leader now.
func (c *Cluster) Leader() (*Node, error) {
	addr, err := c.Client.API().Status().Leader()
	if err != nil {
		return nil, err
	}
	for _, s := range c.Servers {
		// The leader's address is its server (raft) RPC address; match by
		// asking each server who it is.
		self, err := s.API().Agent().Self()
		if err != nil {
			continue
		}
		if cfg, ok := self["Config"]; ok && fmt.Sprint(cfg["NodeName"]) == s.Name {
			if member, ok := self["Member"]; ok && strings.HasPrefix(addr, fmt.Sprint(member["Addr"])+":") {
				if tags, ok := member["Tags"].(map[string]any); ok && fmt.Sprint(tags["port"]) == addr[strings.LastIndexByte(addr, ':')+1:] {
					return s, nil
				}
			}
		}
	}
	return nil, errors.New("leader " + addr + " is none of the servers")
}

func (c *Cluster) stop() {
	for _, n := range append(c.Servers, c.Client) {
		if n != nil {
			n.proc.Kill()
		}
	}
}

func (c *Cluster) logs() string {
	var b strings.Builder
	for _, n := range append(c.Servers, c.Client) {
		if n != nil {
			fmt.Fprintf(&b, "--- %s\n%s\n", n.Name, n.proc.Out.String())
		}
	}
	return b.String()
}
