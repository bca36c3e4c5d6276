package e2e

import (
	"os/exec"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestScriptsShellcheck keeps the testbed and demo scripts shellcheck-clean
// (skipped where shellcheck is not installed).
func TestScriptsShellcheck(t *testing.T) {
	testutil.System(t)
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("shellcheck not installed (apt-get install shellcheck)")
	}
	for _, name := range []string{"testbed", "demo"} {
		if out, err := exec.Command(sc, script(t, name)).CombinedOutput(); err != nil {
			t.Errorf("shellcheck scripts/%s: %v\n%s", name, err, out)
		}
	}
}
