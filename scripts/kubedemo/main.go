package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubenode"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node"
)

func main() {
	fs := flag.NewFlagSet("kubedemo", flag.ExitOnError)
	d := &demo{out: os.Stdout}
	fs.StringVar(&d.binDir, "bin-dir", "", "Kubernetes binaries (scripts/kube-test-binaries --node)")
	fs.StringVar(&d.pause, "pause", "", "the pause binary (internal/kubenode/pause)")
	fs.StringVar(&d.ferry, "ferry", "", "a static ferry binary (ferry ca init, ferry policies, ferry cleanup)")
	fs.StringVar(&d.image, "image", "", "Ferry's image archive (make image)")
	fs.StringVar(&d.tag, "tag", "", "the image's tag (make image TAG=…)")
	fs.StringVar(&d.root, "root", ".", "the repository (for the podapp image)")
	fs.BoolVar(&d.keep, "keep", false, "leave the node up at the end (scripts/kube-node down --dir DIR removes it)")
	fs.StringVar(&d.capture, "capture", "pod", "the agent's capture mode: pod (deploy/: in each pod's network namespace, handed over by the ferry-cni plugin) or node (deploy/capture-node: in the node's)")
	fs.Parse(os.Args[1:])
	if d.capture != "node" && d.capture != "pod" {
		fmt.Fprintf(os.Stderr, "demo-kube: --capture %q: want node or pod\n", d.capture)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := d.run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-kube: %v (in step %q)\n", err, d.step)
		os.Exit(1)
	}
	if len(d.failures) > 0 {
		fmt.Fprintf(d.out, "\ndemo-kube: %d expectation(s) failed (%s):\n", len(d.failures), time.Since(d.start).Round(time.Second))
		for _, f := range d.failures {
			fmt.Fprintf(d.out, "  %s\n", f)
		}
		os.Exit(1)
	}
	fmt.Fprintf(d.out, "\ndemo-kube: all expectations met (%s)\n", time.Since(d.start).Round(time.Second))
}

type demo struct {
	out                                    io.Writer
	binDir, pause, ferry, image, tag, root string
	keep                                   bool
	capture                                string // node or pod
	applied                                []*unstructured.Unstructured

	start    time.Time
	step     string
	failures []string
	n        *kubenode.Node
	c        kubernetes.Interface
	rc       *rest.Config
	cluster  *kubetest.Cluster
}

func (d *demo) stepf(format string, args ...any) {
	d.step = fmt.Sprintf(format, args...)
	fmt.Fprintf(d.out, "\n=== %s ===\n", d.step)
}

func (d *demo) check(desc string, ok bool) {
	if ok {
		fmt.Fprintf(d.out, "  ok    %s\n", desc)
		return
	}
	fmt.Fprintf(d.out, "  FAIL  %s\n", desc)
	d.failures = append(d.failures, d.step+": "+desc)
}

func (d *demo) run(ctx context.Context) (err error) {
	d.start = time.Now()
	if os.Geteuid() != 0 {
		return errors.New("needs root (a kubelet, containerd, eBPF): sudo make demo-kube")
	}
	d.stepf("Setup: a real node (kubelet, containerd, kube-proxy), Ferry installed from deploy/%s", d.overlay())
	dir, err := os.MkdirTemp("", "ferry-demo-kube.")
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(os.TempDir(), filepath.Base(dir)+".log"))
	if err != nil {
		return err
	}
	defer func() {
		logf.Close()
		// The node's log is kept only when something went wrong.
		if err == nil && len(d.failures) == 0 {
			os.Remove(logf.Name())
		} else {
			fmt.Fprintf(d.out, "demo-kube: the node's progress log: %s\n", logf.Name())
		}
	}()
	d.n, err = kubenode.New(kubenode.Config{Dir: dir, BinDir: d.binDir, PauseBinary: d.pause, Logger: slog.New(slog.NewTextHandler(logf, nil))})
	if err != nil {
		return err
	}
	defer func() {
		if d.keep {
			fmt.Fprintf(d.out, "demo-kube: node left up: KUBECONFIG=%s; scripts/kube-node down --dir %s removes it\n", d.n.Kubeconfig(), dir)
			return
		}
		// Whatever the demo did not get to uninstall.
		_ = exec.Command(d.ferry, "cleanup", "--bpf-pin-dir", filepath.Join(d.n.BPFFS(), "ferry"), "--state-dir", d.n.RunDir()).Run()
		if derr := d.n.Down(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, fmt.Errorf("node down: %w", derr))
		}
	}()
	if err := d.n.Up(ctx); err != nil {
		return fmt.Errorf("node up: %w (log: %s)", err, logf.Name())
	}
	if d.c, err = d.n.Client(); err != nil {
		return err
	}
	if d.rc, err = d.n.RESTConfig(); err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(d.rc)
	if err != nil {
		return err
	}
	d.cluster = &kubetest.Cluster{Config: d.rc, Client: d.c, Dynamic: dyn}
	dnsCtx, dnsStop := context.WithCancel(ctx)
	defer dnsStop()
	go kubenode.ServeDNS(dnsCtx, d.c)
	fmt.Fprintf(d.out, "  node %s up: pods %v, Services %v; KUBECONFIG=%s\n", kubenode.NodeName, kubenode.PodCIDR, kubenode.ServiceCIDR, d.n.Kubeconfig())
	if err := d.n.ImportImage(ctx, d.image); err != nil {
		return err
	}
	if err := d.n.BuildImage(ctx, d.root, "./scripts/podapp", "ferry.test/podapp:1"); err != nil {
		return err
	}
	if err := d.install(ctx, dir); err != nil {
		return err
	}
	if err := d.workloads(ctx); err != nil {
		return err
	}
	if err := d.walkthrough(ctx); err != nil {
		return err
	}
	if err := d.metrics(ctx); err != nil {
		return err
	}
	if !d.keep {
		return d.uninstall(ctx)
	}
	return nil
}

// overlay is the kustomization of deploy/ the demo installs: "" (deploy/
// itself) or capture-node.
func (d *demo) overlay() string {
	if d.capture == "node" {
		return deploy.CaptureNodeOverlay
	}
	return ""
}

// install follows deploy/README.md: a root from `ferry ca init`, its Secret
// and ConfigMap, every manifest of deploy/ (or deploy/capture-node)
// server-side applied (with kubenode's overlay: the image tag, and the
// node's own bpffs, CNI directories, network namespaces and run directory
// in place of the host's).
func (d *demo) install(ctx context.Context, dir string) error {
	caDir := filepath.Join(dir, "ca")
	if out, err := exec.CommandContext(ctx, d.ferry, "ca", "init", "--out", caDir).CombinedOutput(); err != nil {
		return fmt.Errorf("ferry ca init: %w\n%s", err, out)
	}
	rootCert, err := os.ReadFile(filepath.Join(caDir, "root-cert.pem"))
	if err != nil {
		return err
	}
	rootKey, err := os.ReadFile(filepath.Join(caDir, "root-key.pem"))
	if err != nil {
		return err
	}
	const ns = "istio-system"
	if _, err := d.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := d.c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca-root"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": rootCert, "tls.key": rootKey},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := d.c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "ferry-ca-root-cert"}, Data: map[string]string{"root-cert.pem": string(rootCert)},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	objs, err := kubetest.Render(deploy.FS(), cmp.Or(d.overlay(), "."))
	if err != nil {
		return err
	}
	if err := d.n.Overlay(objs, d.tag); err != nil {
		return err
	}
	if _, err := d.cluster.ApplyObjects(ctx, objs, kubetest.ApplyOptions{}); err != nil {
		return fmt.Errorf("apply deploy/%s: %w", d.overlay(), err)
	}
	d.applied = objs
	fmt.Fprintf(d.out, "  $ kubectl apply --server-side -k deploy/%s   (image tag %s)\n", d.overlay(), d.tag)
	err = kubenode.Poll(ctx, 4*time.Minute, func() error {
		ds, err := d.c.AppsV1().DaemonSets(ns).Get(ctx, "ferry", metav1.GetOptions{})
		if err != nil {
			return err
		}
		dep, err := d.c.AppsV1().Deployments(ns).Get(ctx, "ferry-ca", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ds.Status.NumberReady != 1 || dep.Status.ReadyReplicas != *dep.Spec.Replicas {
			return fmt.Errorf("agent DaemonSet %d/1 ready, CA Deployment %d/%d ready", ds.Status.NumberReady, dep.Status.ReadyReplicas, *dep.Spec.Replicas)
		}
		return nil
	})
	d.check("the agent DaemonSet and the CA Deployment are Ready (kubelet probes)", err == nil)
	if err != nil {
		return err
	}
	if d.capture == "pod" {
		b, err := os.ReadFile(filepath.Join(d.n.CNIConfDir(), kubenode.CNIConfFile))
		if err != nil {
			return err
		}
		var conf struct {
			Plugins []struct {
				Type string `json:"type"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(b, &conf); err != nil {
			return err
		}
		var types []string
		for _, p := range conf.Plugins {
			types = append(types, p.Type)
		}
		fmt.Fprintf(d.out, "  the node's CNI configuration (%s) now chains: %s\n", kubenode.CNIConfFile, strings.Join(types, " → "))
		d.check("the agent chained ferry-cni after the node's network plugin", slices.Equal(types, []string{d.n.CNI(), "ferry-cni"}))
	}
	return nil
}

// workloads makes Istio's sample: httpbin (with a Service) in foo and bar,
// curl in foo, bar and legacy; foo and bar are ambient. httpbin has a
// readiness probe, which must keep passing once the mesh is STRICT.
func (d *demo) workloads(ctx context.Context) error {
	for _, ns := range []string{"foo", "bar", "legacy"} {
		labels := map[string]string{}
		if ns != "legacy" {
			labels["istio.io/dataplane-mode"] = "ambient"
		}
		if _, err := d.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			return err
		}
		for _, sa := range []string{"httpbin", "curl"} {
			if _, err := d.c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		apps := []string{"curl"}
		if ns != "legacy" {
			apps = append(apps, "httpbin")
			if _, err := d.c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "httpbin"},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "httpbin"},
					Ports: []corev1.ServicePort{{Name: "http", Port: 8000, TargetPort: intstr.FromInt32(8000)}}},
			}, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		for _, app := range apps {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: app, Labels: map[string]string{"app": app}},
				Spec: corev1.PodSpec{
					ServiceAccountName: app, TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{
						Name: app, Image: "ferry.test/podapp:1", ImagePullPolicy: corev1.PullNever,
						Args: []string{"serve", "--addr", ":8000", "--name", ns + "/" + app},
					}},
				},
			}
			if app == "httpbin" {
				// Three failures before the endpoint goes: one slow probe on
				// a loaded node must not make kube-proxy refuse legacy's
				// requests. Step 3 still counts every failed probe.
				pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8000)}},
					PeriodSeconds: 1, FailureThreshold: 3,
				}
			}
			if _, err := d.c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
	}
	// Ready once running and, in ambient namespaces, captured by the agent
	// (the annotation it sets).
	for _, ns := range []string{"foo", "bar", "legacy"} {
		for _, app := range []string{"curl", "httpbin"} {
			if ns == "legacy" && app == "httpbin" {
				continue
			}
			err := kubenode.Poll(ctx, 2*time.Minute, func() error {
				p, err := d.c.CoreV1().Pods(ns).Get(ctx, app, metav1.GetOptions{})
				if err != nil {
					return err
				}
				want := ns != "legacy"
				if p.Status.Phase != corev1.PodRunning || (p.Annotations["ambient.istio.io/redirection"] == "enabled") != want {
					return fmt.Errorf("pod %s/%s: %s, redirection %q", ns, app, p.Status.Phase, p.Annotations["ambient.istio.io/redirection"])
				}
				if app == "httpbin" && !podReady(p) {
					return fmt.Errorf("pod %s/%s not Ready", ns, app)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	// legacy is not captured: its requests reach httpbin through kube-proxy
	// alone, which rejects a Service's connections until it has programmed
	// the Service's ready endpoint.
	for _, ns := range []string{"foo", "bar"} {
		if err := d.waitKubeProxy(ctx, ns, "httpbin"); err != nil {
			return err
		}
	}
	fmt.Fprintln(d.out, "  namespaces foo and bar carry istio.io/dataplane-mode=ambient; legacy does not.")
	fmt.Fprintln(d.out, "  $ ferry workloads")
	return d.ferryCLI(ctx, "workloads")
}

// waitKubeProxy waits until kube-proxy has programmed Service ns/name's
// ClusterIP and its pod's address.
func (d *demo) waitKubeProxy(ctx context.Context, ns, name string) error {
	svc, err := d.c.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pod, err := d.c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	return kubenode.WaitKubeProxy(ctx, svc.Spec.ClusterIP, pod.Status.PodIP)
}

// ferryCLI prints `ferry ARGS` against the agent's admin endpoint (the
// agent runs in the node's network namespace: its admin port is on this
// host's loopback).
func (d *demo) ferryCLI(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, d.ferry, args...).CombinedOutput()
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintf(d.out, "    %s\n", l)
	}
	if err != nil {
		return fmt.Errorf("ferry %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// request is `kubectl exec -n FROM curl -- podapp get http://httpbin.TO:8000/ip`:
// the status code (000: no response) and what podapp said on stderr.
func (d *demo) request(ctx context.Context, from, to string) (code, stderr string) {
	req := d.c.CoreV1().RESTClient().Post().Resource("pods").Namespace(from).Name("curl").SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: "curl", Stdout: true, Stderr: true,
			Command: []string{"/podapp", "get", "http://httpbin." + to + ":8000/ip", "--timeout", "3s"},
		}, scheme.ParameterCodec)
	ex, err := remotecommand.NewWebSocketExecutor(d.rc, "GET", req.URL().String())
	if err != nil {
		return "exec: " + err.Error(), ""
	}
	var out, errOut bytes.Buffer
	ectx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// A failed request exits 1, which the stream reports as an error:
	// the status line is what counts.
	_ = ex.StreamWithContext(ectx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	code, _, _ = strings.Cut(out.String(), "\n")
	stderr = strings.TrimSpace(errOut.String())
	if code == "" {
		return "exec failed: " + stderr, ""
	}
	return code, stderr
}

// matrix runs every request of Istio's task and checks each code; want is
// "from:to:code".
func (d *demo) matrix(ctx context.Context, want ...string) {
	bad := 0
	for _, w := range want {
		parts := strings.Split(w, ":")
		code, why := d.request(ctx, parts[0], parts[1])
		if code == parts[2] {
			fmt.Fprintf(d.out, "curl.%s to httpbin.%s: %s\n", parts[0], parts[1], code)
		} else {
			fmt.Fprintf(d.out, "curl.%s to httpbin.%s: %s   <- expected %s\n", parts[0], parts[1], code, parts[2])
			if why != "" {
				fmt.Fprintf(d.out, "      podapp: %s\n", why)
			}
			bad++
		}
	}
	if bad > 0 {
		d.check(fmt.Sprintf("%d of %d requests did not get the expected code", bad, len(want)), false)
	} else {
		d.check("every request got the expected code", true)
	}
}

// apply prints a policy and applies it through the API, then waits for
// the agent to enforce it.
func (d *demo) apply(ctx context.Context, yaml, ns, name string) error {
	fmt.Fprintln(d.out, "  $ kubectl apply --server-side -f - <<EOF")
	for _, l := range strings.Split(strings.TrimRight(yaml, "\n"), "\n") {
		fmt.Fprintf(d.out, "    %s\n", l)
	}
	fmt.Fprintln(d.out, "  EOF")
	if _, err := d.cluster.Apply(ctx, []byte(yaml), kubetest.ApplyOptions{}); err != nil {
		return err
	}
	err := kubenode.Poll(ctx, 30*time.Second, func() error {
		var dump node.ConfigDump
		if err := testutil.HTTPGetJSON(ctx, "http://127.0.0.1:15000"+node.FerryConfigDumpPath, &dump); err != nil {
			return err
		}
		if !slices.ContainsFunc(dump.Policies, func(p node.PolicyDump) bool { return p.Namespace == ns && p.Name == name }) {
			return fmt.Errorf("the agent does not enforce %s/%s yet", ns, name)
		}
		return nil
	})
	if err != nil {
		d.check(fmt.Sprintf("the agent loaded %s/%s within 30s", ns, name), false)
		return nil
	}
	fmt.Fprintln(d.out, "  $ ferry policies")
	return d.ferryCLI(ctx, "policies")
}

func (d *demo) walkthrough(ctx context.Context) error {
	d.stepf("Step 1: every client calls every server; the mesh carries foo and bar over mTLS")
	d.matrix(ctx, "foo:foo:200", "foo:bar:200", "bar:foo:200", "bar:bar:200", "legacy:foo:200", "legacy:bar:200")
	logs, err := d.agentLog(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(d.out, "Agent's access log (one line per connection), inbound (kubectl logs -n istio-system ds/ferry):")
	var hbone, plain int
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "direction=inbound mode=hbone") {
			if hbone < 2 {
				fmt.Fprintf(d.out, "    %s\n", accessFields(l))
			}
			hbone++
		}
		if strings.Contains(l, "direction=inbound-plaintext") {
			if plain == 0 {
				fmt.Fprintf(d.out, "    %s\n", accessFields(l))
			}
			plain++
		}
	}
	fmt.Fprintln(d.out, "  (one node: the HBONE hop between the two ends runs inside the agent; the checks read its log and metrics)")
	d.check(fmt.Sprintf("foo/bar requests arrived over HBONE with their identities (%d access-log lines)", hbone), hbone >= 4)
	d.check(fmt.Sprintf("legacy's requests arrived in plaintext (%d access-log lines)", plain), plain >= 2)

	d.stepf("Step 2: lock down foo: PeerAuthentication STRICT in namespace foo")
	if err := d.apply(ctx, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
`, "foo", "default"); err != nil {
		return err
	}
	d.matrix(ctx, "foo:foo:200", "foo:bar:200", "bar:foo:200", "bar:bar:200", "legacy:foo:000", "legacy:bar:200")
	fmt.Fprintln(d.out, "  legacy has no mesh identity: the agent refuses its plaintext connection to foo.")

	d.stepf("Step 3: lock down the whole mesh: PeerAuthentication STRICT in the root namespace istio-system")
	if err := d.apply(ctx, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
`, "istio-system", "default"); err != nil {
		return err
	}
	probed, err := d.probes(ctx)
	if err != nil {
		return err
	}
	d.matrix(ctx, "foo:foo:200", "foo:bar:200", "bar:foo:200", "bar:bar:200", "legacy:foo:000", "legacy:bar:000")
	// The kubelet's probes are node traffic too: in node mode the node's own
	// connections are not captured; in pod mode the kubelet's alone leave
	// from --probe-source, which the pods' capture lets through. Both
	// httpbins are probed every second; three probes each under STRICT.
	var now map[string][2]float64
	err = kubenode.Poll(ctx, 15*time.Second, func() error {
		if now, err = d.probes(ctx); err != nil {
			return err
		}
		for _, ns := range []string{"foo", "bar"} {
			if n := now[ns][0] + now[ns][1] - probed[ns][0] - probed[ns][1]; n < 3 {
				return fmt.Errorf("httpbin.%s probed %v times under STRICT", ns, n)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, ns := range []string{"foo", "bar"} {
		p, err := d.c.CoreV1().Pods(ns).Get(ctx, "httpbin", metav1.GetOptions{})
		if err != nil {
			return err
		}
		passed, failed := now[ns][0]-probed[ns][0], now[ns][1]-probed[ns][1]
		d.check(fmt.Sprintf("httpbin.%s stays Ready under STRICT: the kubelet's probes passed (%v passed, %v failed)", ns, passed, failed),
			podReady(p) && failed == 0)
	}

	d.stepf("Step 4: AuthorizationPolicy in bar: httpbin accepts only foo's curl")
	if err := d.apply(ctx, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-foo-curl
  namespace: bar
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/curl"]
`, "bar", "allow-foo-curl"); err != nil {
		return err
	}
	d.matrix(ctx, "foo:foo:200", "foo:bar:200", "bar:foo:200", "bar:bar:000", "legacy:foo:000", "legacy:bar:000")
	return nil
}

// agentLog is `kubectl logs -n istio-system daemonset/ferry`.
func (d *demo) agentLog(ctx context.Context) (string, error) {
	pods, err := d.c.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil || len(pods.Items) != 1 {
		return "", fmt.Errorf("the agent pod: %d found, %v", len(pods.Items), err)
	}
	b, err := d.c.CoreV1().Pods("istio-system").GetLogs(pods.Items[0].Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	return string(b), err
}

// accessFields keeps an access-log line's who-to-whom fields.
func accessFields(line string) string {
	var keep []string
	for _, f := range strings.Fields(line) {
		for _, k := range []string{"direction=", "mode=", "src.addr=", "src.identity=", "dst.addr=", "dst.service="} {
			if strings.HasPrefix(f, k) {
				keep = append(keep, f)
			}
		}
	}
	return strings.Join(keep, " ")
}

func (d *demo) metrics(ctx context.Context) error {
	d.stepf("Metrics: istio_tcp_connections_opened_total, reported by the destination")
	body, err := testutil.HTTPGet(ctx, "http://"+kubenode.GatewayIP.String()+":15020/metrics")
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  %-40s %-31s %-11s %-6s %s\n", "source_principal", "destination_service", "security", "flags", "count")
	totals := map[string]float64{}
	named := 0.0
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, "istio_tcp_connections_opened_total{") || label(l, "reporter") != "destination" {
			continue
		}
		var v float64
		fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
		sec := label(l, "connection_security_policy")
		fmt.Fprintf(d.out, "  %-40s %-31s %-11s %-6s %v\n", label(l, "source_principal"), label(l, "destination_service"), sec, label(l, "response_flags"), v)
		totals[sec] += v
		if strings.HasPrefix(label(l, "destination_service"), "httpbin.") {
			named += v
		}
	}
	fmt.Fprintf(d.out, "  totals: mutual_tls=%v unknown (plaintext)=%v\n", totals["mutual_tls"], totals["unknown"])
	d.check("the agent counted mTLS connections (mutual_tls > 0)", totals["mutual_tls"] > 0)
	d.check("the agent counted legacy's plaintext connections (unknown > 0)", totals["unknown"] > 0)
	d.check("every connection names its Service (destination_service httpbin.*)", named == totals["mutual_tls"]+totals["unknown"])
	return nil
}

// uninstall follows deploy/README.md: delete the workloads' namespaces,
// then every manifest.
func (d *demo) uninstall(ctx context.Context) (err error) {
	d.stepf("Cleanup: uninstall as deploy/README.md says, then the node down")
	for _, ns := range []string{"foo", "bar", "legacy"} {
		if err := d.c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			return err
		}
	}
	if err := kubenode.Poll(ctx, 2*time.Minute, func() error {
		for _, ns := range []string{"foo", "bar", "legacy"} {
			if _, err := d.c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
				return fmt.Errorf("namespace %s still exists", ns)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	rev := slices.Clone(d.applied)
	slices.Reverse(rev)
	if err := d.cluster.DeleteObjects(ctx, rev); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  $ kubectl delete -k deploy/%s\n", d.overlay())
	if err := kubenode.Poll(ctx, 2*time.Minute, func() error {
		left, err := d.cluster.Remaining(ctx, d.applied)
		if err != nil {
			return err
		}
		if len(left) > 0 {
			return fmt.Errorf("still there: %v", left)
		}
		return nil
	}); err != nil {
		return err
	}
	// The agent saw its DaemonSet deleted: on SIGTERM it removed its
	// rules, routes and pins itself (no `ferry cleanup` needed), and in pod
	// mode the ferry-cni plugin from the node's CNI configuration.
	left, err := d.n.FerryLeftovers()
	if err != nil {
		return err
	}
	what := "its rules, routes and BPF pins"
	if d.capture == "pod" {
		what += ", ferry-cni and its configuration entry, and the capture in every pod"
	}
	d.check(fmt.Sprintf("the agent removed %s (%d objects left)", what, len(left)), len(left) == 0)
	for _, l := range left {
		fmt.Fprintf(d.out, "    left: %s\n", l)
	}
	return nil
}

// label returns one label's value from a Prometheus text line.
func label(line, name string) string {
	_, rest, ok := strings.Cut(line, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// podReady reports whether p is Ready.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// probes returns the kubelet's count of httpbin's readiness probes per
// namespace, passed and failed (prober_probe_total on its /metrics/probes,
// through the API server's node proxy).
func (d *demo) probes(ctx context.Context) (map[string][2]float64, error) {
	b, err := d.c.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", kubenode.NodeName, "proxy/metrics/probes").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("the kubelet's probe metrics: %w", err)
	}
	out := map[string][2]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "prober_probe_total{") || label(l, "pod") != "httpbin" || label(l, "probe_type") != "Readiness" {
			continue
		}
		var v float64
		fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
		c := out[label(l, "namespace")]
		switch label(l, "result") {
		case "successful":
			c[0] += v
		case "failed":
			c[1] += v
		}
		out[label(l, "namespace")] = c
	}
	return out, nil
}
