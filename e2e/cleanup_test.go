package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedCleanup checks that `ferry cleanup`, run in a node's network
// namespace after its agent was killed, restores the namespace's policy rules
// and routes exactly as they were before the agent ever ran, removes the
// agent's BPF pins, and so lets the node's pods talk in plaintext again.
func TestPrivilegedCleanup(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	tb := startTestbed(t, bins, tbOptions{spec: meshSpec, noMesh: true})
	node1 := tb.node(t, "node1")
	client, remote, legacyRemote := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/remote"), tb.pod(t, "plain/remote")

	pristine := nodeNetState(t, node1)
	tb.startAgent(t, "node1")
	tb.startAgent(t, "node2")
	tb.eventuallyGetIP(t, client, remote)
	if s := nodeNetState(t, node1); s == pristine {
		t.Fatalf("the agent installed no rule or route on node1:\n%s", s)
	}
	tb.killAgent(t, "node1")
	tb.mustFail(t, client, legacyRemote) // rules left behind: fail closed

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := testbed.Run(ctx, node1.Netns, tb.Ferry, "cleanup", "--bpf-pin-dir", node1.PinDir)
	t.Logf("ferry cleanup:\n%s", out)
	if err != nil {
		t.Fatalf("ferry cleanup: %v", err)
	}
	if s := nodeNetState(t, node1); s != pristine {
		t.Errorf("node1 after ferry cleanup:\n%s\nbefore the agent:\n%s", s, pristine)
	}
	if entries, err := os.ReadDir(node1.PinDir); err == nil && len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("pins left in %s: %v", node1.PinDir, names)
	}
	// node1's pods are no longer captured: plaintext to a non-mesh pod works.
	tb.mustGetIP(t, client, legacyRemote)

	// Cleanup is idempotent.
	if out, err := testbed.Run(ctx, node1.Netns, tb.Ferry, "cleanup", "--bpf-pin-dir", node1.PinDir); err != nil {
		t.Errorf("second ferry cleanup: %v\n%s", err, out)
	}
}

// nodeNetState is a node namespace's policy rules and routes in every table.
func nodeNetState(t testing.TB, node testbed.Node) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s string
	for _, args := range [][]string{{"ip", "rule"}, {"ip", "route", "show", "table", "all"}} {
		out, err := testbed.Run(ctx, node.Netns, args...)
		if err != nil {
			t.Fatal(err)
		}
		s += out
	}
	return s
}
