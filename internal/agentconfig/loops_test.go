package agentconfig

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestEventLoopsFlag: --event-loops sets the loops of cleartext listeners
// (default one per core, 0 = net/http); the deprecated --fast-lane and
// fast_lane map onto it, the new name winning; out-of-range values are
// refused naming the value.
func TestEventLoopsFlag(t *testing.T) {
	dir := t.TempDir()
	hcl := func(name, body string) string {
		p := filepath.Join(dir, name)
		src := "listener \"web\" {\n  address = \"127.0.0.1:0\"\n  route { service = \"s\" }\n}\n" + body
		if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	laneOff := hcl("laneoff.hcl", "fast_lane = false\n")
	three := hcl("three.hcl", "event_loops = 3\n")
	bad := hcl("bad.hcl", "event_loops = -2\n")
	cli := []string{"--listen", "127.0.0.1:0", "--service", "s"}
	procs := runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"default", cli, procs},
		{"set", append(cli[:2:2], "--service", "s", "--event-loops", "2"), 2},
		{"zero", append(cli[:2:2], "--service", "s", "--event-loops", "0"), 0},
		{"fast-lane=false", append(cli[:2:2], "--service", "s", "--fast-lane=false"), 0},
		{"fast-lane=true", append(cli[:2:2], "--service", "s", "--fast-lane=true"), procs},
		{"new name wins", append(cli[:2:2], "--service", "s", "--fast-lane=false", "--event-loops", "1"), 1},
		{"file fast_lane", []string{"--config", laneOff}, 0},
		{"file event_loops", []string{"--config", three}, 3},
		{"flag over file", []string{"--config", three, "--event-loops", "1"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.EventLoops != tc.want {
				t.Errorf("eventLoops %d, want %d", c.EventLoops, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(cli[:2:2], "--service", "s", "--event-loops", "-1"), "invalid --event-loops -1"},
		{append(cli[:2:2], "--service", "s", "--event-loops", "5000"), "invalid --event-loops 5000"},
		{[]string{"--config", bad}, "invalid event_loops -2"},
	} {
		_, err := Parse(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}
