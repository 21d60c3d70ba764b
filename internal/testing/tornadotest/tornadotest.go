// Package tornadotest runs the example Tornado app (examples/tornado/app.py)
// as a real process in tests and benchmarks: the app every integration test
// balances, registers and drains.
package tornadotest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshlb/meshlb/internal/testing/testproc"
)

// Python finds an interpreter that imports tornado: $MESHLB_PYTHON, then
// /usr/bin/python3 (Debian's python3-tornado), then python3 on PATH. The
// first python3 on PATH may be another interpreter without Tornado.
func Python() (string, error) {
	cands := []string{os.Getenv("MESHLB_PYTHON"), "/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if exec.Command(c, "-c", "import tornado").Run() == nil {
			return c, nil
		}
	}
	return "", errors.New("no python3 with tornado found: run `apt-get install python3-tornado` (or `make test`, which installs it), or set MESHLB_PYTHON")
}

// Command returns the argv that runs the example Tornado app on port.
func Command(port int) ([]string, error) {
	py, err := Python()
	if err != nil {
		return nil, err
	}
	root, err := testproc.RepoRoot()
	if err != nil {
		return nil, err
	}
	return []string{py, filepath.Join(root, "examples", "tornado", "app.py"), fmt.Sprintf("--port=%d", port)}, nil
}

// App returns the argv of the example app on port, or fails the test
// saying how to install Tornado.
func App(t testing.TB, port int) []string {
	t.Helper()
	argv, err := Command(port)
	if err != nil {
		t.Fatal(err)
	}
	return argv
}

// Start starts the example app on port and waits until it listens.
func Start(t testing.TB, port int) *testproc.Proc {
	t.Helper()
	argv := App(t, port)
	p := testproc.Start(t, nil, argv[0], append(argv[1:], "--logging=warning")...)
	if err := testproc.WaitListening(fmt.Sprintf("127.0.0.1:%d", port), 15*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}
