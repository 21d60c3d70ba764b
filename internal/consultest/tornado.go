package consultest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
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

// AppCommand returns the argv that runs the example Tornado app on port.
func AppCommand(port int) ([]string, error) {
	py, err := Python()
	if err != nil {
		return nil, err
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	return []string{py, filepath.Join(root, "examples", "tornado", "app.py"), fmt.Sprintf("--port=%d", port)}, nil
}

// WaitListening waits until something accepts TCP connections on addr.
func WaitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listening on %s after %v: %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
