package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// h2specBin finds h2spec: bin/h2spec in the repository (make deps links it
// there, see scripts/ensure-h2spec.sh), else on PATH.
func h2specBin(t *testing.T) string {
	t.Helper()
	if root, err := testproc.RepoRoot(); err == nil {
		if p := filepath.Join(root, "bin", "h2spec"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	t.Fatal("h2spec not found: run `make deps` (scripts/ensure-h2spec.sh builds it into bin/h2spec)")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var h2specTotals = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// TestH2Spec runs the HTTP/2 conformance suite against the agent's TLS
// listener (HTTP/2 by ALPN) and its cleartext one (HTTP/2 with prior
// knowledge): every case must pass. The agent needs no pool for it: its
// 503 before the first pool is an answer like any other.
func TestH2Spec(t *testing.T) {
	h2spec := h2specBin(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "localhost")
	tlsPort, clearPort := testproc.FreePort(t), testproc.FreePort(t)
	cfg := fmt.Sprintf(`admin = "off"
service "h2" {}
listener "tls" {
  address = "127.0.0.1:%d"
  tls {
    cert_file = %q
    key_file  = %q
  }
  route { service = "h2" }
}
listener "clear" {
  address = "127.0.0.1:%d"
  route { service = "h2" }
}
`, tlsPort, certFile, keyFile, clearPort)
	file := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Consul where nothing listens: the agent serves 503 until a pool comes.
	consul := fmt.Sprintf("CONSUL_HTTP_ADDR=127.0.0.1:%d", testproc.FreePort(t))
	testproc.Start(t, []string{consul}, bin(t, "agent"), "--config", file, "--log-level", "error")
	for _, port := range []int{tlsPort, clearPort} {
		if err := testproc.WaitListening(fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"tls", []string{"-t", "-k", "-p", strconv.Itoa(tlsPort)}},
		{"h2c", []string{"-p", strconv.Itoa(clearPort)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			args := append([]string{"-h", "127.0.0.1", "-o", "5"}, tc.args...)
			out, err := exec.CommandContext(ctx, h2spec, args...).CombinedOutput()
			m := h2specTotals.FindSubmatch(out)
			if m == nil {
				t.Fatalf("h2spec %s: %v, no summary in its output:\n%s", strings.Join(args, " "), err, out)
			}
			total, _ := strconv.Atoi(string(m[1]))
			passed, _ := strconv.Atoi(string(m[2]))
			skipped, _ := strconv.Atoi(string(m[3]))
			failed, _ := strconv.Atoi(string(m[4]))
			t.Logf("MEASURE h2spec %s: %d tests, %d passed, %d skipped, %d failed", tc.name, total, passed, skipped, failed)
			if failed != 0 || passed+skipped != total || total < 145 {
				t.Errorf("h2spec %s: %d of %d passed (%d skipped, %d failed), want every case; failures:\n%s",
					tc.name, passed, total, skipped, failed, failures(out))
			}
		})
	}
}

// failures keeps the failed cases of h2spec's output (its summary at the end).
func failures(out []byte) string {
	s := string(out)
	if i := strings.Index(s, "Failures:"); i >= 0 {
		return s[i:]
	}
	return s
}
