package testutil

import (
	"os"
	"strings"
	"testing"
)

// Privileged gates a test that needs root, BPF or network namespaces.
//
// The test's name must start with TestPrivileged. It is skipped unless
// PRIVILEGED_TESTS=1; when that variable is set (as in CI) and the process is not
// root, the test fails instead of skipping, so CI can never skip it by accident.
func Privileged(t testing.TB) {
	t.Helper()
	if !strings.HasPrefix(t.Name(), "TestPrivileged") {
		t.Fatalf("testutil: privileged test %q must be named TestPrivileged*", t.Name())
	}
	if os.Getenv("PRIVILEGED_TESTS") != "1" {
		t.Skip("privileged test: set PRIVILEGED_TESTS=1 and run as root (make test-privileged)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("PRIVILEGED_TESTS=1 but not running as root")
	}
}
