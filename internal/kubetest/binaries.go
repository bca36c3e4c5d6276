package kubetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// AssetsEnv names the environment variable that points at a directory holding
// etcd and kube-apiserver, bypassing scripts/kube-test-binaries.
const AssetsEnv = "FERRY_KUBE_ASSETS"

// Binaries returns the directory holding the etcd and kube-apiserver
// executables: $FERRY_KUBE_ASSETS when set, else the cache maintained by
// scripts/kube-test-binaries, which it runs (building on first use; the
// script is idempotent, locked and takes under a second when warm). It fails
// t when the binaries cannot be provisioned.
func Binaries(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(AssetsEnv); dir != "" {
		for _, name := range []string{"etcd", "kube-apiserver"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				t.Fatalf("kubetest: $%s: %v", AssetsEnv, err)
			}
		}
		return dir
	}
	out := runScript(t, "kube-test-binaries")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	dir := lines[len(lines)-1]
	if !filepath.IsAbs(dir) {
		t.Fatalf("kubetest: kube-test-binaries printed %q, want a directory", out)
	}
	return dir
}

// runScript runs scripts/NAME of the module (a provisioning script that
// builds on first use and is quick when warm) and returns its standard
// output; its standard error goes to t's log. It fails t if the script does.
func runScript(t testing.TB, name string) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	script := filepath.Join(root, "scripts", name)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubetest: %s: %v\n%s", script, err, tail(stderr.Bytes(), 60))
	}
	if stderr.Len() > 0 {
		t.Logf("kubetest: %s:\n%s", script, tail(stderr.Bytes(), 20))
	}
	return stdout.String()
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
