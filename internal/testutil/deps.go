package testutil

import (
	"os/exec"
	"strings"
	"testing"
)

// CheckDeps fails t if pkg (an import path) depends, directly or not, on any
// import path in banned; each ban carries the reason shown on failure. A banned
// path ending in "/..." bans everything under it.
func CheckDeps(t testing.TB, pkg string, banned map[string]string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		for ban, why := range banned {
			if dep == ban || (strings.HasSuffix(ban, "/...") && strings.HasPrefix(dep, strings.TrimSuffix(ban, "..."))) {
				t.Errorf("%s depends on %s: %s", pkg, dep, why)
			}
		}
	}
}
