package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedPodCapture runs the data plane with --capture pod: each
// agent captures its enrolled pods inside their own network namespaces,
// handed over by the real ferry-cni plugin (the testbed runs it for every
// pod, as a container runtime would).
func TestPrivilegedPodCapture(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	tb := startTestbed(t, bins, tbOptions{spec: meshSpec, capture: "pod"})
	client, local, remote := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/local"), tb.pod(t, "mesh/remote")
	legacy, legacyRemote := tb.pod(t, "plain/client"), tb.pod(t, "plain/remote")
	node1, node2 := tb.node(t, "node1"), tb.node(t, "node2")

	// The plugin reported every pod; only the enrolled ones hold Ferry's
	// routing in their namespaces.
	for _, n := range []testbed.Node{node1, node2} {
		pods := 0
		for _, p := range tb.Pods {
			if p.Node == n.Name {
				pods++
			}
		}
		if got := tb.metrics(t, n).Sum("ferry_cni_requests_total", "op", "add", "result", "ok"); got != float64(pods) {
			t.Errorf("%s: %v CNI adds answered ok, want %d (one per pod)", n.Name, got, pods)
		}
	}
	for _, p := range tb.Pods {
		if got := hasPodRouting(t, p); got != p.Enrolled {
			t.Errorf("pod %s: Ferry's routing in its namespace: %v, want %v (enrolled)", p, got, p.Enrolled)
		}
	}

	t.Run("cross-node", func(t *testing.T) {
		before := tb.metrics(t, node2).Sum(opened, "reporter", "destination", "connection_security_policy", "mutual_tls",
			"source_principal", client.Principal(), "destination_workload", remote.Name)
		c := tb.startCapture(t)
		tb.mustGetIP(t, client, remote)
		s := summarize(c.stop(t))
		if after := tb.metrics(t, node2).Sum(opened, "reporter", "destination", "connection_security_policy", "mutual_tls",
			"source_principal", client.Principal(), "destination_workload", remote.Name); after <= before {
			t.Errorf("node2 mutual_tls connections %s → %s: %v before, %v after; want an increase", client, remote, before, after)
		}
		if s.httpRequests != 0 || s.plaintextApp != 0 || s.hbone == 0 {
			t.Errorf("fabric: %+v; want HBONE only", s)
		}
		// The pod programs, not the node's, handed the connection over.
		if n := tb.metrics(t, node1).Sum("ferry_bpf_lookups_total", "verdict", "outbound"); n == 0 {
			t.Error("node1: no outbound verdict from the pod programs")
		}
		if n := tb.metrics(t, node2).Sum("ferry_bpf_lookups_total", "verdict", "hbone"); n == 0 {
			t.Error("node2: no hbone verdict from the pod programs")
		}
	})
	t.Run("same-node", func(t *testing.T) { tb.mustGetIP(t, client, local) })
	t.Run("plaintext-inbound", func(t *testing.T) { tb.mustGetIP(t, legacy, remote) })
	t.Run("passthrough", func(t *testing.T) { tb.mustGetIP(t, client, legacyRemote) })

	t.Run("strict-probes-and-node-traffic", func(t *testing.T) {
		strict := filepath.Join(tb.Manifests, "strict.yaml")
		if err := os.WriteFile(strict, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"+
			"metadata: {name: strict, namespace: mesh}\nspec: {mtls: {mode: STRICT}}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(strict)
		// A plaintext client is refused once the agents have the policy.
		refusedPlain := false
		for range 40 {
			if code, _, err := tb.get(legacy, "http://"+remote.IP+":8000/ip", 2*time.Second); err != nil && code == 0 {
				refusedPlain = true
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if !refusedPlain {
			t.Fatal("STRICT never refused the plaintext pod")
		}
		tb.mustGetIP(t, client, remote) // mutual TLS still passes
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		url := "http://" + remote.IP + ":8000/ip"
		// Node traffic (a hostNetwork pod, a node process) is captured
		// like a plaintext client's, and refused.
		if out, err := testbed.Run(ctx, node2.Netns, tb.Podapp, "get", url, "--timeout", "2s"); err == nil {
			t.Errorf("node process reached the STRICT pod: %q", out)
		}
		// The kubelet's probe leaves from the probe source and passes.
		out, err := tb.Probe(ctx, node2, tb.Podapp, "get", url, "--timeout", "2s", "--expect-code", "200")
		if err != nil {
			t.Fatalf("kubelet probe: %v", err)
		}
		if _, body, _ := strings.Cut(out, "\n"); strings.TrimSpace(body) != testbed.ProbeSource {
			t.Errorf("the pod saw the probe from %q, want %s", strings.TrimSpace(body), testbed.ProbeSource)
		}
		// The kubelet restarts: systemd removes its cgroup and makes a new
		// one at the same path. The agent moves the probe program to it,
		// and probes pass again.
		cg := tb.KubeletCgroup(node2)
		if err := os.Remove(cg); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		var probeErr error
		for range 40 {
			if _, probeErr = tb.Probe(ctx, node2, tb.Podapp, "get", url, "--timeout", "1s", "--expect-code", "200"); probeErr == nil {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if probeErr != nil {
			t.Fatalf("kubelet probe after the kubelet's cgroup was made anew: %v", probeErr)
		}
	})

	t.Run("restart-adopts", func(t *testing.T) {
		if err := tb.RestartAgent("node2"); err != nil {
			t.Fatal(err)
		}
		if err := tb.WaitReady(t.Context(), "node2", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		tb.eventuallyGetIP(t, client, remote)
	})

	t.Run("killed-agent-fails-closed", func(t *testing.T) {
		tb.killAgent(t, "node2")
		tb.mustFail(t, client, remote)
		tb.mustFail(t, legacy, remote)
		tb.mustGetIP(t, legacy, legacyRemote)
		tb.startAgent(t, "node2")
		tb.eventuallyGetIP(t, client, remote)
	})

	t.Run("cni-del-releases", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := tb.CNI(ctx, "DEL", local); err != nil {
			t.Fatal(err)
		}
		if hasPodRouting(t, local) {
			t.Errorf("pod %s keeps Ferry's routing after DEL", local)
		}
		// Another pod's capture is untouched.
		tb.mustGetIP(t, client, remote)
	})

	t.Run("cleanup", func(t *testing.T) {
		if err := tb.StopAgent("node1", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		out, err := testbed.Run(ctx, node1.Netns, bins.ferry, "cleanup", "--bpf-pin-dir", node1.PinDir, "--state-dir", tb.RunDir+"/state/node1")
		if err != nil {
			t.Fatalf("ferry cleanup: %v: %s", err, out)
		}
		if hasPodRouting(t, client) {
			t.Errorf("pod %s keeps Ferry's routing after ferry cleanup", client)
		}
		tb.mustGetIP(t, client, legacyRemote) // uncaptured now, as plain TCP
	})
}

// hasPodRouting reports whether pod's namespace holds Ferry's capture rule.
func hasPodRouting(t testing.TB, p testbed.Pod) bool {
	t.Helper()
	out, err := exec.Command("ip", "-n", p.Netns, "rule", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip rule in %s: %v: %s", p, err, out)
	}
	return strings.Contains(string(out), "lookup 15001")
}
