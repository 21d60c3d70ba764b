package discovery

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/meshlb/meshlb/lb"
)

func TestSnapshotRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pools.json")
	pools := map[string][]lb.Instance{
		"web": {
			{ID: "web-b", Service: "web", Address: "2001:db8::2", Port: 8081, HostPort: "[2001:db8::2]:8081", Weight: 2,
				Tags: []string{"v1"}, Meta: map[string]string{"pid": "7", "host": "h2"}, Stats: &lb.Stats{}},
			{ID: "web-a", Service: "web", Address: "10.0.0.1", Port: 8080, HostPort: "10.0.0.1:8080", Weight: 1},
		},
		"api":   {{ID: "api-1", Service: "api", Address: "api.internal", Port: 9000, HostPort: "api.internal:9000", Weight: 3}},
		"empty": {},
	}
	if err := SaveSnapshot(path, pools); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	// Saving again replaces the file whole (rename over it).
	if err := SaveSnapshot(path, pools); err != nil {
		t.Fatalf("SaveSnapshot over an existing file: %v", err)
	}
	got, err := LoadSnapshot(path)
	if err != nil {
		t.Fatalf("LoadSnapshot: %v", err)
	}
	want := map[string][]lb.Instance{
		"web": {
			{ID: "web-a", Service: "web", Address: "10.0.0.1", Port: 8080, HostPort: "10.0.0.1:8080", Weight: 1},
			{ID: "web-b", Service: "web", Address: "2001:db8::2", Port: 8081, HostPort: "[2001:db8::2]:8081", Weight: 2,
				Tags: []string{"v1"}, Meta: map[string]string{"pid": "7", "host": "h2"}},
		},
		"api":   {{ID: "api-1", Service: "api", Address: "api.internal", Port: 9000, HostPort: "api.internal:9000", Weight: 3}},
		"empty": {},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadSnapshot = %+v\nwant %+v", got, want)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("folder holds %d files after saving, want only the snapshot (no temp files left)", len(entries))
	}
}

func TestSnapshotErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content string // "" = file absent
		want    string
	}{
		{"missing file", "", "no such file"},
		{"corrupt JSON", `{"version":1,"pools":{"web":[{"id":"a"`, "not valid JSON"},
		{"not an object", `[1,2]`, "not valid JSON"},
		{"wrong version", `{"version":2,"pools":{}}`, "has version 2"},
		{"no pools", `{"version":1}`, `no "pools"`},
		{"instance without id", `{"version":1,"pools":{"web":[{"address":"10.0.0.1","port":80}]}}`, "has no id"},
		{"bad port", `{"version":1,"pools":{"web":[{"id":"a","address":"10.0.0.1","port":70000}]}}`, "invalid port 70000"},
		{"bad address", `{"version":1,"pools":{"web":[{"id":"a","address":"x y","port":80}]}}`, "invalid address"},
		{"duplicate id", `{"version":1,"pools":{"web":[{"id":"a","address":"10.0.0.1","port":80},{"id":"a","address":"10.0.0.2","port":80}]}}`, "twice"},
		{"empty service name", `{"version":1,"pools":{"":[]}}`, "empty service name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".json")
			if tc.content != "" {
				if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := LoadSnapshot(path)
			if err == nil {
				t.Fatalf("LoadSnapshot = %v, want an error", got)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file %s", err, path)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
			if tc.content == "" && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("missing file: errors.Is(err, os.ErrNotExist) = false for %v; the agent relies on it", err)
			}
		})
	}
}

func TestSaveSnapshotErrorNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-dir", "pools.json")
	err := SaveSnapshot(path, map[string][]lb.Instance{})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("SaveSnapshot into a missing folder = %v, want an error naming %s", err, path)
	}
}
