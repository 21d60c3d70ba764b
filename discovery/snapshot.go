package discovery

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshlb/meshlb/lb"
)

// snapshotVersion is the format of the snapshot file; LoadSnapshot refuses
// other versions rather than guessing.
const snapshotVersion = 1

type snapshotFile struct {
	Version int                           `json:"version"`
	SavedAt time.Time                     `json:"saved"`
	Pools   map[string][]snapshotInstance `json:"pools"`
}

// snapshotInstance is lb.Instance without its live Stats and without
// HostPort, which is derived.
type snapshotInstance struct {
	ID      string            `json:"id"`
	Service string            `json:"service"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Weight  int               `json:"weight"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
}

// SnapshotInstances returns what a snapshot keeps of pool: its local
// instances (another datacenter's are not for a restart's local pool),
// without their live stats.
func SnapshotInstances(pool *lb.Pool) []lb.Instance {
	insts := make([]lb.Instance, 0, len(pool.Instances))
	tiers := pool.Tiers()
	for _, in := range pool.Instances {
		if in.Tier < len(tiers) && tiers[in.Tier].Remote {
			continue
		}
		c := *in
		c.Stats = nil
		insts = append(insts, c)
	}
	return insts
}

// SaveSnapshot writes the pools (service name → instances) to path as JSON,
// atomically: it writes a temporary file in the same folder, syncs it and
// renames it over path, so a crash leaves either the old file or the new
// one, never half of one. The agent saves its pools as they change so
// that, restarted while Consul is unreachable, it serves the last known
// pools within a second (LoadSnapshot) instead of nothing.
func SaveSnapshot(path string, pools map[string][]lb.Instance) error {
	f := snapshotFile{Version: snapshotVersion, SavedAt: time.Now().UTC(), Pools: make(map[string][]snapshotInstance, len(pools))}
	for svc, pool := range pools {
		out := make([]snapshotInstance, 0, len(pool))
		for _, in := range pool {
			out = append(out, snapshotInstance{ID: in.ID, Service: in.Service, Address: in.Address,
				Port: in.Port, Weight: in.Weight, Tags: in.Tags, Meta: in.Meta})
		}
		f.Pools[svc] = out
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding pool snapshot for %q: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing pool snapshot %q: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("writing pool snapshot %q: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("writing pool snapshot %q: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("syncing pool snapshot %q: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("writing pool snapshot %q: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing pool snapshot %q: %w", path, err)
	}
	done = true
	// Make the rename itself durable; not every file system supports
	// syncing a directory, and the data is already safe, so ignore errors.
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// LoadSnapshot reads a file written by SaveSnapshot. Instances come back
// sorted by ID with HostPort recomputed and no Stats. Every error names the
// file; a file that is corrupt or holds an instance that could not be
// dialled is an error as a whole, since serving half a snapshot is worse
// than waiting for Consul.
func LoadSnapshot(path string) (map[string][]lb.Instance, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading pool snapshot: %w", err) // *PathError names the file
	}
	var f snapshotFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("pool snapshot %q is not valid JSON: %w", path, err)
	}
	if f.Version != snapshotVersion {
		return nil, fmt.Errorf("pool snapshot %q has version %d: this agent reads version %d only", path, f.Version, snapshotVersion)
	}
	if f.Pools == nil {
		return nil, fmt.Errorf("pool snapshot %q has no \"pools\" object", path)
	}
	pools := make(map[string][]lb.Instance, len(f.Pools))
	for svc, in := range f.Pools {
		if svc == "" {
			return nil, fmt.Errorf("pool snapshot %q: a pool has an empty service name", path)
		}
		pool := make([]lb.Instance, 0, len(in))
		for i, s := range in {
			if s.ID == "" {
				return nil, fmt.Errorf("pool snapshot %q: service %q instance %d has no id", path, svc, i)
			}
			if reason := checkEndpoint(s.Address, s.Port); reason != "" {
				return nil, fmt.Errorf("pool snapshot %q: service %q instance %q: %s", path, svc, s.ID, reason)
			}
			weight := s.Weight
			if weight <= 0 {
				weight = 1
			}
			service := s.Service
			if service == "" {
				service = svc
			}
			pool = append(pool, lb.Instance{
				ID: s.ID, Service: service, Address: s.Address, Port: s.Port,
				HostPort: net.JoinHostPort(s.Address, strconv.Itoa(s.Port)),
				Weight:   weight, Tags: cloneTags(s.Tags), Meta: cloneMeta(s.Meta),
			})
		}
		slices.SortFunc(pool, func(x, y lb.Instance) int { return strings.Compare(x.ID, y.ID) })
		for i := 1; i < len(pool); i++ {
			if pool[i].ID == pool[i-1].ID {
				return nil, fmt.Errorf("pool snapshot %q: service %q lists instance %q twice", path, svc, pool[i].ID)
			}
		}
		pools[svc] = pool
	}
	return pools, nil
}
