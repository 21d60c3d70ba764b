package discovery

import (
	"strings"
	"testing"

	"github.com/meshlb/meshlb/lb"
)

func inst(id string, tags ...string) lb.Instance {
	return lb.Instance{ID: id, Address: "10.0.0.1", Port: 80, Weight: 1, Tags: tags}
}

func tierIDs(tiers []lb.Tier) string {
	var parts []string
	for _, t := range tiers {
		name := t.Datacenter
		if t.Backup {
			name += "/backup"
		}
		var ids []string
		for _, in := range t.Instances {
			ids = append(ids, in.ID)
		}
		parts = append(parts, name+":"+strings.Join(ids, ","))
	}
	return strings.Join(parts, " ")
}

func TestRankTiers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         TierInput
		want       string
		failedOver string
	}{
		{
			name: "local primaries and backups",
			in:   TierInput{LocalDC: "dc1", Local: []lb.Instance{inst("a"), inst("b", "backup"), inst("c", "web", "backup")}},
			want: "dc1:a dc1/backup:b,c",
		},
		{
			name: "custom backup tag",
			in:   TierInput{LocalDC: "dc1", BackupTag: "standby", Local: []lb.Instance{inst("a", "backup"), inst("b", "standby")}},
			want: "dc1:a dc1/backup:b",
		},
		{
			name: "local first while min_healthy pass",
			in: TierInput{LocalDC: "dc1", MinHealthy: 1, Local: []lb.Instance{inst("a")},
				Remote: [][]lb.Instance{{inst("x"), inst("y", "backup")}, {inst("z")}}, RemoteDCs: []string{"dc2", "dc3"}},
			want: "dc1:a dc1/backup: dc2:x dc2/backup:y dc3:z dc3/backup:",
		},
		{
			name: "too few local: first remote with instances serves first, local last",
			in: TierInput{LocalDC: "dc1", MinHealthy: 2, Local: []lb.Instance{inst("a")},
				Remote: [][]lb.Instance{nil, {inst("z")}}, RemoteDCs: []string{"dc2", "dc3"}},
			want:       "dc2: dc2/backup: dc3:z dc3/backup: dc1:a dc1/backup:",
			failedOver: "dc3",
		},
		{
			name: "no local and no remote instances: local order",
			in:   TierInput{LocalDC: "dc1", MinHealthy: 1, Remote: [][]lb.Instance{nil}, RemoteDCs: []string{"dc2"}},
			want: "dc1: dc1/backup: dc2: dc2/backup:",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.in.BackupTag == "" {
				tc.in.BackupTag = DefaultBackupTag
			}
			tiers, fo := RankTiers(tc.in)
			if got := tierIDs(tiers); got != tc.want || fo != tc.failedOver {
				t.Errorf("RankTiers = %q, failed over %q; want %q, %q", got, fo, tc.want, tc.failedOver)
			}
			for _, tr := range tiers {
				if tr.Remote != (tr.Datacenter != "dc1") {
					t.Errorf("tier %s: Remote = %v", tr.Datacenter, tr.Remote)
				}
			}
		})
	}
}

func TestFailoverConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  FailoverConfig
		want string
	}{
		{FailoverConfig{Service: "s", Datacenters: []string{"dc2", "dc2"}}, `failover datacenter "dc2" listed twice`},
		{FailoverConfig{Service: "s", Datacenters: []string{"dc 2"}}, `invalid failover datacenter "dc 2"`},
		{FailoverConfig{Service: "s", MinHealthy: -1}, "invalid min_healthy -1"},
		{FailoverConfig{Service: "s", PreparedQuery: "a/b"}, `invalid prepared_query "a/b"`},
		{FailoverConfig{Service: "s", Datacenters: []string{"dc2", "eu-west.1"}, PreparedQuery: "web-failover"}, ""},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := NewFailover(nil, FailoverConfig{Service: "s", Datacenters: []string{"dc2"}}, func([]lb.Tier) {}); err == nil {
		t.Error("NewFailover with datacenters and no client succeeded")
	}
}

// TestFailoverSplitsBackupsWithoutConsul: a service without failover
// datacenters needs no Consul client; SetLocal ranks the backups.
func TestFailoverSplitsBackupsWithoutConsul(t *testing.T) {
	var got []lb.Tier
	f, err := NewFailover(nil, FailoverConfig{Service: "s"}, func(tiers []lb.Tier) { got = tiers })
	if err != nil {
		t.Fatal(err)
	}
	if f.Active() {
		t.Error("Active without failover datacenters")
	}
	f.SetLocal([]lb.Instance{inst("a"), inst("b", "backup")})
	if s := tierIDs(got); s != ":a /backup:b" {
		t.Errorf("tiers %q, want primary a then backup b", s)
	}
	if f.FailedOver() != "" {
		t.Errorf("FailedOver = %q without failover datacenters", f.FailedOver())
	}
}
