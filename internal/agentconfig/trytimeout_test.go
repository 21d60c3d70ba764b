package agentconfig

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshlb/meshlb/proxy"
)

func TestTryTimeoutSettings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.hcl")
	cfg := `service "fixed" { try_timeout = "250ms" }
service "off" { try_timeout = "off" }
service "plain" {}
listener "web" {
  address = "127.0.0.1:0"
  route {
    path_prefix = "/a"
    service = "fixed"
  }
  route {
    path_prefix = "/b"
    service = "off"
  }
  route { service = "plain" }
}
`
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		flag  []string
		plain time.Duration
	}{
		{"default is adaptive", nil, proxy.TryTimeoutAdaptive},
		{"flag duration", []string{"--try-timeout", "400ms"}, 400 * time.Millisecond},
		{"flag off", []string{"--try-timeout", "off"}, proxy.TryTimeoutOff},
		{"flag auto", []string{"--try-timeout", "auto"}, proxy.TryTimeoutAdaptive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(append([]string{"--config", file}, tc.flag...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			// A service's own try_timeout wins over the flag.
			for name, want := range map[string]time.Duration{"fixed": 250 * time.Millisecond, "off": proxy.TryTimeoutOff, "plain": tc.plain} {
				if got := c.Service(name).TryTimeout; got != want {
					t.Errorf("service %s: try timeout %v, want %v", name, got, want)
				}
			}
		})
	}
}
