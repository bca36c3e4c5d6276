package xds_test

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/xds/xdstest"
)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Logf("%s", b); return len(b), nil }

// await returns the first snapshot cond accepts, failing after 30 s.
func await(t *testing.T, snaps <-chan *inventory.Snapshot, what string, cond func(*inventory.Snapshot) bool) *inventory.Snapshot {
	t.Helper()
	deadline := time.After(30 * time.Second)
	var last *inventory.Snapshot
	for {
		select {
		case s := <-snaps:
			if cond(s) {
				return s
			}
			last = s
		case <-deadline:
			t.Fatalf("timed out waiting for %s; last snapshot: pods %+v services %+v policies %+v errors %v", what,
				podNames(last), last.Services, last.TranslatedPolicies, last.Errors)
		}
	}
}

// fooPods are the test's pods: istiod also sends the agent's own pod.
func fooPods(s *inventory.Snapshot) []*inventory.Pod {
	var out []*inventory.Pod
	for _, p := range s.Pods {
		if p.Namespace == "foo" {
			out = append(out, p)
		}
	}
	return out
}

func podNames(s *inventory.Snapshot) []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, p := range s.Pods {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	return out
}

// TestPrivilegedIstiodSource reads a real istiod as a node agent: the first
// snapshot waits for both subscriptions (istiod answers even when it has no
// policy), pods, Services and policies arrive as istiod translates them,
// deltas follow API changes, and a restarted istiod is resynced.
func TestPrivilegedIstiodSource(t *testing.T) {
	testutil.Privileged(t)
	kc := kubetest.Start(t)
	istiod := kc.StartIstiod(t, kubetest.BuildIstio(t), kubetest.IstiodOptions{TrustedNodeAccounts: []string{"istio-system/ferry"}})
	ctx := t.Context()
	kc.Namespace(t, "foo", map[string]string{"istio.io/dataplane-mode": "ambient"})
	kc.CreatePod(t, kubetest.Pod{Namespace: "foo", Name: "web-0", ServiceAccount: "web", Node: "node2", IP: "198.18.2.10",
		Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}})
	if _, err := kc.Client.CoreV1().Services("foo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "foo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	snaps := xdstest.Watch(t, kc, istiod, "node1", "198.18.250.1", slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	var svc inventory.Service
	snap := await(t, snaps, "web-0 and its Service", func(s *inventory.Snapshot) bool {
		i := slices.IndexFunc(s.Services, func(s inventory.Service) bool { return s.Namespace == "foo" && s.Name == "web" })
		if i >= 0 {
			svc = s.Services[i]
		}
		p := fooPods(s)
		return len(p) == 1 && i >= 0 && len(p[0].Mesh.Services.Slice()) == 1
	})
	web := fooPods(snap)[0]
	if web.IP.String() != "198.18.2.10" || web.ServiceAccount != "web" || web.NodeName != "node2" || !web.Mesh.HBONE ||
		web.Mesh.UID != "Kubernetes//Pod/foo/web-0" || !web.Mesh.Healthy {
		t.Errorf("pod %+v, mesh %+v", web, web.Mesh)
	}
	if svc.Hostname != "web.foo.svc.cluster.local" || len(svc.Ports) != 1 || svc.Ports[0].Port != 80 || svc.Ports[0].TargetPort != 8080 ||
		!svc.Selects(web) {
		t.Errorf("service %+v", svc)
	}
	if snap.TranslatedPolicies == nil || len(snap.TranslatedPolicies) != 0 {
		t.Errorf("policies %+v, want none (but a non-nil list: istiod's form)", snap.TranslatedPolicies)
	}

	// A selector policy arrives translated and bound to the pod.
	if _, err := kc.Apply(ctx, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-bar, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {ports: ["8080"]}}]}]
`), kubetest.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = await(t, snaps, "allow-bar bound to web-0", func(s *inventory.Snapshot) bool {
		p := fooPods(s)
		return len(s.TranslatedPolicies) == 1 && len(p) == 1 && p[0].Mesh.AuthorizationPolicies.Contains("foo/allow-bar")
	})
	p := snap.TranslatedPolicies[0]
	if p.Scope != "WORKLOAD_SELECTOR" || p.Action != "ALLOW" || len(p.Groups) != 1 || len(p.Groups[0].Rules) != 2 {
		t.Errorf("translated policy %+v", p)
	}

	// istiod restarts; the policy is deleted meanwhile. The resynced state
	// has neither the policy nor the binding.
	istiod.Stop()
	if err := kc.Dynamic.Resource(kubetest.AuthorizationPolicies).Namespace("foo").Delete(ctx, "allow-bar", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := istiod.Restart(); err != nil {
		t.Fatal(err)
	}
	// The Service did not change: istiod does not send it again, and it
	// must stay, after the resync and after the next change.
	hasWeb := func(s *inventory.Snapshot) bool {
		return slices.ContainsFunc(s.Services, func(s inventory.Service) bool { return s.Namespace == "foo" && s.Name == "web" })
	}
	snap = await(t, snaps, "the policy gone after istiod's restart", func(s *inventory.Snapshot) bool {
		p := fooPods(s)
		return len(s.TranslatedPolicies) == 0 && len(p) == 1 && p[0].Mesh.AuthorizationPolicies == (inventory.Names{})
	})
	if !hasWeb(snap) {
		t.Errorf("Service foo/web lost in istiod's resync: %+v", snap.Services)
	}
	kc.DeletePod(t, "foo", "web-0")
	snap = await(t, snaps, "web-0 removed", func(s *inventory.Snapshot) bool { return len(fooPods(s)) == 0 })
	if !hasWeb(snap) {
		t.Errorf("Service foo/web lost after istiod's restart: %+v", snap.Services)
	}
}
