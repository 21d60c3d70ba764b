package discovery

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/meshlb/meshlb/lb"
)

const snapshotVersion = 1

type snapshotFile struct {
	Version int                           `json:"version"`
	Saved   time.Time                     `json:"saved"`
	Pools   map[string][]snapshotInstance `json:"pools"`
}

type snapshotInstance struct {
	ID      string            `json:"id"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Weight  int               `json:"weight,omitempty"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
}

// SaveSnapshot writes the pools per service to path atomically (a temp
// file in the same folder, synced, then renamed), so a crash never leaves
// a torn file.
func SaveSnapshot(path string, pools map[string][]lb.Instance) error {
	f := snapshotFile{Version: snapshotVersion, Saved: time.Now().UTC(), Pools: map[string][]snapshotInstance{}}
	for svc, insts := range pools {
		out := make([]snapshotInstance, 0, len(insts))
		for _, in := range insts {
			out = append(out, snapshotInstance{ID: in.ID, Address: in.Address, Port: in.Port, Weight: in.Weight, Tags: in.Tags, Meta: in.Meta})
		}
		f.Pools[svc] = out
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding pool snapshot: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".pools-*.json")
	if err != nil {
		return fmt.Errorf("writing pool snapshot in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing pool snapshot %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing pool snapshot %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing pool snapshot %s: %w", path, err)
	}
	return nil
}

// LoadSnapshot reads pools saved by SaveSnapshot. Instances that fail
// validation are dropped; errors name the file.
func LoadSnapshot(path string) (map[string][]lb.Instance, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f snapshotFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("pool snapshot %s is not valid JSON: %w", path, err)
	}
	if f.Version != snapshotVersion {
		return nil, fmt.Errorf("pool snapshot %s has version %d, want %d", path, f.Version, snapshotVersion)
	}
	out := make(map[string][]lb.Instance, len(f.Pools))
	for svc, insts := range f.Pools {
		list := make([]lb.Instance, 0, len(insts))
		for _, in := range insts {
			if in.ID == "" || !validAddress(in.Address) || in.Port < 1 || in.Port > 65535 {
				continue
			}
			list = append(list, lb.Instance{ID: in.ID, Service: svc, Address: in.Address, Port: in.Port,
				HostPort: net.JoinHostPort(in.Address, strconv.Itoa(in.Port)), Weight: max(in.Weight, 1), Tags: in.Tags, Meta: in.Meta})
		}
		out[svc] = list
	}
	return out, nil
}
