package testutil

import (
	"errors"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// Tests come in three tiers, each a stage of make test:
//
//	unit        in process, no root, no child process: `go test -short ./...`
//	            (make unit, under the race detector; under two minutes)
//	system      spawn processes (agents, tools) or run long: gated by System,
//	            they run without -short (make test-system)
//	privileged  need root, BPF or network namespaces: gated by Privileged
//	            (make test-privileged)

// System gates a test that spawns processes or runs for long: -short
// (make unit) skips it, saying which tier runs it.
func System(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("system test (spawns processes or runs long): make test-system runs it")
	}
}

// KernelFeature handles err from loading or attaching BPF: a kernel lacking
// a feature Ferry needs fails a privileged test, since CI's kernel has them
// all and a skip there would hide a broken test; a developer on an older
// kernel sets FERRY_ALLOW_OLD_KERNEL=1 to skip instead. Other errors are
// returned for the test to handle.
func KernelFeature(t testing.TB, err error) error {
	t.Helper()
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	if os.Getenv("FERRY_ALLOW_OLD_KERNEL") == "1" {
		t.Skipf("kernel lacks a feature (FERRY_ALLOW_OLD_KERNEL=1): %v", err)
	}
	t.Fatalf("kernel lacks a feature Ferry needs: %v (on a development machine with an older kernel, FERRY_ALLOW_OLD_KERNEL=1 skips)", err)
	return nil
}
