package kubenode

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// The second node of checkCrossNode: a network namespace joined to the
// host by a veth, with one pod namespace behind it, as the netns testbed
// builds its nodes (a /32 per pod, routed through the node).
const node2Name = "ferry-node2"

var (
	node2Host = netip.MustParseAddr("198.18.96.254") // the host's end of the veth
	node2IP   = netip.MustParseAddr("198.18.96.1")
	node2Pods = netip.MustParsePrefix("198.18.97.0/24")
	node2Pod  = netip.MustParseAddr("198.18.97.2")
)

// checkCrossNode adds a second node to the cluster: a network namespace
// registered as the Node ferry-node2, running its own `ferry agent --kube`
// against the same API server (certificates from a local CA holding the
// cluster's root, since no kubelet there can project a token), with one pod
// — a podapp server in a namespace of its own — registered as an API object
// whose status the test writes, as its kubelet would. A pod of the real
// kubelet then calls it through its Service's ClusterIP, and it calls a
// real-kubelet pod back: each crosses from one agent to the other over
// HBONE, the receiving agent counting the caller's SPIFFE identity.
func checkCrossNode(t *testing.T, ctx context.Context, n *Node, c kubernetes.Interface, ferry, caDir, onIP string) {
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	podapp := filepath.Join(t.TempDir(), "podapp")
	if err := BuildStatic(ctx, root, "./scripts/podapp", podapp); err != nil {
		t.Fatal(err)
	}
	node2, pod := testutil.NewNetNS(t), testutil.NewNetNS(t)
	wireNode2(t, node2, pod)

	// The API objects: the Node (without kubernetes.io/os, so the agent
	// DaemonSet stays off it), an ambient namespace, the pod and its Service.
	if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node2Name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.WithoutCancel(ctx)
		_ = c.CoreV1().Pods("remote").Delete(bg, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		_ = c.CoreV1().Nodes().Delete(bg, node2Name, metav1.DeleteOptions{})
	})
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "remote", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitSA(ctx, c.CoreV1().ServiceAccounts("remote").Get); err != nil {
		t.Fatal(err)
	}
	web := servePod("web")
	web.Spec.NodeName = node2Name
	if web, err = c.CoreV1().Pods("remote").Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: node2Pod.String(), PodIPs: []corev1.PodIP{{IP: node2Pod.String()}},
		HostIP: node2IP.String(), StartTime: &metav1.Time{Time: time.Now()},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := c.CoreV1().Pods("remote").UpdateStatus(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CoreV1().Services("remote").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8000)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitKubeProxy(ctx, svc.Spec.ClusterIP, node2Pod.String()); err != nil {
		t.Fatal(err)
	}

	// The pod's server and node2's agent.
	start(t, "podapp", pod, podapp, "serve", "--addr", ":8000", "--name", "remote/web")
	pinDir := filepath.Join(n.BPFFS(), "ferry-node2")
	// Registered first, so it runs after the agent has stopped.
	t.Cleanup(func() {
		cmd := exec.Command("nsenter", "--net="+node2.Path(), ferry, "cleanup", "--bpf-pin-dir", pinDir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("ferry cleanup on node2: %v\n%s", err, out)
		}
	})
	start(t, "ferry-node2-agent", node2, ferry, "agent", "--kube", "--kubeconfig", n.Kubeconfig(), "--node", node2Name,
		"--redirect", "ebpf", "--capture", "node", "--bpf-pin-dir", pinDir, "--drain-timeout", "1s",
		"--ca-cert", filepath.Join(caDir, "root-cert.pem"), "--ca-key", filepath.Join(caDir, "root-key.pem"))
	if _, err := waitAnnotation(ctx, c, "remote", "web", "enabled"); err != nil {
		t.Fatal(err)
	}
	node2Metrics := "http://" + node2IP.String() + ":15020/metrics"

	t.Run("real-kubelet pod to the other node's pod through its ClusterIP", func(t *testing.T) {
		before := scrapeURL(ctx, t, node2Metrics)
		code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", "http://"+svc.Spec.ClusterIP+"/ip")
		if code != "200" || body != ip {
			t.Fatalf("status %s, the remote pod saw %q; want 200 and the client's own address %s", code, body, ip)
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls",
			"source_principal": "spiffe://cluster.local/ns/ambient-on/sa/default", "destination_workload": "web",
			"destination_workload_namespace": "remote"}
		if d := opened(before, scrapeURL(ctx, t, node2Metrics), want); d != 1 {
			t.Errorf("node2's agent counted %v mTLS connections from the client, want 1", d)
		}
	})

	t.Run("the other node's pod to a real-kubelet pod", func(t *testing.T) {
		before := scrape(ctx, t)
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+pod.Path(), podapp, "get", "http://"+onIP+":8000/ip", "--timeout", "5s").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "200\n"+node2Pod.String() {
			t.Fatalf("podapp get from node2's pod: %v, %q; want 200 and %s", err, out, node2Pod)
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls",
			"source_principal": "spiffe://cluster.local/ns/remote/sa/default", "destination_workload_namespace": "ambient-on"}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("the real node's agent counted %v mTLS connections from node2's pod, want 1", d)
		}
	})
}

// wireNode2 joins node2 to the host and pod to node2, with owned links
// only: the host's end of the veth goes away with node2's namespace.
func wireNode2(t *testing.T, node2, pod *testutil.NetNS) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ferrykn-n2"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(node2.FD())}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("veth to node2: %v", err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("ferrykn-n2"); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	steps := []struct {
		ns   *testutil.NetNS
		args string
	}{
		{nil, "addr add " + node2Host.String() + "/32 dev ferrykn-n2"},
		{nil, "link set ferrykn-n2 up"},
		{nil, "route add " + node2IP.String() + "/32 dev ferrykn-n2"},
		{nil, "route add " + node2Pods.String() + " via " + node2IP.String() + " dev ferrykn-n2"},
		{node2, "link set lo up"},
		{node2, "addr add " + node2IP.String() + "/32 dev eth0"},
		{node2, "link set eth0 up"},
		{node2, "route add " + node2Host.String() + "/32 dev eth0"},
		{node2, "route add default via " + node2Host.String() + " dev eth0"},
		{node2, "link add vpod type veth peer name eth0 netns " + pod.Path()},
		{node2, "link set vpod up"},
		{node2, "route add " + node2Pod.String() + "/32 dev vpod"},
		{pod, "link set lo up"},
		{pod, "addr add " + node2Pod.String() + "/32 dev eth0"},
		{pod, "link set eth0 up"},
		{pod, "route add " + node2IP.String() + "/32 dev eth0"},
		{pod, "route add default via " + node2IP.String() + " dev eth0"},
	}
	for _, s := range steps {
		argv := append([]string{"ip"}, strings.Fields(s.args)...)
		if s.ns != nil {
			argv = append([]string{"nsenter", "--net=" + s.ns.Path()}, argv...)
		}
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	// node2 forwards for its pod, inside its own namespace.
	if out, err := exec.Command("nsenter", "--net="+node2.Path(), "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("node2 ip_forward: %v: %s", err, out)
	}
}

// start runs argv in ns until the test ends (SIGTERM, then wait), its
// output in the test's log on failure.
func start(t *testing.T, name string, ns *testutil.NetNS, argv ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, tailLines(b, 30))
		}
	})
}

func scrapeURL(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	body, err := testutil.HTTPGet(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	return body
}
