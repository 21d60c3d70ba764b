package agentconfig

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestFailoverConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(src string) string {
		p := filepath.Join(dir, "agent.hcl")
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	listener := "listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"hello\" }\n}\n"

	cfg, err := Parse([]string{"--config", write(`service "hello" {
  backup_tag = "standby"
  failover {
    datacenters = ["dc2", "dc3"]
    min_healthy = 2
  }
}
` + listener), "--failover-dc", "dc9"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fo := cfg.Service("hello").Failover
	if !slices.Equal(fo.Datacenters, []string{"dc2", "dc3"}) || fo.MinHealthy != 2 || fo.BackupTag != "standby" {
		t.Errorf("failover = %+v; want dc2, dc3 (the block wins over --failover-dc), min_healthy 2, backup_tag standby", fo)
	}

	cfg, err = Parse([]string{"--listen", "127.0.0.1:0", "--service", "hello", "--failover-dc", "dc2", "--failover-dc", "dc3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if fo := cfg.Service("hello").Failover; !slices.Equal(fo.Datacenters, []string{"dc2", "dc3"}) {
		t.Errorf("--failover-dc gave %v, want [dc2 dc3] in order", fo.Datacenters)
	}

	for _, tc := range []struct {
		args      []string
		hcl, want string
	}{
		{hcl: "service \"hello\" {\n failover {\n min_healthy = 0\n datacenters = [\"dc2\"]\n }\n}", want: "invalid failover min_healthy 0"},
		{hcl: "service \"hello\" {\n  failover {}\n}", want: "needs datacenters"},
		{hcl: `service "hello" { backup_tag = "" }`, want: "backup_tag is empty"},
		{hcl: "service \"hello\" {\n  failover { datacenters = [\"dc2\", \"dc2\"] }\n}", want: `"dc2" listed twice`},
		{args: []string{"--failover-dc", "d c"}, want: `invalid --failover-dc: invalid failover datacenter "d c"`},
	} {
		args := tc.args
		if tc.hcl != "" {
			args = append(args, "--config", write(tc.hcl+"\n"+listener))
		} else {
			args = append(args, "--listen", "127.0.0.1:0", "--service", "hello")
		}
		if _, err := Parse(args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %s: error %v, want %q", tc.args, tc.hcl, err, tc.want)
		}
	}
}
