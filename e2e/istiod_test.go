package e2e

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedIstiodTestbed makes a real istiod Ferry's control plane and
// CA: the agents run on the netns testbed with --xds-addr, reading the mesh
// (pods, Services, policies translated by istiod) over workload xDS and only
// their node's pods from the API server, with workload certificates from
// istiod's CA through ztunnel's node impersonation, verified with the root
// istiod publishes in istio-ca-root-cert.
func TestPrivilegedIstiodTestbed(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	ibins := kubetest.BuildIstio(t)
	kc := kubetest.Start(t)
	kc.ApplyDeploy(t)
	istiod := kc.StartIstiod(t, ibins, kubetest.IstiodOptions{TrustedNodeAccounts: []string{"istio-system/ferry"}})
	tb := startTestbed(t, bins, tbOptions{spec: meshSpec, noMesh: true})
	client, remote := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/remote")
	legacy := tb.pod(t, "plain/client")
	node2 := tb.node(t, "node2")
	ctx := t.Context()

	kc.Namespace(t, "mesh", map[string]string{"istio.io/dataplane-mode": "ambient"})
	kc.Namespace(t, "plain", nil)
	for _, p := range tb.Pods {
		kc.ServiceAccount(t, p.Namespace, p.ServiceAccount)
		kc.CreatePod(t, kubetest.Pod{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.ServiceAccount, Node: p.Node, IP: p.IP,
			Labels: map[string]string{"app": p.Name}})
	}
	// A Service in front of mesh/remote: istiod sends it with its VIP and
	// names it in the pod's workload, so metrics carry destination_service.
	web, err := kc.Client.CoreV1().Services("mesh").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "mesh"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "remote"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8000)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	apiServer, err := url.Parse(kc.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(root, istiod.Root, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range tb.Nodes {
		agentPod := kc.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-" + n.Name, ServiceAccount: "ferry",
			Node: n.Name, IP: n.IP, HostNetwork: true, Labels: map[string]string{"app": "ferry"}})
		tokenFile := filepath.Join(dir, n.Name+"-istio-token")
		caToken := kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agentPod})
		if err := os.WriteFile(tokenFile, []byte(caToken), 0o600); err != nil {
			t.Fatal(err)
		}
		apiKubeconfig := kc.Kubeconfig(t, kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Pod: agentPod}))
		forward(t, n.Netns, apiServer.Host)
		forward(t, n.Netns, istiod.XDSAddr)
		startProcess(t, filepath.Join(tb.RunDir, "logs", "istiod-agent-"+n.Name+".log"),
			"nsenter", "--net=/var/run/netns/"+n.Netns, "--", "env", "POD_NAME="+agentPod.Name, "POD_NAMESPACE=istio-system", "POD_IP="+n.IP,
			bins.ferry, "agent", "--node", n.Name, "--kube", "--kubeconfig", apiKubeconfig,
			"--xds-addr", istiod.XDSAddr, "--ca-addr", istiod.XDSAddr, "--ca-root", root, "--ca-token-file", tokenFile,
			"--bpf-pin-dir", n.PinDir, "--capture", "node", "--log-level", "debug")
	}
	for _, n := range tb.Nodes {
		waitReady(t, tb, n)
	}

	// mTLS between pods, with certificates from istiod, and the Service
	// istiod names.
	tb.eventuallyGetIP(t, client, remote)
	if n := tb.metrics(t, node2).Sum(opened, "reporter", "destination",
		"connection_security_policy", "mutual_tls", "source_principal", client.Principal(),
		"destination_service", "web.mesh.svc.cluster.local", "destination_service_name", "web",
		"destination_service_namespace", "mesh"); n == 0 {
		t.Fatalf("node2 counted no mTLS connection from %s to web.mesh.svc.cluster.local", client.Principal())
	}

	t.Run("Service address", func(t *testing.T) {
		// No kube-proxy runs on the testbed: the client's connection to
		// the Service's address reaches the agent as it is, and the agent
		// picks the endpoint (mesh/remote, port 80 → 8000).
		url := "http://" + web.Spec.ClusterIP + ":80/ip"
		var code int
		var body string
		eventually(t, "the Service address answers", func() bool {
			code, body, err = tb.get(client, url, 2*time.Second)
			return err == nil && code == 200
		})
		if strings.TrimSpace(body) != client.IP {
			t.Errorf("the server saw %q, want the client pod's address %s", body, client.IP)
		}
		b, err := os.ReadFile(filepath.Join(tb.RunDir, "logs", "istiod-agent-node1.log"))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for line := range strings.SplitSeq(string(b), "\n") {
			found = found || strings.Contains(line, `msg="connection complete" direction=outbound mode=hbone`) &&
				strings.Contains(line, "dst.addr="+remote.IP+":8000 dst.service=web.mesh.svc.cluster.local dst.picked_by=ferry")
		}
		if !found {
			t.Errorf("node1's access log has no outbound line to %s:8000 for web.mesh picked by ferry", remote.IP)
		}
		// ferry workloads says who picks web.mesh's endpoints on node1.
		out, err := testbed.Run(ctx, tb.node(t, "node1").Netns, bins.ferry, "workloads", "--namespace", "mesh")
		if err != nil {
			t.Fatalf("ferry workloads: %v\n%s", err, out)
		}
		if !regexp.MustCompile(`(?m)^mesh\s+web\s+` + regexp.QuoteMeta(web.Spec.ClusterIP) + `\s+80→8000\s+1\s+-\s+[1-9]\d*\s+0$`).MatchString(out) {
			t.Errorf("ferry workloads does not show web.mesh's endpoints picked by Ferry:\n%s", out)
		}
	})

	apply := func(t *testing.T, yaml string) {
		t.Helper()
		if _, err := kc.Apply(ctx, []byte(yaml), kubetest.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	remove := func(t *testing.T, resource, ns, name string) {
		t.Helper()
		gvr := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: resource}
		if err := kc.Dynamic.Resource(gvr).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// deniedBy checks that node2's agent logged a denial of peer (a
	// principal, or "" for plaintext) saying why: the policy istiod sent
	// decided, not something else.
	deniedBy := func(t *testing.T, peer, why string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(tb.RunDir, "logs", "istiod-agent-node2.log"))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.Contains(line, `msg="connection denied"`) && strings.Contains(line, "peer="+peer+" ") && strings.Contains(line, why) {
				return
			}
		}
		t.Errorf("node2's agent logged no denial of peer %q with %s", peer, why)
	}
	refused := func(from, to testbed.Pod) func() bool {
		return func() bool {
			code, _, err := tb.get(from, "http://"+to.IP+":8000/ip", 2*time.Second)
			return err != nil && code == 0
		}
	}

	t.Run("STRICT", func(t *testing.T) {
		// A plaintext client reaches the enrolled pod until STRICT, which
		// istiod sends as a translated DENY policy.
		tb.eventuallyGetIP(t, legacy, remote)
		apply(t, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: mesh}
spec: {mtls: {mode: STRICT}}
`)
		eventually(t, "STRICT refuses the plaintext client", refused(legacy, remote))
		deniedBy(t, `""`, "policy=istio-system/istio_converted_static_strict")
		tb.mustGetIP(t, client, remote)
		remove(t, "peerauthentications", "mesh", "strict")
		tb.eventuallyGetIP(t, legacy, remote)
	})

	t.Run("DENY", func(t *testing.T) {
		apply(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: remote}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
`)
		eventually(t, "the DENY policy refuses the client", refused(client, remote))
		deniedBy(t, client.Principal(), "policy=mesh/deny-client")
		remove(t, "authorizationpolicies", "mesh", "deny-client")
		tb.eventuallyGetIP(t, client, remote)
	})

	t.Run("ALLOW deleted closes its connections", func(t *testing.T) {
		// Two ALLOW policies: one admits the client, the other someone
		// else. A connection held open under the first is closed once it
		// is deleted, though no DENY policy exists.
		apply(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: remote}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-other, namespace: mesh}
spec:
  selector: {matchLabels: {app: remote}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/other"]}}]}]
`)
		eventually(t, "the plaintext client is refused by the ALLOW policies", refused(legacy, remote))
		held := hold(t, tb, client, "http://"+remote.IP+":8000/ip")
		time.Sleep(time.Second)
		select {
		case err := <-held:
			t.Fatalf("held connection ended before the policy changed: %v", err)
		default:
		}

		// istiod restarts: the agents keep their state and the held
		// connection keeps working; they resync when istiod is back.
		istiod.Stop()
		time.Sleep(2 * time.Second)
		select {
		case err := <-held:
			t.Fatalf("held connection ended while istiod was down: %v", err)
		default:
		}
		tb.mustGetIP(t, client, remote)
		if err := istiod.Restart(); err != nil {
			t.Fatal(err)
		}

		remove(t, "authorizationpolicies", "mesh", "allow-client")
		select {
		case <-held:
		case <-time.After(20 * time.Second):
			t.Fatal("the held connection is still open 20 s after the ALLOW policy that admitted it was deleted")
		}
		eventually(t, "the client is refused", refused(client, remote))
		deniedBy(t, client.Principal(), `reason="denied: ALLOW policies select the workload, but none matched"`)
		remove(t, "authorizationpolicies", "mesh", "allow-other")
		tb.eventuallyGetIP(t, client, remote)
	})
}

// hold keeps one connection from pod from to url open (a request every
// 250 ms) until the test ends; the channel reports when it broke.
func hold(t testing.TB, tb *bed, from testbed.Pod, url string) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/var/run/netns/"+from.Netns, "--", tb.Podapp, "hold", url)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	})
	return done
}
