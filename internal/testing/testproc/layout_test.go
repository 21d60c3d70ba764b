package testproc

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoProductionPackageImportsAHarness keeps the test harnesses apart
// from the code they test: outside their own tests, only other harnesses
// and the bench programs may import a package under internal/testing/.
func TestNoProductionPackageImportsAHarness(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	const mod = "github.com/meshlb/meshlb/"
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := f[0]
		if strings.HasPrefix(pkg, mod+"internal/testing/") || strings.HasPrefix(pkg, mod+"bench/") {
			continue
		}
		checked++
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, mod+"internal/testing/") {
				t.Errorf("%s imports the test harness %s", pkg, imp)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d production packages listed; go list output:\n%s", checked, out)
	}
}
