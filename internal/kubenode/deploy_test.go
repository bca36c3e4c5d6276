package kubenode

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/redirect"
)

// testTag is the image tag the test overlay sets (`kustomize edit set
// image`), so the test runs the image it just built and never one left
// from an earlier `make image`.
const testTag = "kubenode-test"

// TestPrivilegedRealNodeDeploy installs deploy/capture-node (node-mode
// capture, on the bridge CNI, which serves it) on a real node the way
// deploy/README.md tells users to (root from `ferry ca init`, its Secret
// and ConfigMap, then every manifest server-side applied with the node's
// overlay, Node.Overlay: the image and the node's host paths; the ConfigMap
// comes late, to check the documented symptom and recovery), and checks
// that the kubelet runs it: the CA Deployment and the agent DaemonSet become
// Ready through their readiness probes with no kubelet warning but the
// expected ones, their declared metrics ports answer, the agent gets
// certificates from `ferry ca serve` through the ferry-ca Service (resolved
// by name), and enrols a pod of a namespace labelled ambient and not one of
// an unlabelled namespace; checkTraffic then drives real pods through it. It
// then uninstalls as documented — delete every manifest — with the ambient
// namespace left in place, and checks that the agent, seeing its DaemonSet
// deleted, removed its pins and the capture rules and routes of the pod
// that was still enrolled. The default install, pod mode, is
// TestPrivilegedRealNodePodCapture's.
func TestPrivilegedRealNodeDeploy(t *testing.T) {
	testutil.Privileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	root, bins, pause := nodeAssets(ctx, t)
	tmp := t.TempDir()
	imageTar, ferry := buildFerry(ctx, t, root, tmp)

	dir := filepath.Join(os.TempDir(), "ferry-kubenode-deploy-test")
	n, err := New(Config{Dir: dir, BinDir: bins, PauseBinary: pause, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var c kubernetes.Interface
	t.Cleanup(func() {
		if t.Failed() && c != nil {
			dumpNamespace(t, c, "istio-system")
		}
		if os.Getenv("KUBENODE_KEEP") == "" {
			if err := n.Down(context.WithoutCancel(ctx)); err != nil {
				t.Errorf("Down: %v", err)
			}
			// Whatever the test failed to uninstall.
			_ = node.Cleanup(filepath.Join(n.BPFFS(), "ferry"), "")
		}
	})
	if err := n.Up(ctx); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if c, err = n.Client(); err != nil {
		t.Fatal(err)
	}
	rc, err := n.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	cluster := &kubetest.Cluster{Config: rc, Client: c, Dynamic: dyn}
	dnsCtx, dnsStop := context.WithCancel(ctx)
	dnsDone := make(chan error, 1)
	go func() { dnsDone <- ServeDNS(dnsCtx, c) }()
	defer func() {
		dnsStop()
		if err := <-dnsDone; err != nil {
			t.Errorf("ServeDNS: %v", err)
		}
	}()
	if err := n.ImportImage(ctx, imageTar); err != nil {
		t.Fatal(err)
	}
	if err := n.BuildImage(ctx, root, "./scripts/podapp", "ferry.test/podapp:1"); err != nil {
		t.Fatal(err)
	}

	// deploy/README.md's install, step by step.
	caDir := filepath.Join(tmp, "ca")
	if out, err := exec.CommandContext(ctx, ferry, "ca", "init", "--out", caDir).CombinedOutput(); err != nil {
		t.Fatalf("ferry ca init: %v\n%s", err, out)
	}
	rootCert, err := os.ReadFile(filepath.Join(caDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := os.ReadFile(filepath.Join(caDir, "root-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	const ns = "istio-system"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca-root"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": rootCert, "tls.key": rootKey},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	applied := kubetest.RenderDeploy(t, deploy.CaptureNodeOverlay)
	if err := n.Overlay(applied, testTag); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.ApplyObjects(ctx, applied, kubetest.ApplyOptions{}); err != nil {
		t.Fatalf("apply %s: %v", deploy.CaptureNodeOverlay, err)
	}

	// Until the operator creates the root ConfigMap the agent cannot start,
	// and says why (deploy/README.md); the kubelet retries the mount, so
	// creating it late is enough.
	waitCtx, waitCancel := context.WithTimeout(ctx, 4*time.Minute)
	defer waitCancel()
	if err := Poll(waitCtx, 0, func() error {
		evs, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "Pod" && strings.HasPrefix(e.InvolvedObject.Name, "ferry-") && !strings.HasPrefix(e.InvolvedObject.Name, "ferry-ca-") &&
				e.Reason == "FailedMount" && strings.Contains(e.Message, `configmap "ferry-ca-root-cert" not found`) {
				return nil
			}
		}
		return fmt.Errorf("no FailedMount event for the agent's ferry-ca-root-cert among %d events", len(evs.Items))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca-root-cert"},
		Data:       map[string]string{"root-cert.pem": string(rootCert)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The kubelet's readiness probes pass: the Deployment's and the
	// DaemonSet's ready counts come from them.
	if err := Poll(waitCtx, 0, func() error {
		d, err := c.AppsV1().Deployments(ns).Get(ctx, "ferry-ca", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Spec.Replicas == nil || d.Status.ReadyReplicas != *d.Spec.Replicas || d.Status.UpdatedReplicas != *d.Spec.Replicas {
			return fmt.Errorf("deployment ferry-ca: %d/%d ready", d.Status.ReadyReplicas, *d.Spec.Replicas)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("CA Deployment ready %v after apply", time.Since(start).Round(time.Millisecond))
	if err := Poll(waitCtx, 0, func() error {
		ds, err := c.AppsV1().DaemonSets(ns).Get(ctx, "ferry", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ds.Status.DesiredNumberScheduled != 1 || ds.Status.NumberReady != 1 {
			return fmt.Errorf("daemonset ferry: %d/%d ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent DaemonSet ready %v after apply", time.Since(start).Round(time.Millisecond))

	// What the kubelet reported on the way: a warning other than the
	// missing ConfigMap (and a readiness or startup probe failing before
	// the process listens) is a finding about the manifests.
	evs, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Reported when the test ends, after the subtests: CI shows a failed
	// run's last lines.
	var unexpected []string
	defer func() {
		for _, u := range unexpected {
			t.Errorf("unexpected warning event during install %s", u)
		}
	}()
	for _, e := range evs.Items {
		if e.Type != corev1.EventTypeWarning {
			continue
		}
		t.Logf("warning event %s %s: %s: %s (x%d)", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message, e.Count)
		// The kubelet's first secret or ConfigMap mount can time out while
		// its watch cache syncs on a busy machine; it retries, and the pod
		// became Ready above.
		expected := e.Reason == "FailedMount" && strings.Contains(e.Message, "ferry-ca-root-cert") ||
			e.Reason == "FailedMount" && strings.Contains(e.Message, "failed to sync ") ||
			e.Reason == "Unhealthy" && (strings.HasPrefix(e.Message, "Readiness probe failed") || strings.HasPrefix(e.Message, "Startup probe failed"))
		if !expected {
			unexpected = append(unexpected, fmt.Sprintf("%s %s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message))
		}
	}

	// What a Prometheus following the manifests scrapes: the agent's
	// prometheus.io/port on its pod IP (the node's), the CA's
	// http-monitoring port on each CA pod.
	pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		port := p.Annotations["prometheus.io/port"]
		for _, ct := range p.Spec.Containers {
			for _, cp := range ct.Ports {
				if cp.Name == "http-monitoring" {
					port = fmt.Sprint(cp.ContainerPort)
				}
			}
		}
		if port == "" {
			t.Errorf("pod %s: no metrics port declared", p.Name)
			continue
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, port) + "/metrics"
		if _, err := testutil.HTTPGet(ctx, url); err != nil {
			t.Errorf("pod %s metrics: %v", p.Name, err)
		}
	}

	// The agent dials ferry-ca.istio-system.svc:15012: ServeDNS answers the
	// ClusterIP, and kube-proxy has programmed it.
	svc, err := c.CoreV1().Services(ns).Get(ctx, "ferry-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitKubeProxy(ctx, svc.Spec.ClusterIP); err != nil {
		t.Fatal(err)
	}

	// A namespace labelled ambient and one not.
	for _, name := range []string{"ambient-on", "ambient-off"} {
		labels := map[string]string{}
		if name == "ambient-on" {
			labels["istio.io/dataplane-mode"] = "ambient"
		}
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitSA(waitCtx, c.CoreV1().ServiceAccounts(name).Get); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CoreV1().Pods(name).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{
					Name: "web", Image: "ferry.test/podapp:1", ImagePullPolicy: corev1.PullNever,
					Args: []string{"serve", "--addr", ":8000", "--name", name + "/web"},
				}},
			},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	const redirection = "ambient.istio.io/redirection"
	var onIP string
	if err := Poll(waitCtx, 0, func() error {
		p, err := c.CoreV1().Pods("ambient-on").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Annotations[redirection] != "enabled" {
			return fmt.Errorf("pod ambient-on/web: %s = %q, phase %s", redirection, p.Annotations[redirection], p.Status.Phase)
		}
		onIP = p.Status.PodIP
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	off, err := WaitPod(waitCtx, c, "ambient-off", "web", PodRunning)
	if err != nil {
		t.Fatal(err)
	}

	// The agent's own view (admin port on the node's loopback: it runs in
	// the host network namespace): ready, the enrolled pod captured and
	// its identity's certificate issued by the CA through the Service.
	var dump node.ConfigDump
	identity := "spiffe://cluster.local/ns/ambient-on/sa/default"
	if err := Poll(waitCtx, 0, func() error {
		dump = node.ConfigDump{}
		if err := testutil.HTTPGetJSON(ctx, "http://127.0.0.1:15000"+node.FerryConfigDumpPath, &dump); err != nil {
			return err
		}
		if !dump.Ready || dump.Node != NodeName {
			return fmt.Errorf("config_dump: ready %v node %q pending %v", dump.Ready, dump.Node, dump.Pending)
		}
		for _, cd := range dump.Certificates {
			if cd.Identity == identity && cd.ChainPEM != "" {
				return nil
			}
		}
		return fmt.Errorf("config_dump: no certificate for %s: %+v", identity, dump.Certificates)
	}); err != nil {
		t.Fatal(err)
	}
	for _, w := range dump.Workloads {
		switch w.Address {
		case onIP:
			if !w.Captured {
				t.Errorf("enrolled pod %s/%s not captured: %+v", w.Namespace, w.Name, w)
			}
		case off.Status.PodIP:
			if w.Captured {
				t.Errorf("pod %s/%s of an unlabelled namespace captured", w.Namespace, w.Name)
			}
		}
	}
	// The certificate chains to the root the operator created.
	for _, cd := range dump.Certificates {
		if cd.Identity == identity && !chainsTo(cd.ChainPEM, rootCert) {
			t.Errorf("certificate for %s does not chain to the installed root", identity)
		}
	}
	off, err = c.CoreV1().Pods("ambient-off").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := off.Annotations[redirection]; ok {
		t.Errorf("pod of an unlabelled namespace annotated %s=%q", redirection, v)
	}

	t.Run("traffic", func(t *testing.T) { checkTraffic(t, ctx, n, c, cluster) })
	t.Run("cross-node", func(t *testing.T) { checkCrossNode(t, ctx, n, c, ferry, caDir, onIP) })
	pinDir := filepath.Join(n.BPFFS(), "ferry")

	// Uninstall as deploy/README.md says, but with a pod still enrolled
	// (the README's advice to release them first not followed): every
	// manifest is deleted.
	for _, name := range []string{"ambient-off"} {
		if err := c.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := Poll(waitCtx, 0, func() error {
		for _, name := range []string{"ambient-off"} {
			if _, err := c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("namespace %s still exists (%v)", name, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(applied)
	if err := cluster.DeleteObjects(ctx, applied); err != nil {
		t.Fatal(err)
	}
	if err := Poll(waitCtx, 0, func() error {
		pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left in %s", len(pods.Items), ns)
		}
		if _, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %s still exists (%v)", ns, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The agent saw its DaemonSet deleted and, on SIGTERM, removed its
	// capture state itself, the still-enrolled pod's included.
	rules, routes := ownedRouting(t)
	if len(rules) > 0 || len(routes) > 0 {
		t.Errorf("after kubectl delete: rules %v, routes %v", rules, routes)
	}
	if pins := listPins(pinDir); len(pins) > 0 {
		t.Errorf("after kubectl delete: pins %v", pins)
	}
	// `ferry cleanup` on the node still works, and finds nothing.
	if out, err := exec.CommandContext(ctx, ferry, "cleanup", "--bpf-pin-dir", pinDir).CombinedOutput(); err != nil {
		t.Fatalf("ferry cleanup: %v\n%s", err, out)
	}
}

// ownedRouting lists the host's policy routing rules and routes with
// Ferry's routing protocol (redirect.Protocol).
func ownedRouting(t *testing.T) (rules []string, routes []string) {
	t.Helper()
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RuleList(family)
		if err != nil {
			t.Fatalf("rules: %v", err)
		}
		for _, r := range rs {
			if r.Protocol == redirect.Protocol {
				rules = append(rules, r.String())
			}
		}
		rts, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: redirect.Protocol}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatalf("routes: %v", err)
		}
		for _, r := range rts {
			routes = append(routes, r.String())
		}
	}
	return rules, routes
}

func listPins(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, strings.TrimPrefix(p, dir+"/"))
		}
		return nil
	})
	return out
}

// chainsTo reports whether the first certificate of chain verifies up to
// root through the rest of chain.
func chainsTo(chain string, root []byte) bool {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		return false
	}
	var certs []*x509.Certificate
	rest := []byte(chain)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return false
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// dumpNamespace logs what an operator would look at: the pods' states,
// the events and the containers' last logs.
func dumpNamespace(t *testing.T, c kubernetes.Interface, ns string) {
	ctx := context.Background()
	pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Logf("pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		b, _ := json.Marshal(p.Status.ContainerStatuses)
		t.Logf("pod %s: %s %s", p.Name, p.Status.Phase, b)
		for _, ct := range p.Spec.Containers {
			tail := int64(30)
			logs, err := c.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: ct.Name, TailLines: &tail}).DoRaw(ctx)
			t.Logf("pod %s logs (%v):\n%s", p.Name, err, logs)
		}
	}
	evs, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range evs.Items {
			t.Logf("event %s %s: %s %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
}

// buildFerry builds, in dir, Ferry's image as users build it (`make image`,
// a docker archive) and the static binary the node gets as its CNI plugin.
func buildFerry(ctx context.Context, t *testing.T, root, dir string) (imageTar, ferry string) {
	t.Helper()
	imageTar = filepath.Join(dir, "ferry-image.tar")
	mk := exec.CommandContext(ctx, "make", "-C", root, "image", "TAG="+testTag, "IMAGE_TAR="+imageTar, "IMAGE_OCI="+filepath.Join(dir, "oci"))
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	ferry = filepath.Join(dir, "ferry")
	if err := BuildStatic(ctx, root, "./cmd/ferry", ferry); err != nil {
		t.Fatal(err)
	}
	return imageTar, ferry
}
