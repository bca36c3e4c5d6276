package kubenode

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/cni"
)

// TestPrivilegedRealNodePodCapture runs Ferry from deploy/ on real nodes
// whose CNI bypasses the node's routing and on the bridge one, in both
// capture modes, as issue 22's checks ask:
//
//   - macvlan, node mode (deploy/capture-node): the agent enrols the pods, yet sees
//     none of their traffic — no sk_lookup verdict, no connection counted,
//     and an AuthorizationPolicy denying the caller is not enforced;
//   - macvlan, pod mode (deploy/, the default): the agent chains ferry-cni
//     (its static binary) into the node's CNI configuration, captures each
//     enrolled pod in its own namespace before it starts, carries a pod's
//     request to another pod and to a Service (which kube-proxy could not
//     reach on macvlan) over HBONE in mTLS, and a DENY policy refuses; a
//     pod already running when its namespace is labelled is captured too,
//     its namespace found through containerd's CRI;
//   - bridge, pod mode: the same, and pods with readiness probes become and
//     stay Ready under PERMISSIVE and under STRICT: the kubelet, which runs
//     in a cgroup of its own (KubeletCgroup, the agent's --probe-cgroup),
//     sends its probes from the probe source, which the pods' capture lets
//     through (each probe passes only from that address), while a
//     hostNetwork pod's plaintext connection to a STRICT pod is refused
//     (node mode on the bridge is TestPrivilegedRealNodeDeploy's).
//
// Each install is uninstalled as deploy/README.md says (`kubectl delete`
// of what was applied) with pods still enrolled, and leaves nothing: no
// ferry-cni entry or binary, no pins, no record, no routing in the node or
// in any pod. Requests are made with `kubectl exec` in long-running pods:
// the node cannot reach macvlan pods, and a pod's requests then start after
// the agent has seen its address (a pod's very first connection is
// checked apart, by "early": it, and every probe, must pass).
func TestPrivilegedRealNodePodCapture(t *testing.T) {
	testutil.Privileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	root, bins, pause := nodeAssets(ctx, t)
	tmp := t.TempDir()
	imageTar, ferry := buildFerry(ctx, t, root, tmp)
	caDir := filepath.Join(tmp, "ca")
	if out, err := exec.CommandContext(ctx, ferry, "ca", "init", "--out", caDir).CombinedOutput(); err != nil {
		t.Fatalf("ferry ca init: %v\n%s", err, out)
	}
	a := podAssets{root: root, bins: bins, pause: pause, image: imageTar, ferry: ferry, caDir: caDir}
	before := snapshot(t)

	t.Run(CNIMacvlan, func(t *testing.T) {
		e := startPodEnv(ctx, t, a, CNIMacvlan)
		if !t.Run("node mode sees nothing", func(t *testing.T) { checkNodeModeBlind(ctx, t, e) }) {
			return
		}
		t.Run("pod mode", func(t *testing.T) { checkPodMode(ctx, t, e) })
	})
	t.Run(CNIBridge, func(t *testing.T) {
		e := startPodEnv(ctx, t, a, CNIBridge)
		t.Run("pod mode", func(t *testing.T) { checkPodMode(ctx, t, e) })
	})
	if os.Getenv("KUBENODE_KEEP") != "" {
		return
	}
	// Each node's Down ran with its subtest: nothing of either is left.
	after := snapshot(t)
	for _, c := range []struct {
		what          string
		before, after any
	}{
		{"interfaces", before.links, after.links},
		{"/run/netns", before.netns, after.netns},
		{"nft tables", before.tables, after.tables},
		{"iptables KUBE lines", before.iptables, after.iptables},
		{"sysctls", before.sysctls, after.sysctls},
		{"top-level cgroups", before.rootCgroup, after.rootCgroup},
		{"addresses on lo", before.loAddrs, after.loAddrs},
		{cniResults, before.cniResults, after.cniResults},
		{containerLogLinks, before.logLinks, after.logLinks},
	} {
		if !reflect.DeepEqual(c.before, c.after) {
			t.Errorf("%s: %v, were %v", c.what, c.after, c.before)
		}
	}
	if mps := mountPoints(podTestDir); len(mps) > 0 {
		t.Errorf("mounts left: %v", mps)
	}
	if _, err := os.Stat(podTestDir); err == nil {
		t.Errorf("%s left", podTestDir)
	}
}

// probeSource is the --probe-source of deploy/'s agent: the kubelet's
// probes to captured pods leave from it.
const probeSource = "169.254.7.127"

// readinessFrom is a readiness probe of podapp's port 8000 that passes
// only when the probe arrives from src (/ip?from=), every period seconds;
// one failure makes the pod unready.
func readinessFrom(src string, period int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ip?from=" + src, Port: intstr.FromInt32(8000)}},
		PeriodSeconds: period, FailureThreshold: 1,
	}
}

// podTestDir is the nodes' Dir.
var podTestDir = filepath.Join(os.TempDir(), "ferry-kubenode-podcapture-test")

// podAssets are what every node of the test is built from.
type podAssets struct {
	root, bins, pause, image, ferry, caDir string
}

// podEnv is one node of TestPrivilegedRealNodePodCapture with its clients.
type podEnv struct {
	a       podAssets
	n       *Node
	c       kubernetes.Interface
	rc      *rest.Config
	cluster *kubetest.Cluster
}

// startPodEnv brings up a node with cni, serves its cluster DNS and
// imports Ferry's and the test app's images; Down runs at cleanup.
func startPodEnv(ctx context.Context, t *testing.T, a podAssets, cniName string) *podEnv {
	n, err := New(Config{Dir: podTestDir, BinDir: a.bins, PauseBinary: a.pause, CNI: cniName, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := &podEnv{a: a, n: n}
	t.Cleanup(func() {
		if t.Failed() && e.c != nil {
			dumpNamespace(t, e.c, "istio-system")
		}
		if os.Getenv("KUBENODE_KEEP") != "" {
			return
		}
		if err := n.Down(context.WithoutCancel(ctx)); err != nil {
			t.Errorf("Down: %v", err)
		}
		// Whatever the test failed to uninstall (the pods' namespaces,
		// and with them their share, went with Down).
		_ = node.Cleanup(filepath.Join(n.BPFFS(), "ferry"), "")
	})
	start := time.Now()
	if err := n.Up(ctx); err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("node up with %s in %v", cniName, time.Since(start).Round(time.Millisecond))
	if e.c, err = n.Client(); err != nil {
		t.Fatal(err)
	}
	if e.rc, err = n.RESTConfig(); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(e.rc)
	if err != nil {
		t.Fatal(err)
	}
	e.cluster = &kubetest.Cluster{Config: e.rc, Client: e.c, Dynamic: dyn}
	dnsCtx, dnsStop := context.WithCancel(ctx)
	dnsDone := make(chan error, 1)
	go func() { dnsDone <- ServeDNS(dnsCtx, e.c) }()
	t.Cleanup(func() {
		dnsStop()
		if err := <-dnsDone; err != nil {
			t.Errorf("ServeDNS: %v", err)
		}
	})
	if err := n.ImportImage(ctx, a.image); err != nil {
		t.Fatal(err)
	}
	if err := n.BuildImage(ctx, a.root, "./scripts/podapp", "ferry.test/podapp:1"); err != nil {
		t.Fatal(err)
	}
	return e
}

// install applies the kustomization dir of deploy/ as deploy/README.md
// says (the root's Secret and ConfigMap first), with the node's Overlay,
// and waits for the agent and the CA to be Ready and the agent to serve.
// It returns the objects applied, for uninstall.
func (e *podEnv) install(ctx context.Context, t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	rootCert, err := os.ReadFile(filepath.Join(e.a.caDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := os.ReadFile(filepath.Join(e.a.caDir, "root-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	const ns = "istio-system"
	if _, err := e.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca-root"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": rootCert, "tls.key": rootKey},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca-root-cert"}, Data: map[string]string{"root-cert.pem": string(rootCert)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	objs := kubetest.RenderDeploy(t, dir)
	if err := e.n.Overlay(objs, testTag); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := e.cluster.ApplyObjects(ctx, objs, kubetest.ApplyOptions{}); err != nil {
		t.Fatalf("apply %s: %v", dir, err)
	}
	if err := Poll(ctx, 4*time.Minute, func() error {
		ds, err := e.c.AppsV1().DaemonSets(ns).Get(ctx, "ferry", metav1.GetOptions{})
		if err != nil {
			return err
		}
		d, err := e.c.AppsV1().Deployments(ns).Get(ctx, "ferry-ca", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ds.Status.NumberReady != 1 || d.Status.ReadyReplicas != *d.Spec.Replicas {
			return fmt.Errorf("agent %d/1 ready, CA %d/%d ready", ds.Status.NumberReady, d.Status.ReadyReplicas, *d.Spec.Replicas)
		}
		var dump node.ConfigDump
		if err := testutil.HTTPGetJSON(ctx, "http://127.0.0.1:15000"+node.FerryConfigDumpPath, &dump); err != nil {
			return err
		}
		if !dump.Ready {
			return fmt.Errorf("agent not ready: %v", dump.Pending)
		}
		return nil
	}); err != nil {
		t.Fatalf("install %s: %v", dir, err)
	}
	t.Logf("deploy/%s installed: agent and CA Ready %v after apply", dir, time.Since(start).Round(time.Millisecond))
	return objs
}

// uninstall deletes objs as `kubectl delete -k` does and waits until every
// one is gone (the namespace's and the CRDs' finalizers done).
func (e *podEnv) uninstall(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	start := time.Now()
	rev := slices.Clone(objs)
	slices.Reverse(rev)
	if err := e.cluster.DeleteObjects(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 4*time.Minute, func() error {
		left, err := e.cluster.Remaining(ctx, objs)
		if err != nil {
			return err
		}
		if len(left) > 0 {
			return fmt.Errorf("still there: %v", left)
		}
		return nil
	}); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	t.Logf("uninstalled in %v", time.Since(start).Round(time.Millisecond))
}

// workloads are the pods of one enrolled namespace: web (a server, behind
// the Service web on port 80), and client and blocked (servers too, so
// they run until deleted; requests are made in them with exec), each as
// the service account of its name.
type workloads struct {
	ns                   string
	web, client, blocked *corev1.Pod
	vip                  string
	metrics              string // the agents' metrics before the pods were created
}

// startWorkloads creates the namespace ns, labelled ambient, and its
// workloads, and waits until the agent has captured each (its redirection
// annotation). probe gives web a readiness probe that passes only from
// probeSource.
func (e *podEnv) startWorkloads(ctx context.Context, t *testing.T, ns string, probe bool) *workloads {
	t.Helper()
	if _, err := e.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitSA(ctx, e.c.CoreV1().ServiceAccounts(ns).Get); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"client", "blocked"} {
		if _, err := e.c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := e.c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8000)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := &workloads{ns: ns, vip: svc.Spec.ClusterIP, metrics: scrape(ctx, t)}
	for _, name := range []string{"web", "client", "blocked"} {
		p := servePod(name)
		p.Labels = map[string]string{"app": name}
		if name != "web" {
			p.Spec.ServiceAccountName = name
		}
		if name == "web" && probe {
			p.Spec.Containers[0].ReadinessProbe = readinessFrom(probeSource, 2)
		}
		if _, err := e.c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"web", "client", "blocked"} {
		p, err := waitAnnotation(ctx, e.c, ns, name, "enabled")
		if err != nil {
			t.Fatalf("%v%s", err, lastEvent(ctx, e.c, ns, name))
		}
		if pods[name], err = WaitPod(ctx, e.c, ns, name, PodRunning); err != nil {
			t.Fatal(err)
		}
		pods[name].Annotations = p.Annotations
	}
	w.web, w.client, w.blocked = pods["web"], pods["client"], pods["blocked"]
	return w
}

// lastEvent describes the latest warning event of pod ns/name, such as the
// runtime's sandbox failure when the CNI plugin failed it ("" if none).
func lastEvent(ctx context.Context, c kubernetes.Interface, ns, name string) string {
	evs, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return ""
	}
	var last *corev1.Event
	for i, ev := range evs.Items {
		if ev.Type == corev1.EventTypeWarning && (last == nil || !ev.LastTimestamp.Before(&last.LastTimestamp)) {
			last = &evs.Items[i]
		}
	}
	if last == nil {
		return ""
	}
	return fmt.Sprintf("; its last warning: %s: %s (x%d)", last.Reason, last.Message, last.Count)
}

// principal is the SPIFFE ID of ns's service account sa.
func principal(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

// checkNodeModeBlind installs deploy/capture-node (node mode) on a macvlan node: the
// agent enrols the pods, but their traffic never crosses the node's
// network namespace, where it captures.
func checkNodeModeBlind(ctx context.Context, t *testing.T, e *podEnv) {
	objs := e.install(ctx, t, deploy.CaptureNodeOverlay)
	w := e.startWorkloads(ctx, t, "mv-node", false)
	// Deny every connection from the namespace to web.
	applyPolicy(ctx, t, e.cluster, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-namespace, namespace: mv-node}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["mv-node"]}
`)
	before := scrape(ctx, t)
	code, body := e.execGet(ctx, t, w.ns, "client", "http://"+w.web.Status.PodIP+":8000/ip")
	after := scrape(ctx, t)
	if code != "200" || body != w.client.Status.PodIP {
		t.Errorf("client → web: status %s, web saw %q; want 200 from %s (nothing on the path to refuse it)", code, body, w.client.Status.PodIP)
	}
	lookups := metric(after, "ferry_bpf_lookups_total", nil)
	if d := lookups - metric(before, "ferry_bpf_lookups_total", nil); d != 0 || lookups != 0 {
		t.Errorf("the node's sk_lookup program counted %v verdicts (%v during the request); want none: macvlan traffic never reaches it\n%s",
			lookups, d, grep(after, "ferry_bpf_lookups_total"))
	}
	if d := metric(after, "istio_tcp_connections_opened_total", nil) - metric(before, "istio_tcp_connections_opened_total", nil); d != 0 {
		t.Errorf("the agent counted %v connections; want none", d)
	}
	// What the agent claims meanwhile.
	var dump node.ConfigDump
	if err := testutil.HTTPGetJSON(ctx, "http://127.0.0.1:15000"+node.FerryConfigDumpPath, &dump); err != nil {
		t.Fatal(err)
	}
	for _, wl := range dump.Workloads {
		if wl.Namespace == w.ns {
			t.Logf("node mode on macvlan: the agent reports %s/%s captured=%v and annotated it %q, yet saw none of its traffic",
				wl.Namespace, wl.Name, wl.Captured, w.web.Annotations["ambient.istio.io/redirection"])
		}
	}
	// Uninstall as deploy/README.md advises: release the pods first.
	if err := e.c.CoreV1().Namespaces().Delete(ctx, w.ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 2*time.Minute, func() error {
		if _, err := e.c.CoreV1().Namespaces().Get(ctx, w.ns, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("namespace %s still exists", w.ns)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.uninstall(ctx, t, objs)
	if left, err := e.n.FerryLeftovers(); err != nil || len(left) > 0 {
		t.Errorf("after uninstalling node mode: %q (%v)", left, err)
	}
}

// checkPodMode installs deploy/ (pod mode, the default) and drives enrolled pods through
// it; then uninstalls with the pods still enrolled.
func checkPodMode(ctx context.Context, t *testing.T, e *podEnv) {
	objs := e.install(ctx, t, ".")
	e.checkPlugin(t)
	ns := "pod-" + e.n.CNI()
	probed := e.n.CNI() == CNIBridge // macvlan pods cannot be reached from the node
	w := e.startWorkloads(ctx, t, ns, probed)
	e.checkCaptured(t, w)
	url := "http://" + w.web.Status.PodIP + ":8000/ip"

	t.Run("pod to pod over HBONE", func(t *testing.T) {
		before := scrape(ctx, t)
		code, body := e.execGet(ctx, t, ns, "client", url)
		if code != "200" || body != w.client.Status.PodIP {
			t.Fatalf("client → web: status %s, web saw %q; want 200 from %s", code, body, w.client.Status.PodIP)
		}
		after := scrape(ctx, t)
		if d := metric(after, "ferry_bpf_lookups_total", map[string]string{"verdict": "outbound"}) -
			metric(before, "ferry_bpf_lookups_total", map[string]string{"verdict": "outbound"}); d < 1 {
			t.Errorf("the pods' sk_lookup programs counted %v outbound verdicts, want at least 1\n%s", d, grep(after, "ferry_bpf_lookups_total"))
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls",
			"source_principal": principal(ns, "client"), "destination_workload": "web", "response_flags": "-"}
		if d := opened(before, after, want); d != 1 {
			t.Errorf("istio_tcp_connections_opened_total%v went up by %v, want 1\n%s", want, d, grep(after, "istio_tcp_connections_opened_total"))
		}
	})

	t.Run("pod to Service over HBONE", func(t *testing.T) {
		// Captured in the pod before any node DNAT: the agent picks the
		// endpoint (on macvlan, kube-proxy is not on the path at all).
		if err := WaitKubeProxy(ctx, w.vip); err != nil {
			t.Fatal(err)
		}
		before := scrape(ctx, t)
		code, body := e.execGet(ctx, t, ns, "client", "http://"+w.vip+"/ip")
		if code != "200" || body != w.client.Status.PodIP {
			t.Fatalf("client → Service web (%s): status %s, web saw %q; want 200 from %s", w.vip, code, body, w.client.Status.PodIP)
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls",
			"source_principal": principal(ns, "client"), "destination_service": "web." + ns + ".svc.cluster.local"}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("istio_tcp_connections_opened_total%v went up by %v, want 1", want, d)
		}
	})

	t.Run("AuthorizationPolicy DENY refuses", func(t *testing.T) {
		applyPolicy(ctx, t, e.cluster, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked, namespace: `+ns+`}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/`+ns+`/sa/blocked"]}
`)
		before := scrape(ctx, t)
		if code, body := e.execGet(ctx, t, ns, "blocked", url); code == "200" {
			t.Fatalf("the denied principal got through: %s %q", code, body)
		}
		want := map[string]string{"reporter": "destination", "response_flags": "DENY", "source_principal": principal(ns, "blocked")}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("the denial counted %v times, want 1 with %v", d, want)
		}
		if code, body := e.execGet(ctx, t, ns, "client", url); code != "200" || body != w.client.Status.PodIP {
			t.Errorf("another principal: status %s, web saw %q, want 200 from %s", code, body, w.client.Status.PodIP)
		}
	})

	t.Run("a namespace enrolled later is captured through the CRI", func(t *testing.T) {
		// Running before its namespace is labelled: the plugin reported it
		// as not enrolled; the agent finds its namespace from containerd.
		const late = "pod-late"
		if _, err := e.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: late}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitSA(ctx, e.c.CoreV1().ServiceAccounts(late).Get); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.CoreV1().Pods(late).Create(ctx, servePod("web"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := WaitPod(ctx, e.c, late, "web", PodRunning)
		if err != nil {
			t.Fatal(err)
		}
		patch := []byte(`{"metadata":{"labels":{"istio.io/dataplane-mode":"ambient"}}}`)
		if _, err := e.c.CoreV1().Namespaces().Patch(ctx, late, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := waitAnnotation(ctx, e.c, late, "web", "enabled"); err != nil {
			t.Fatal(err)
		}
		before := scrape(ctx, t)
		if code, body := e.execGet(ctx, t, ns, "client", "http://"+p.Status.PodIP+":8000/ip"); code != "200" || body != w.client.Status.PodIP {
			t.Errorf("client → the pod enrolled later: status %s, it saw %q, want 200 from %s", code, body, w.client.Status.PodIP)
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls",
			"source_principal": principal(ns, "client"), "destination_workload_namespace": late}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("istio_tcp_connections_opened_total%v went up by %v, want 1", want, d)
		}
		if err := e.c.CoreV1().Namespaces().Delete(ctx, late, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := Poll(ctx, 2*time.Minute, func() error {
			if _, err := e.c.CoreV1().Namespaces().Get(ctx, late, metav1.GetOptions{}); err == nil {
				return fmt.Errorf("namespace %s still exists", late)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	if probed {
		t.Run("probed pods stay Ready under PERMISSIVE", func(t *testing.T) { e.checkProbes(ctx, t, w) })
		t.Run("a probed STRICT pod is Ready, node traffic to it refused", func(t *testing.T) { e.checkStrictFromNode(ctx, t, w) })
	}

	t.Run("a pod's first connection", func(t *testing.T) {
		// A request made as the container starts, before the kubelet has
		// reported the pod's address: the agent knows it from the CNI ADD.
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "early"},
			Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever, ServiceAccountName: "client", TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{
					Name: "get", Image: "ferry.test/podapp:1", ImagePullPolicy: corev1.PullNever,
					Args: []string{"get", url, "--timeout", "5s"},
				}},
			},
		}
		if _, err := e.c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		done, err := WaitPod(ctx, e.c, ns, "early", PodDone)
		if err != nil {
			t.Fatal(err)
		}
		logs, _ := e.c.CoreV1().Pods(ns).GetLogs("early", &corev1.PodLogOptions{}).DoRaw(ctx)
		if code, body, _ := strings.Cut(strings.TrimSpace(string(logs)), "\n"); done.Status.Phase != corev1.PodSucceeded || code != "200" || strings.TrimSpace(body) != done.Status.PodIP {
			t.Errorf("a request made as the pod starts (%s): %s, output %q; want 200 and web seeing %s", done.Status.PodIP, done.Status.Phase, logs, done.Status.PodIP)
			for _, l := range agentLog(ctx, t, e.c, done.Status.PodIP+":") {
				t.Logf("agent: %s", l)
			}
		}
		// Nor was any connection to a new pod refused for want of its
		// address (the first connections to each pod).
		unknown := map[string]string{"result": "deny", "reason": "unknown destination"}
		const decisions = "ferry_authz_decisions_total"
		if d := metric(scrape(ctx, t), decisions, unknown) - metric(w.metrics, decisions, unknown); d != 0 {
			t.Errorf("the agent refused %v connections to pods it did not know since the workloads were created; want none", d)
		}
		if err := e.c.CoreV1().Pods(ns).Delete(ctx, "early", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		if err := Poll(ctx, time.Minute, func() error {
			if _, err := e.c.CoreV1().Pods(ns).Get(ctx, "early", metav1.GetOptions{}); err == nil {
				return fmt.Errorf("pod %s/early still there", ns)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	// Uninstall with the pods still enrolled: the agent takes ferry-cni out
	// of the configuration and removes the capture from every pod.
	e.uninstall(ctx, t, objs)
	if left, err := e.n.FerryLeftovers(); err != nil || len(left) > 0 {
		t.Errorf("after uninstalling pod mode: %q (%v)", left, err)
	}
	// The released pods talk plainly again.
	if code, body := e.execGet(ctx, t, ns, "client", url); code != "200" || body != w.client.Status.PodIP {
		t.Errorf("client → web after the uninstall: status %s, web saw %q, want 200 from %s", code, body, w.client.Status.PodIP)
	}
}

// checkPlugin checks what the agent installed on the node: ferry-cni
// chained last in the node's configuration list, pointed at the agent's
// socket on the node, and the agent's own binary, static, as the plugin.
func (e *podEnv) checkPlugin(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.n.CNIConfDir(), CNIConfFile))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Plugins) != 2 || conf.Plugins[0]["type"] != e.n.CNI() || conf.Plugins[1]["type"] != cni.PluginType ||
		conf.Plugins[1]["agent_socket"] != filepath.Join(e.n.RunDir(), "cni.sock") {
		t.Errorf("the node's CNI configuration: %s\nwant %s, then %s with agent_socket %s", b, e.n.CNI(), cni.PluginType, filepath.Join(e.n.RunDir(), "cni.sock"))
	}
	path := filepath.Join(e.n.CNIBinDir(), cni.PluginType)
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("the plugin: %v", err)
	}
	defer f.Close()
	libs, _ := f.ImportedLibraries()
	if slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) || len(libs) > 0 {
		t.Errorf("%s is dynamically linked (%v): the runtime runs it on the node, outside the image", path, libs)
	}
}

// checkCaptured checks the agent's record of the pods it captured (the run
// directory): w's pods, each with Ferry's routing in its namespace; and no
// Ferry routing in any other pod's.
func (e *podEnv) checkCaptured(t *testing.T, w *workloads) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.n.RunDir(), "pods.json"))
	if err != nil {
		t.Fatal(err)
	}
	var record []cni.Pod
	if err := json.Unmarshal(b, &record); err != nil {
		t.Fatal(err)
	}
	captured := map[string]bool{}
	for _, p := range record {
		captured[p.Netns] = true
		if p.Namespace != w.ns {
			t.Errorf("pod %s captured: not in an enrolled namespace", p)
		}
		r, err := FerryRouting(p.Netns)
		if err != nil || !slices.ContainsFunc(r, func(l string) bool { return strings.Contains(l, "table 15001") }) {
			t.Errorf("pod %s: Ferry's routing in its namespace %v (%v), want the capture rule", p, r, err)
		}
	}
	for _, name := range []string{"web", "client", "blocked"} {
		if !slices.ContainsFunc(record, func(p cni.Pod) bool { return p.Namespace == w.ns && p.Name == name }) {
			t.Errorf("pod %s/%s is not in the agent's record: %s", w.ns, name, b)
		}
	}
	for _, path := range e.n.PodNetns() {
		if captured[path] {
			continue
		}
		if r, err := FerryRouting(path); err != nil || len(r) > 0 {
			t.Errorf("netns %s of a pod not enrolled: %v (%v)", path, r, err)
		}
	}
	t.Logf("%d pods captured, %d sandboxes on the node", len(record), len(e.n.PodNetns()))
}

// checkProbes checks that web, whose readiness probe passes only from
// probeSource, is and stays Ready while captured under PERMISSIVE: the
// kubelet's probes leave from that address and pass the pod's capture
// uncaptured, so the kubelet counts them successful and the agent sees
// none of them.
func (e *podEnv) checkProbes(ctx context.Context, t *testing.T, w *workloads) {
	before, okBefore := scrape(ctx, t), e.probes(ctx, t, w.ns, "web", "successful")
	var ready time.Time
	start := time.Now()
	for time.Since(start) < 12*time.Second {
		p, err := e.c.CoreV1().Pods(w.ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !podReady(p) {
			t.Fatalf("web not Ready %v into the check: %+v", time.Since(start).Round(time.Second), p.Status.Conditions)
		}
		ready = readySince(p)
		time.Sleep(2 * time.Second)
	}
	want := map[string]string{"reporter": "destination", "destination_workload": "web", "destination_workload_namespace": w.ns}
	if d := opened(before, scrape(ctx, t), want); d != 0 {
		t.Errorf("the agent saw %v connections to web in 12 s; want none: the kubelet's probes pass the capture from %s", d, probeSource)
	}
	ok := e.probes(ctx, t, w.ns, "web", "successful") - okBefore
	if ok < 3 {
		t.Errorf("the kubelet counted %v successful probes of web in 12 s; want one every 2 s", ok)
	}
	e.checkUnhealthy(ctx, t, w.ns, "web", ready)
	t.Logf("web Ready throughout; %v probes passed in 12 s, each from %s, none through the agent", ok, probeSource)
}

// readySince returns when p's Ready condition last changed.
func readySince(p *corev1.Pod) time.Time {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.LastTransitionTime.Time
		}
	}
	return time.Time{}
}

// probes returns the kubelet's count of readiness probes of pod ns/name
// with result (successful, failed), from its /metrics/probes (through the
// API server's node proxy).
func (e *podEnv) probes(ctx context.Context, t *testing.T, ns, name, result string) float64 {
	t.Helper()
	b, err := e.c.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", NodeName, "proxy/metrics/probes").DoRaw(ctx)
	if err != nil {
		t.Fatalf("the kubelet's probe metrics: %v", err)
	}
	return metric(string(b), "prober_probe_total", map[string]string{"namespace": ns, "pod": name, "probe_type": "Readiness", "result": result})
}

// checkUnhealthy fails t for each probe failure of pod ns/name after it
// became Ready at ready; those before are reported, not failed (the server
// may not listen yet).
func (e *podEnv) checkUnhealthy(ctx context.Context, t *testing.T, ns, name string, ready time.Time) {
	t.Helper()
	evs, err := e.c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if ev.Reason != "Unhealthy" {
			continue
		}
		// Both times are in whole seconds: the same second is before (a
		// failure after Ready flips it, FailureThreshold 1, which the
		// caller would have seen).
		if last := ev.LastTimestamp.Time; !last.After(ready) {
			t.Logf("before %s/%s was first Ready (%s): %s: %s (x%d)", ns, name, ready.Format(time.TimeOnly), ev.Reason, ev.Message, ev.Count)
			// The probe's connection in the agent's log: "tcp SRC->DST".
			if _, rest, ok := strings.Cut(ev.Message, "tcp "); ok {
				src, _, _ := strings.Cut(rest, "->")
				for _, l := range agentLog(ctx, t, e.c, src) {
					t.Logf("agent: %s", l)
				}
			}
		} else {
			t.Errorf("%s/%s, Ready since %s: %s at %s: %s (x%d)", ns, name, ready.Format(time.TimeOnly), ev.Reason, last.Format(time.TimeOnly), ev.Message, ev.Count)
		}
	}
}

// checkStrictFromNode checks that node-originated plaintext — a hostNetwork
// pod's — reaches a PERMISSIVE pod through the capture, and is refused by
// a STRICT one, which an enrolled client still reaches over HBONE; and
// that the STRICT pod, probed by the kubelet, becomes and stays Ready: the
// kubelet's probes, and only they, leave the node from probeSource and
// pass the capture.
func (e *podEnv) checkStrictFromNode(ctx context.Context, t *testing.T, w *workloads) {
	const strictNS, hostNS = "pod-strict", "pod-hostnet"
	for _, ns := range []string{strictNS, hostNS} {
		labels := map[string]string{}
		if ns == strictNS {
			labels["istio.io/dataplane-mode"] = "ambient"
		}
		if _, err := e.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitSA(ctx, e.c.CoreV1().ServiceAccounts(ns).Get); err != nil {
			t.Fatal(err)
		}
	}
	applyPolicy(ctx, t, e.cluster, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: `+strictNS+`}
spec: {mtls: {mode: STRICT}}
`)
	strict := servePod("web")
	strict.Spec.Containers[0].ReadinessProbe = readinessFrom(probeSource, 1)
	if _, err := e.c.CoreV1().Pods(strictNS).Create(ctx, strict, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	host := servePod("node")
	host.Spec.HostNetwork = true
	host.Spec.Containers[0].Args = []string{"serve", "--addr", "127.0.0.1:0"}
	if _, err := e.c.CoreV1().Pods(hostNS).Create(ctx, host, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitAnnotation(ctx, e.c, strictNS, "web", "enabled"); err != nil {
		t.Fatal(err)
	}
	// Captured, STRICT, and Ready: the kubelet's probes passed its capture.
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	strictWeb, err := WaitPod(rctx, e.c, strictNS, "web", func(p *corev1.Pod) (bool, error) { return podReady(p), nil })
	rcancel()
	if err != nil {
		t.Fatalf("the probed STRICT pod: %v%s", err, lastEvent(ctx, e.c, strictNS, "web"))
	}
	ready := readySince(strictWeb)
	var started time.Time
	if cs := strictWeb.Status.ContainerStatuses; len(cs) == 1 && cs[0].State.Running != nil {
		started = cs[0].State.Running.StartedAt.Time
	}
	okReady := e.probes(ctx, t, strictNS, "web", "successful")
	if _, err := WaitPod(ctx, e.c, hostNS, "node", PodRunning); err != nil {
		t.Fatal(err)
	}
	before := scrape(ctx, t)
	if code, body := e.execGet(ctx, t, hostNS, "node", "http://"+w.web.Status.PodIP+":8000/ip"); code != "200" || body != GatewayIP.String() {
		t.Errorf("hostNetwork pod → PERMISSIVE web: status %s, web saw %q; want 200 from the node's %s", code, body, GatewayIP)
	}
	strictURL := "http://" + strictWeb.Status.PodIP + ":8000/ip"
	if code, body := e.execGet(ctx, t, hostNS, "node", strictURL); code == "200" {
		t.Errorf("a hostNetwork pod's plaintext reached a STRICT pod: %q", body)
	}
	want := map[string]string{"reporter": "destination", "connection_security_policy": "unknown", "response_flags": "DENY",
		"destination_workload": "web", "destination_workload_namespace": strictNS}
	if d := opened(before, scrape(ctx, t), want); d != 1 {
		t.Errorf("the agent counted %v plaintext connections refused under STRICT, want 1 (%v)", d, want)
	}
	if code, body := e.execGet(ctx, t, w.ns, "client", strictURL); code != "200" || body != w.client.Status.PodIP {
		t.Errorf("an enrolled client → the STRICT pod: status %s, web saw %q, want 200 from %s", code, body, w.client.Status.PodIP)
	}
	// It stays Ready: three more probes, every one from probeSource (the
	// only address its probe answers), none refused by the capture (the
	// count of refused plaintext above is the hostNetwork pod's alone).
	var ok float64
	if err := Poll(ctx, 15*time.Second, func() error {
		p, err := e.c.CoreV1().Pods(strictNS).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(p) {
			t.Fatalf("the STRICT pod is no longer Ready: %+v", p.Status.Conditions)
		}
		if ok = e.probes(ctx, t, strictNS, "web", "successful") - okReady; ok < 3 {
			return fmt.Errorf("%v successful probes of the STRICT pod since it became Ready, want 3", ok)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if failed := e.probes(ctx, t, strictNS, "web", "failed"); failed > 0 {
		t.Logf("%v failed probes of the STRICT pod (before it was Ready: checked below)", failed)
	}
	e.checkUnhealthy(ctx, t, strictNS, "web", ready)
	t.Logf("the STRICT pod was Ready %v after its container started, and stayed Ready for %v more probes, each from %s",
		ready.Sub(started), ok, probeSource)
	for _, ns := range []string{strictNS, hostNS} {
		if err := e.c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := Poll(ctx, 2*time.Minute, func() error {
		for _, ns := range []string{strictNS, hostNS} {
			if _, err := e.c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
				return fmt.Errorf("namespace %s still exists", ns)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// agentLog returns the agent's log lines that contain substr.
func agentLog(ctx context.Context, t *testing.T, c kubernetes.Interface, substr string) []string {
	t.Helper()
	var out []string
	for _, name := range agentPods(ctx, t, c, true) {
		b, err := c.CoreV1().Pods("istio-system").GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			t.Logf("agent %s logs: %v", name, err)
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, substr) {
				out = append(out, l)
			}
		}
	}
	return out
}

// execGet runs `podapp get URL` in pod ns/name (`kubectl exec`, through the
// kubelet: it needs no pod network) and returns the status it printed
// ("000" when the request failed) and the body.
func (e *podEnv) execGet(ctx context.Context, t *testing.T, ns, name, url string) (code, body string) {
	t.Helper()
	req := e.c.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: "web", Stdout: true, Stderr: true,
			Command: []string{"/podapp", "get", url, "--timeout", "5s"},
		}, scheme.ParameterCodec)
	ex, err := remotecommand.NewWebSocketExecutor(e.rc, "GET", req.URL().String())
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// A failed request exits 1, which the stream reports as an error: the
	// status line is what counts.
	xerr := ex.StreamWithContext(ectx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	code, body, _ = strings.Cut(stdout.String(), "\n")
	body = strings.TrimSpace(body)
	if code == "" {
		t.Fatalf("exec in %s/%s: %v: %s", ns, name, xerr, stderr.String())
	}
	t.Logf("%s/%s → %s: %s %q %s", ns, name, url, code, body, strings.TrimSpace(stderr.String()))
	return code, body
}
