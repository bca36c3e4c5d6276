package kubenode

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node"
)

// agentMetrics is the agent's metrics endpoint: a hostNetwork pod, so on
// the node's address, at its prometheus.io/port.
var agentMetrics = "http://" + GatewayIP.String() + ":15020/metrics"

// checkTraffic drives real pods through the installed agent on the node:
// ambient-on (enrolled) and ambient-off (not) each run a "web" pod. It
// checks that a pod's request to a ClusterIP is captured after kube-proxy's
// DNAT and carried over HBONE in mTLS with the Service named, that
// PeerAuthentication and AuthorizationPolicy applied through the API are
// enforced, and that unlabelling a namespace or deleting a pod releases
// the pod's capture.
func checkTraffic(t *testing.T, ctx context.Context, n *Node, c kubernetes.Interface, cluster *kubetest.Cluster) {
	pinDir := filepath.Join(n.BPFFS(), "ferry")
	vips := map[string]string{}
	for _, ns := range []string{"ambient-on", "ambient-off"} {
		svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "web"},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8000)}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vips[ns] = svc.Spec.ClusterIP
	}
	if err := WaitKubeProxy(ctx, vips["ambient-on"], vips["ambient-off"]); err != nil {
		t.Fatal(err)
	}
	onURL := "http://" + vips["ambient-on"] + "/ip"
	const onService = "web.ambient-on.svc.cluster.local"
	for _, sa := range []string{"blocked"} {
		if _, err := c.CoreV1().ServiceAccounts("ambient-on").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("enrolled client to a ClusterIP goes over HBONE", func(t *testing.T) {
		before := scrape(ctx, t)
		code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", onURL)
		if code != "200" || body != ip {
			t.Fatalf("client: status %s, the server saw %q; want 200 and the client's own address %s (Ferry dials as the client)", code, body, ip)
		}
		after := scrape(ctx, t)
		// Both ends of the tunnel counted it, in mTLS, naming the Service
		// and the client's identity.
		for _, reporter := range []string{"source", "destination"} {
			want := map[string]string{
				"reporter": reporter, "connection_security_policy": "mutual_tls",
				"destination_service": onService, "destination_service_name": "web", "destination_service_namespace": "ambient-on",
				"source_principal": "spiffe://cluster.local/ns/ambient-on/sa/default",
				"source_workload":  "client", "destination_workload": "web", "response_flags": "-",
			}
			if d := opened(before, after, want); d != 1 {
				t.Errorf("istio_tcp_connections_opened_total%v went up by %v, want 1\n%s", want, d, grep(after, "istio_tcp_connections_opened_total"))
			}
		}
	})

	t.Run("plaintext client to a ClusterIP is named too", func(t *testing.T) {
		before := scrape(ctx, t)
		code, body, ip := runClient(ctx, t, c, "ambient-off", "client", "default", onURL)
		if code != "200" || body != ip {
			t.Fatalf("client: status %s, server saw %q; want 200 and %s (PERMISSIVE)", code, body, ip)
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "unknown", "destination_service": onService}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("plaintext inbound through the ClusterIP counted %v times, want 1", d)
		}
	})

	t.Run("STRICT refuses plaintext", func(t *testing.T) {
		applyPolicy(ctx, t, cluster, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: ambient-on}
spec: {mtls: {mode: STRICT}}
`)
		before := scrape(ctx, t)
		if code, _, _ := runClient(ctx, t, c, "ambient-off", "client", "default", onURL); code == "200" {
			t.Fatal("a plaintext client reached an enrolled pod under STRICT")
		}
		// Refused by the agent, not lost on the way.
		want := map[string]string{"reporter": "destination", "connection_security_policy": "unknown",
			"response_flags": "DENY", "destination_service": onService}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("the agent counted %v plaintext connections refused under STRICT, want 1", d)
		}
		if code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", onURL); code != "200" || body != ip {
			t.Errorf("an enrolled client under STRICT: status %s, server saw %q, want 200 and %s", code, body, ip)
		}
	})

	t.Run("AuthorizationPolicy denies by principal", func(t *testing.T) {
		applyPolicy(ctx, t, cluster, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked, namespace: ambient-on}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/ambient-on/sa/blocked"]}
`)
		before := scrape(ctx, t)
		if code, _, _ := runClient(ctx, t, c, "ambient-on", "blocked", "blocked", onURL); code == "200" {
			t.Fatal("the denied principal got through")
		}
		want := map[string]string{"reporter": "destination", "response_flags": "DENY",
			"source_principal": "spiffe://cluster.local/ns/ambient-on/sa/blocked", "destination_service": onService}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("the denial counted %v times, want 1 with %v", d, want)
		}
		if code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", onURL); code != "200" || body != ip {
			t.Errorf("another principal: status %s, server saw %q, want 200 and %s", code, body, ip)
		}
	})

	t.Run("a replaced or crashed agent takes over; meanwhile enrolled pods fail closed", func(t *testing.T) {
		old := agentPods(ctx, t, c, false)
		if len(old) != 1 {
			t.Fatalf("agent pods %v, want 1", old)
		}
		// The DaemonSet is kept off the node for a while (a nodeSelector
		// nothing matches): its controller deletes the agent pod and the
		// kubelet stops the agent with SIGTERM, while the DaemonSet stays,
		// so the agent keeps the capture state for its successor.
		hold := func(on bool) {
			sel := `{"ferry.test/hold": null}`
			if on {
				sel = `{"ferry.test/hold": "true"}`
			}
			patch := `{"spec":{"template":{"spec":{"nodeSelector":` + sel + `}}}}`
			if _, err := c.AppsV1().DaemonSets("istio-system").Patch(ctx, "ferry", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { hold(false) })
		code, _, _ := runClientAfter(ctx, t, c, "ambient-on", "client", "default", onURL, func() {
			rulesBefore, routesBefore := ownedRouting(t)
			hold(true)
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if err := Poll(wctx, 0, func() error {
				if pods := agentPods(ctx, t, c, true); len(pods) > 0 {
					return fmt.Errorf("agent pods still there: %v", pods)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			rules, routes := ownedRouting(t)
			if !slices.Equal(rules, rulesBefore) || !slices.Equal(routes, routesBefore) || len(listPins(pinDir)) == 0 {
				t.Errorf("the stopped agent changed the capture state: rules %v → %v, routes %v → %v, pins %v",
					rulesBefore, rules, routesBefore, routes, listPins(pinDir))
			}
		})
		if code == "200" {
			t.Error("an enrolled pod's request succeeded while no agent ran, so it left the mesh")
		}
		hold(false)
		// The DaemonSet's next pod takes the pins over.
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := Poll(wctx, 0, func() error {
			ds, err := c.AppsV1().DaemonSets("istio-system").Get(ctx, "ferry", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if now := agentPods(ctx, t, c, false); len(now) != 1 || now[0] == old[0] || ds.Status.NumberReady != 1 {
				return fmt.Errorf("agent pods %v, %d ready", now, ds.Status.NumberReady)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		awaitPolicy(ctx, t, "ambient-on", "deny-blocked")
		before := scrape(ctx, t)
		code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", onURL)
		if code != "200" || body != ip {
			t.Fatalf("after the new agent started: status %s, server saw %q, want 200 and %s", code, body, ip)
		}
		want := map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls", "destination_service": onService}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("the new agent counted %v mTLS connections, want 1", d)
		}

		// A crash: SIGKILL leaves the agent no chance to do anything; the
		// kubelet restarts the container in place, and it takes over.
		now := agentPods(ctx, t, c, false)
		if len(now) != 1 {
			t.Fatalf("agent pods %v, want 1", now)
		}
		agent, err := c.CoreV1().Pods("istio-system").Get(ctx, now[0], metav1.GetOptions{})
		if err != nil || len(agent.Status.ContainerStatuses) != 1 {
			t.Fatalf("agent pod %s: %v", now[0], err)
		}
		restarts := agent.Status.ContainerStatuses[0].RestartCount
		pid := containerPID(ctx, t, n, agent.Status.ContainerStatuses[0].ContainerID)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := Poll(ctx, 2*time.Minute, func() error {
			p, err := c.CoreV1().Pods("istio-system").Get(ctx, now[0], metav1.GetOptions{})
			if err != nil {
				return err
			}
			if p.Status.ContainerStatuses[0].RestartCount <= restarts || !podReady(p) {
				return fmt.Errorf("agent %s not restarted and ready yet", p.Name)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		rules, routes := ownedRouting(t)
		if len(rules) == 0 || len(routes) == 0 || len(listPins(pinDir)) == 0 {
			t.Errorf("after the crash: rules %v, routes %v, pins %v", rules, routes, listPins(pinDir))
		}
		before = scrape(ctx, t)
		if code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", onURL); code != "200" || body != ip {
			t.Fatalf("after the restart: status %s, server saw %q, want 200 and %s", code, body, ip)
		}
		if d := opened(before, scrape(ctx, t), want); d != 1 {
			t.Errorf("the restarted agent counted %v mTLS connections, want 1", d)
		}
	})

	t.Run("a rolling update keeps a long-lived connection", func(t *testing.T) {
		old := agentPods(ctx, t, c, false)
		if len(old) != 1 {
			t.Fatalf("agent pods %v, want 1", old)
		}
		// A connection held open through the update: a request on it every
		// 250 ms, each response logged with the client address the server saw.
		holder := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "holder", Labels: map[string]string{"app": "holder"}},
			Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{
					Name: "hold", Image: "ferry.test/podapp:1", ImagePullPolicy: corev1.PullNever,
					Args: []string{"hold", "http://" + vips["ambient-on"] + "/addr", "--gate", ":9000"},
				}},
			},
		}
		if _, err := c.CoreV1().Pods("ambient-on").Create(ctx, holder, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer c.CoreV1().Pods("ambient-on").Delete(context.WithoutCancel(ctx), "holder", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		p, err := waitAnnotation(ctx, c, "ambient-on", "holder", "enabled")
		if err != nil {
			t.Fatal(err)
		}
		openGate(ctx, t, p.Status.PodIP)
		lines := func() []string {
			b, err := c.CoreV1().Pods("ambient-on").GetLogs("holder", &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return strings.Split(strings.TrimSpace(string(b)), "\n")
		}
		if err := Poll(ctx, 0, func() error {
			if l := lines(); len(l) < 2 {
				return fmt.Errorf("holder: %q", l)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		first := strings.Fields(lines()[0])
		if len(first) != 3 || first[1] != "200" || !strings.HasPrefix(first[2], p.Status.PodIP+":") {
			t.Fatalf("holder's first response %q, want 200 and its own address", first)
		}

		// The update: the same image under a new tag.
		const tag2 = testTag + "-2"
		if out, err := exec.CommandContext(ctx, "ctr", "--address", n.ContainerdAddress(), "-n", "k8s.io", "images", "tag",
			"ghcr.io/ferrymesh/ferry:"+testTag, "ghcr.io/ferrymesh/ferry:"+tag2).CombinedOutput(); err != nil {
			t.Fatalf("ctr images tag: %v: %s", err, out)
		}
		patch := `{"spec":{"template":{"spec":{"containers":[{"name":"ferry","image":"ghcr.io/ferrymesh/ferry:` + tag2 + `"}]}}}}`
		if _, err := c.AppsV1().DaemonSets("istio-system").Patch(ctx, "ferry", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		// maxSurge: the new agent starts beside the old one, which the
		// kubelet stops (SIGTERM, drain) once the new one is Ready.
		var newPod string
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := Poll(wctx, 0, func() error {
			pods, err := c.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
			if err != nil {
				return err
			}
			oldStopping, newReady := true, ""
			for _, p := range pods.Items {
				if p.Name == old[0] {
					oldStopping = p.DeletionTimestamp != nil
					continue
				}
				if p.Spec.Containers[0].Image == "ghcr.io/ferrymesh/ferry:"+tag2 && podReady(&p) {
					newReady = p.Name
				}
			}
			if !oldStopping || newReady == "" {
				return fmt.Errorf("old agent %s stopping %v, new agent ready %q", old[0], oldStopping, newReady)
			}
			newPod = newReady
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// The old agent has been told to stop: it says so as it starts draining.
		if err := Poll(wctx, 0, func() error {
			b, err := c.CoreV1().Pods("istio-system").GetLogs(old[0], &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), "msg=draining") {
				return fmt.Errorf("the old agent %s has not started draining", old[0])
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		switched := time.Now()
		t.Logf("new agent %s ready, old %s stopping", newPod, old[0])
		// The held connection still answers, on the same connection, after
		// the old agent was told to stop.
		if err := Poll(wctx, 0, func() error {
			var after int
			for _, l := range lines() {
				f := strings.Fields(l)
				if len(f) != 3 || f[1] != "200" || f[2] != first[2] {
					return fmt.Errorf("holder line %q: the connection broke or moved (first: %v)", l, first)
				}
				if ts, err := time.Parse(time.RFC3339Nano, f[0]); err == nil && ts.After(switched) {
					after++
				}
			}
			if after < 8 {
				return fmt.Errorf("%d responses since the switch", after)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// A new connection goes to the new agent (its access log).
		code, body, ip := runClient(ctx, t, c, "ambient-on", "client", "default", onURL)
		if code != "200" || body != ip {
			t.Fatalf("a new connection after the update: status %s, server saw %q, want 200 and %s", code, body, ip)
		}
		b, err := c.CoreV1().Pods("istio-system").GetLogs(newPod, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "src.addr="+ip+":") {
			t.Errorf("the new agent %s did not carry the new connection from %s", newPod, ip)
		}
	})

	t.Run("unlabelling and deleting release pods", func(t *testing.T) {
		const ns = "ambient-tmp"
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitSA(ctx, c.CoreV1().ServiceAccounts(ns).Get); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a", "b"} {
			if _, err := c.CoreV1().Pods(ns).Create(ctx, servePod(name), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		ips := map[string]string{}
		for _, name := range []string{"a", "b"} {
			p, err := waitAnnotation(ctx, c, ns, name, "enabled")
			if err != nil {
				t.Fatal(err)
			}
			ips[name] = p.Status.PodIP
			if err := waitCaptured(ctx, t, p.Status.PodIP, true); err != nil {
				t.Fatal(err)
			}
		}
		// Deleting a pod releases its address.
		if err := c.CoreV1().Pods(ns).Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitCaptured(ctx, t, ips["a"], false); err != nil {
			t.Fatal(err)
		}
		// Unlabelling the namespace releases the rest.
		if _, err := c.CoreV1().Namespaces().Update(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := waitAnnotation(ctx, c, ns, "b", ""); err != nil {
			t.Fatal(err)
		}
		if err := waitCaptured(ctx, t, ips["b"], false); err != nil {
			t.Fatal(err)
		}
		if err := c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})
}

// servePod is an HTTP server pod labelled app=web.
func servePod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "web", Image: "ferry.test/podapp:1", ImagePullPolicy: corev1.PullNever,
				Args: []string{"serve", "--addr", ":8000", "--name", name},
			}},
		},
	}
}

// runClient runs one `podapp get url` pod as service account sa and
// returns the status it printed ("000" when the request failed), the body
// (the address the server saw) and the client pod's own address. The pod
// is deleted afterwards.
//
// The request waits behind podapp's gate until the pod is captured (its
// redirection annotation, in an enrolled namespace) or running: a pod's
// first connections can leave before the agent has seen its address
// (README, Limits), and the checks here are about what follows.
func runClient(ctx context.Context, t *testing.T, c kubernetes.Interface, ns, name, sa, url string) (code, body, ip string) {
	t.Helper()
	return runClientAfter(ctx, t, c, ns, name, sa, url, nil)
}

// runClientAfter is runClient with before run just before the request is
// let go.
func runClientAfter(ctx context.Context, t *testing.T, c kubernetes.Interface, ns, name, sa, url string, before func()) (code, body, ip string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever, ServiceAccountName: sa, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "get", Image: "ferry.test/podapp:1", ImagePullPolicy: corev1.PullNever,
				Args: []string{"get", url, "--timeout", "5s", "--gate", ":9000"},
			}},
		},
	}
	if _, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = c.CoreV1().Pods(ns).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		for wctx.Err() == nil {
			if _, err := c.CoreV1().Pods(ns).Get(wctx, name, metav1.GetOptions{}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	nsObj, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	if nsObj.Labels["istio.io/dataplane-mode"] == "ambient" {
		want = "enabled"
	}
	started, err := waitAnnotation(ctx, c, ns, name, want)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before()
	}
	openGate(ctx, t, started.Status.PodIP)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	done, err := WaitPod(wctx, c, ns, name, PodDone)
	if err != nil {
		t.Fatalf("client %s/%s: %v", ns, name, err)
	}
	logs, err := c.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("client %s/%s logs: %v", ns, name, err)
	}
	// The status line, then the body; an error on stderr may come first
	// in the pod's log.
	code = "000"
	lines := strings.Split(strings.TrimSpace(string(logs)), "\n")
	for i, l := range lines {
		if len(l) == 3 && strings.Trim(l, "0123456789") == "" {
			code = l
			body = strings.TrimSpace(strings.Join(lines[i+1:], "\n"))
			break
		}
	}
	t.Logf("client %s/%s (%s) → %s: %s %q", ns, name, done.Status.PodIP, url, code, body)
	return code, body, done.Status.PodIP
}

func scrape(ctx context.Context, t *testing.T) string {
	t.Helper()
	return scrapeURL(ctx, t, agentMetrics)
}

// opened is how much istio_tcp_connections_opened_total grew between two
// scrapes, over the series whose labels include want.
func opened(before, after string, want map[string]string) float64 {
	const name = "istio_tcp_connections_opened_total"
	return metric(after, name, want) - metric(before, name, want)
}

// metric sums the samples of name in a Prometheus text exposition whose
// labels include every pair of want.
func metric(body, name string, want map[string]string) float64 {
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if !slices.ContainsFunc(mapsPairs(want), func(p string) bool { return !strings.Contains(line[:i], p) }) {
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err == nil {
				sum += v
			}
		}
	}
	return sum
}

func mapsPairs(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s=%q", k, v))
	}
	return out
}

func grep(body, prefix string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// awaitPolicy waits until the agent enforces the policy ns/name (its
// /config_dump on the node's loopback).
// applyPolicy applies the policies of manifest and waits until the agent
// enforces each.
func applyPolicy(ctx context.Context, t *testing.T, cluster *kubetest.Cluster, manifest string) {
	t.Helper()
	objs, err := cluster.Apply(ctx, []byte(manifest), kubetest.ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		awaitPolicy(ctx, t, o.GetNamespace(), o.GetName())
	}
}

func awaitPolicy(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := Poll(wctx, 0, func() error {
		var dump node.ConfigDump
		if err := testutil.HTTPGetJSON(ctx, "http://127.0.0.1:15000"+node.FerryConfigDumpPath, &dump); err != nil {
			return err
		}
		if !slices.ContainsFunc(dump.Policies, func(p node.PolicyDump) bool { return p.Namespace == ns && p.Name == name }) {
			return fmt.Errorf("the agent does not enforce %s/%s yet: %+v", ns, name, dump.Policies)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// waitAnnotation waits until the pod's redirection annotation is want
// ("" = absent) and returns the pod.
func waitAnnotation(ctx context.Context, c kubernetes.Interface, ns, name, want string) (*corev1.Pod, error) {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var pod *corev1.Pod
	err := Poll(wctx, 0, func() error {
		p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := p.Annotations["ambient.istio.io/redirection"]; got != want || p.Status.PodIP == "" {
			return fmt.Errorf("pod %s/%s: redirection %q (want %q), IP %q", ns, name, got, want, p.Status.PodIP)
		}
		pod = p
		return nil
	})
	return pod, err
}

// waitCaptured waits until the host's Ferry routes do (or do not) hold
// ip's inbound capture route.
func waitCaptured(ctx context.Context, t *testing.T, ip string, want bool) error {
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return Poll(wctx, 0, func() error {
		_, routes := ownedRouting(t)
		has := slices.ContainsFunc(routes, func(r string) bool { return strings.Contains(r, ip+"/32") })
		if has != want {
			return fmt.Errorf("capture route for %s present %v, want %v: %v", ip, has, want, routes)
		}
		return nil
	})
}

// agentPods names the agent DaemonSet's pods, those being deleted too if
// terminating.
func agentPods(ctx context.Context, t *testing.T, c kubernetes.Interface, terminating bool) []string {
	t.Helper()
	pods, err := c.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		if terminating || p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	return names
}

// containerPID is the host PID of a container's main process, from the
// node's containerd (id as in a pod's status: containerd://ID).
func containerPID(ctx context.Context, t *testing.T, n *Node, id string) int {
	t.Helper()
	id = strings.TrimPrefix(id, "containerd://")
	out, err := exec.CommandContext(ctx, "ctr", "--address", n.ContainerdAddress(), "-n", "k8s.io", "tasks", "ls").Output()
	if err != nil {
		t.Fatalf("ctr tasks ls: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("ctr tasks ls: %q", line)
			}
			return pid
		}
	}
	t.Fatalf("container %s not among containerd's tasks:\n%s", id, out)
	return 0
}

// openGate lets a podapp client behind --gate :9000 at ip go.
func openGate(ctx context.Context, t *testing.T, ip string) {
	t.Helper()
	gctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := Poll(gctx, 0, func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "9000"), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("gate of %s: %v", ip, err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
