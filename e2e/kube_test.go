package e2e

import (
	"context"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedKubeTestbed joins the real API server with the netns testbed:
// the agents run in --kube mode, reading pods, namespaces and policies through
// informers with the RBAC deploy/ installs, get their workload certificates
// from `ferry ca serve` over the Istio CA protocol (token reviewed by the API
// server, impersonation limited to pods on the agent's node), annotate the pods
// they capture, and tunnel the testbed pods' traffic.
func TestPrivilegedKubeTestbed(t *testing.T) {
	testutil.Privileged(t)
	bins := buildAll(t)
	kc := kubetest.Start(t)
	kc.ApplyDeploy(t)
	tb := startTestbed(t, bins, tbOptions{spec: meshSpec, noMesh: true})
	client, remote := tb.pod(t, "mesh/client"), tb.pod(t, "mesh/remote")
	ctx := t.Context()

	// The cluster as the API server knows it: the testbed's pods, with
	// their testbed addresses, in an ambient namespace.
	kc.Namespace(t, "mesh", map[string]string{"istio.io/dataplane-mode": "ambient"})
	kc.Namespace(t, "plain", nil)
	for _, p := range tb.Pods {
		kc.ServiceAccount(t, p.Namespace, p.ServiceAccount)
		kc.CreatePod(t, kubetest.Pod{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.ServiceAccount, Node: p.Node, IP: p.IP})
	}
	apiServer, err := url.Parse(kc.Config.Host)
	if err != nil {
		t.Fatal(err)
	}

	// The cluster CA, serving on the host's loopback with the CA's own RBAC.
	dir := t.TempDir()
	if out, err := exec.Command(bins.ferry, "ca", "init", "--out", dir).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	caAddr := freeLoopback(t)
	caKubeconfig := kc.Kubeconfig(t, kc.Token(t, "istio-system", "ferry-ca", kubetest.TokenOptions{}))
	startProcess(t, filepath.Join(tb.RunDir, "logs", "ca.log"), bins.ferry, "ca", "serve", "--listen", caAddr,
		"--ca-cert", filepath.Join(dir, "root-cert.pem"), "--ca-key", filepath.Join(dir, "root-key.pem"),
		"--server-names", "127.0.0.1", "--kubeconfig", caKubeconfig)

	// One agent per node, as the DaemonSet runs it: its own pod, a token bound
	// to that pod for the CA, and the agent service account for the API.
	for _, n := range tb.Nodes {
		agentPod := kc.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-" + n.Name, ServiceAccount: "ferry",
			Node: n.Name, IP: n.IP, HostNetwork: true, Labels: map[string]string{"app": "ferry"}})
		tokenFile := filepath.Join(dir, n.Name+"-istio-token")
		caToken := kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agentPod})
		if err := os.WriteFile(tokenFile, []byte(caToken), 0o600); err != nil {
			t.Fatal(err)
		}
		apiKubeconfig := kc.Kubeconfig(t, kc.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Pod: agentPod}))
		// The node's network namespace reaches the host's API server and CA
		// through forwarders listening on the same loopback addresses there.
		forward(t, n.Netns, apiServer.Host)
		forward(t, n.Netns, caAddr)
		startProcess(t, filepath.Join(tb.RunDir, "logs", "kube-agent-"+n.Name+".log"),
			"nsenter", "--net=/var/run/netns/"+n.Netns, "--", bins.ferry, "agent", "--node", n.Name, "--kube",
			"--kubeconfig", apiKubeconfig, "--ca-addr", caAddr, "--ca-root", filepath.Join(dir, "root-cert.pem"),
			"--ca-token-file", tokenFile, "--bpf-pin-dir", n.PinDir, "--capture", "node", "--log-level", "debug")
	}
	for _, n := range tb.Nodes {
		waitReady(t, tb, n)
	}

	// Traffic is captured and tunnelled, with certificates from the CA.
	tb.eventuallyGetIP(t, client, remote)
	node2 := tb.node(t, "node2")
	if n := tb.metrics(t, node2).Sum(opened, "reporter", "destination",
		"connection_security_policy", "mutual_tls", "source_principal", client.Principal()); n == 0 {
		t.Fatalf("node2 counted no mTLS connection from %s", client.Principal())
	}

	// The agents annotate the pods they capture, as istio-cni does.
	annotation := func(p testbed.Pod) string {
		pod, err := kc.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return pod.Annotations["ambient.istio.io/redirection"]
	}
	eventually(t, "client pod annotated", func() bool { return annotation(client) == "enabled" })

	// A DENY policy applied through the API server is enforced.
	policies := kc.Dynamic.Resource(schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"})
	deny, err := kubetest.DecodeYAML([]byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: mesh}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/mesh/sa/client"]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policies.Namespace("mesh").Create(ctx, deny[0], metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the DENY policy refuses the client", func() bool {
		code, _, err := tb.get(client, "http://"+remote.IP+":8000/ip", 2*time.Second)
		return err != nil && code == 0
	})
	if err := policies.Namespace("mesh").Delete(ctx, "deny-client", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tb.eventuallyGetIP(t, client, remote)

	// Unlabelling the namespace releases the pods: annotation removed, and
	// traffic flows uncaptured.
	ns, err := kc.Client.CoreV1().Namespaces().Get(ctx, "mesh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(ns.Labels, "istio.io/dataplane-mode")
	if _, err := kc.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "client pod annotation removed", func() bool { return annotation(client) == "" })
	tb.eventuallyGetIP(t, client, remote)
}

// eventually polls cond for up to 30 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 120 {
		if cond() {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("timed out: %s", what)
}

// waitReady waits for node's agent readiness endpoint.
func waitReady(t testing.TB, tb *bed, n testbed.Node) {
	t.Helper()
	var out string
	for range 120 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		o, err := testbed.Run(ctx, n.Netns, tb.Podapp, "get", "http://127.0.0.1:15021/healthz/ready", "--expect-code", "200")
		cancel()
		if err == nil {
			return
		}
		out = o
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("agent on %s never ready: %s", n.Name, out)
}

// freeLoopback returns a free 127.0.0.1:port.
func freeLoopback(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProcess runs a command until the test ends, its output in logPath
// (dumped on failure).
func startProcess(t testing.TB, logPath, name string, args ...string) {
	t.Helper()
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(unix.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s:\n%s", logPath, b)
		}
	})
}

// listenInNetns opens a listener on addr inside the named network namespace.
func listenInNetns(t testing.TB, ns, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := netns.DoNamed(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	return ln
}

// forward listens on addr inside the network namespace netns and relays each
// connection to addr in this (the root) namespace, until the test ends.
func forward(t testing.TB, netns, addr string) {
	t.Helper()
	ln := listenInNetns(t, netns, "tcp4", addr)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp4", addr, 5*time.Second)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
				io.Copy(in, out)
			}()
		}
	}()
}
