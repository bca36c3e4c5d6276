package e2e

import (
	"os"
	"os/exec"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

const noMeshSpec = `
namespace mesh istio.io/dataplane-mode=ambient
namespace plain
pod mesh/a node1 sa=client
pod mesh/b node1 sa=server
pod mesh/c node2 sa=server
pod plain/d node2
`

// TestPrivilegedTestbedNoMesh checks the testbed itself: with no agents every
// pod reaches every other pod's server directly (same node and across the
// fabric), the server sees the client pod's IP, a fabric capture sees the
// plaintext requests, and teardown leaves nothing behind, including in the
// root network namespace.
func TestPrivilegedTestbedNoMesh(t *testing.T) {
	testutil.Privileged(t)
	rootBefore := rootNetState(t)
	bins := binaries{podapp: os.Getenv("PODAPP_BIN")}
	if bins.podapp == "" {
		bins.podapp = build(t, "./scripts/podapp")[0]
	}
	t.Run("testbed", func(t *testing.T) {
		tb := startTestbed(t, bins, tbOptions{spec: noMeshSpec, noMesh: true})
		for _, from := range tb.Pods {
			for _, to := range tb.Pods {
				tb.mustGetIP(t, from, to)
			}
		}
		c := tb.startCapture(t)
		tb.mustGetIP(t, tb.pod(t, "mesh/a"), tb.pod(t, "mesh/c"))
		s := summarize(c.stop(t))
		t.Logf("fabric capture: %+v", s)
		if s.httpRequests == 0 || s.plaintextApp == 0 {
			t.Errorf("no plaintext request seen on the fabric without the mesh: %+v", s)
		}
		if s.hbone != 0 {
			t.Errorf("HBONE traffic without the mesh: %+v", s)
		}
	})
	if rootAfter := rootNetState(t); rootAfter != rootBefore {
		t.Errorf("root netns rules/routes changed:\nbefore:\n%s\nafter:\n%s", rootBefore, rootAfter)
	}
}

// rootNetState is the root network namespace's policy rules and routes.
func rootNetState(t testing.TB) string {
	t.Helper()
	var s string
	for _, args := range [][]string{{"rule"}, {"route", "show", "table", "all"}} {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
		s += string(out)
	}
	return s
}
