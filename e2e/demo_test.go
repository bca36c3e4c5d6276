package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedDemo runs scripts/demo (the mTLS migration walkthrough that
// `make demo` runs) and fails if any of its expectations fails.
func TestPrivilegedDemo(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script(t, "demo"))
	cmd.Env = append(os.Environ(), "FERRY_BIN="+bins.ferry, "PODAPP_BIN="+bins.podapp)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("scripts/demo:\n%s", out)
	if err != nil {
		t.Fatalf("scripts/demo: %v", err)
	}
	if !strings.Contains(string(out), "demo: all expectations met") {
		t.Error("scripts/demo did not report success")
	}
}

// TestPrivilegedRealNodeDemo runs scripts/demo-kube (the same walkthrough
// on a real kubelet node with Ferry installed from deploy/, what `make
// demo-kube` runs) and fails if any of its expectations fails.
func TestPrivilegedRealNodeDemo(t *testing.T) {
	testutil.Privileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script(t, "demo-kube"))
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("scripts/demo-kube:\n%s", out)
	if err != nil {
		t.Fatalf("scripts/demo-kube: %v", err)
	}
	if !strings.Contains(string(out), "demo-kube: all expectations met") {
		t.Error("scripts/demo-kube did not report success")
	}
}
