package kube_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/istioca"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/kube"
)

// testLogger sends a component's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// agentClients returns clients authenticated as the agent's service
// account, with the RBAC from deploy/: every test here runs with exactly the
// privileges an operator grants.
func agentClients(t *testing.T, c *kubetest.Cluster) (*kube.API, dynamic.Interface) {
	t.Helper()
	cfg := c.ConfigForToken(c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{}))
	api, err := kube.NewAPI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return api, dyn
}

// apiAs returns the agent's Client of c, authenticated as namespace/
// serviceAccount.
func apiAs(t *testing.T, c *kubetest.Cluster, namespace, serviceAccount string) *kube.API {
	t.Helper()
	api, err := kube.NewAPI(c.ConfigForToken(c.Token(t, namespace, serviceAccount, kubetest.TokenOptions{})))
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// runSource runs a Source until the test ends and returns a function that
// waits (bounded) for a published snapshot satisfying cond.
func runSource(t *testing.T, src *kube.Source) func(what string, cond func(*inventory.Snapshot) bool) *inventory.Snapshot {
	t.Helper()
	var (
		mu      sync.Mutex
		last    *inventory.Snapshot
		updated = make(chan struct{}, 1)
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(s *inventory.Snapshot) {
			mu.Lock()
			last = s
			mu.Unlock()
			select {
			case updated <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Source.Run: %v", err)
		}
	})
	return func(what string, cond func(*inventory.Snapshot) bool) *inventory.Snapshot {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			mu.Lock()
			s := last
			mu.Unlock()
			if s != nil && cond(s) {
				return s
			}
			select {
			case <-updated:
			case err := <-done:
				t.Fatalf("waiting for %s: Source.Run returned %v", what, err)
			case <-timeout:
				t.Fatalf("no snapshot with %s after 30s; last: %s", what, describe(s))
			}
		}
	}
}

func describe(s *inventory.Snapshot) string {
	if s == nil {
		return "none"
	}
	var b strings.Builder
	for _, ns := range s.Namespaces {
		fmt.Fprintf(&b, "ns %s %v; ", ns.Name, ns.Labels)
	}
	for _, p := range s.Pods {
		fmt.Fprintf(&b, "pod %s/%s %s %s %v %v; ", p.Namespace, p.Name, p.NodeName, p.IP, p.Labels, p.Annotations)
	}
	fmt.Fprintf(&b, "%d authorization policies, %d peer authentications, errors %v",
		len(s.AuthorizationPolicies), len(s.PeerAuthentications), s.Errors)
	return b.String()
}

func findPod(s *inventory.Snapshot, ns, name string) (inventory.Pod, bool) {
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return *p, true
		}
	}
	return inventory.Pod{}, false
}

// enrolled evaluates Istio's enrolment rule (the agent's is node.Enrolled,
// tested there) on a snapshot, for the cases these tests create.
func enrolled(s *inventory.Snapshot, ns, name string) bool {
	p, ok := findPod(s, ns, name)
	if !ok || p.HostNetwork || !p.IP.IsValid() {
		return false
	}
	switch p.Labels["istio.io/dataplane-mode"] {
	case "ambient":
		return true
	case "none":
		return false
	}
	return s.Namespaces[ns].Labels["istio.io/dataplane-mode"] == "ambient"
}

func TestPrivilegedKubeSource(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.ApplyDeploy(t)
	ctx := t.Context()

	c.Namespace(t, "shop", nil)
	web := c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "web-0", ServiceAccount: "web", Node: "node-1", IP: "198.18.1.10",
		Labels: map[string]string{"app": "web"}})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "db-0", ServiceAccount: "db", Node: "node-2", IP: "198.18.2.10",
		Labels: map[string]string{"app": "db", "istio.io/dataplane-mode": "none"}})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "pending-0", Node: "node-1"})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "host-0", Node: "node-1", IP: "198.18.0.1", HostNetwork: true})
	c.CreatePod(t, kubetest.Pod{Namespace: "other", Name: "solo", Node: "node-2", IP: "198.18.2.11",
		Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}})

	client, dyn := agentClients(t, c)
	src := kube.NewSource(client, dyn, testLogger(t))
	src.Coalesce, src.MinInterval = 20*time.Millisecond, 50*time.Millisecond
	wait := runSource(t, src)

	s := wait("the pods", func(s *inventory.Snapshot) bool { return len(s.Pods) == 5 })
	p, _ := findPod(s, "shop", "web-0")
	want := inventory.Pod{Name: "web-0", Namespace: "shop", UID: string(web.UID), ServiceAccount: "web", NodeName: "node-1",
		IP: netip.MustParseAddr("198.18.1.10"), Labels: map[string]string{"app": "web"}}
	if p.Name != want.Name || p.UID != want.UID || p.ServiceAccount != want.ServiceAccount || p.NodeName != want.NodeName ||
		p.IP != want.IP || !maps.Equal(p.Labels, want.Labels) || p.HostNetwork || len(p.Annotations) != 0 {
		t.Errorf("web-0 = %+v, want %+v", p, want)
	}
	if p, _ := findPod(s, "shop", "pending-0"); p.IP.IsValid() || p.ServiceAccount != "default" {
		t.Errorf("pending-0 = %+v", p)
	}
	if p, _ := findPod(s, "shop", "host-0"); !p.HostNetwork {
		t.Errorf("host-0 = %+v", p)
	}
	if enrolled(s, "shop", "web-0") || !enrolled(s, "other", "solo") {
		t.Errorf("before labelling: web-0 enrolled %v, solo enrolled %v", enrolled(s, "shop", "web-0"), enrolled(s, "other", "solo"))
	}

	// Label the namespace ambient: its pods follow, except the opted-out,
	// hostNetwork and IP-less ones.
	c.Namespace(t, "shop", map[string]string{"istio.io/dataplane-mode": "ambient"})
	s = wait("shop labelled ambient", func(s *inventory.Snapshot) bool { return enrolled(s, "shop", "web-0") })
	for _, name := range []string{"db-0", "host-0", "pending-0"} {
		if enrolled(s, "shop", name) {
			t.Errorf("%s enrolled", name)
		}
	}

	// Policies: two good ones and a malformed one (a value the CRD schema
	// cannot check), which reaches the engine to be read fail-closed while
	// the others apply.
	if _, err := c.Apply(ctx, []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-viewer, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/front"]}
    to:
    - operation: {ports: ["8080"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  rules:
  - when:
    - {key: source.ip, values: ["198.18.0.0/33"]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
`), kubetest.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	// decide asks the policy engine built from a snapshot whether src may
	// reach web-0:8080 over mTLS.
	decide := func(s *inventory.Snapshot, src string) bool {
		t.Helper()
		e, _ := authz.Compile(authz.Config{TrustDomain: "cluster.local"}, s.AuthorizationPolicies, s.PeerAuthentications)
		p, _ := findPod(s, "shop", "web-0")
		return e.Decide(authz.Request{
			SourcePrincipal: "cluster.local/ns/shop/sa/" + src,
			Namespace:       p.Namespace, Labels: p.Labels,
			DestinationIP: p.IP, DestinationPort: 8080,
		}).Allow
	}
	if !decide(s, "other") {
		t.Error("denied before any policy")
	}
	s = wait("the policies", func(s *inventory.Snapshot) bool {
		return len(s.AuthorizationPolicies) == 2 && len(s.PeerAuthentications) == 1
	})
	ap := s.AuthorizationPolicies[1]
	if typo := s.AuthorizationPolicies[0]; typo.Metadata.Name != "typo" || typo.Spec.Rules[0].When[0].Values[0] != "198.18.0.0/33" {
		t.Errorf("the malformed policy is not published as written (for a fail-closed reading): %+v", typo)
	}
	if ap.Metadata.Name != "web-viewer" || ap.Metadata.Namespace != "shop" || ap.Metadata.CreationTimestamp.IsZero() ||
		ap.Spec.Selector.MatchLabels["app"] != "web" || ap.Spec.Rules[0].From[0].Source.Principals[0] != "cluster.local/ns/shop/sa/front" ||
		ap.Spec.Rules[0].To[0].Operation.Ports[0] != "8080" {
		t.Errorf("authorization policy = %+v", ap)
	}
	if pa := s.PeerAuthentications[0]; pa.Spec.MTLS == nil || pa.Spec.MTLS.Mode != "STRICT" {
		t.Errorf("peer authentication = %+v", pa)
	}
	_, ds := authz.Compile(authz.Config{}, s.AuthorizationPolicies, s.PeerAuthentications)
	if len(ds) == 0 || !strings.Contains(ds[0].Error(), "AuthorizationPolicy shop/typo: rules[0].when[0].values[0]") {
		t.Errorf("diagnostics = %v, want one naming AuthorizationPolicy shop/typo and the field", ds)
	}
	if !decide(s, "front") || decide(s, "other") {
		t.Errorf("with the policy: front allowed %v (want true), other allowed %v (want false)", decide(s, "front"), decide(s, "other"))
	}

	// Fix the typo: the error goes, the policy comes.
	apGVR := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	if err := c.Dynamic.Resource(apGVR).Namespace("shop").Delete(ctx, "typo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the malformed policy gone", func(s *inventory.Snapshot) bool {
		return len(s.AuthorizationPolicies) == 1
	})

	// A pod that finishes leaves the snapshot (its IP may be reused); a
	// deleted one too.
	c.SetPodStatus(t, "other", "solo", corev1.PodSucceeded, "198.18.2.11")
	wait("solo finished", func(s *inventory.Snapshot) bool { _, ok := findPod(s, "other", "solo"); return !ok })
	c.DeletePod(t, "shop", "pending-0")
	wait("pending-0 deleted", func(s *inventory.Snapshot) bool { _, ok := findPod(s, "shop", "pending-0"); return !ok })

	// Unlabel the namespace: enrolment is undone.
	c.Namespace(t, "shop", nil)
	wait("shop unlabelled", func(s *inventory.Snapshot) bool { return !enrolled(s, "shop", "web-0") })
}

// TestPrivilegedKubeSourceWaitsForPolicies checks that the Source publishes
// nothing while it cannot read the policies (here: RBAC without them), rather
// than a policy-less snapshot that would allow what a policy denies.
func TestPrivilegedKubeSourceWaitsForPolicies(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.ApplyDeploy(t)
	ctx := t.Context()
	c.ServiceAccount(t, "istio-system", "limited")
	if _, err := c.Apply(ctx, []byte(`
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: limited}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, services]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: limited}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: limited}
subjects:
- {kind: ServiceAccount, name: limited, namespace: istio-system}
`), kubetest.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := c.ConfigForToken(c.Token(t, "istio-system", "limited", kubetest.TokenOptions{}))
	client, err := kube.NewAPI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	published := make(chan struct{}, 1)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- kube.NewSource(client, dyn, testLogger(t)).Run(runCtx, func(*inventory.Snapshot) {
			select {
			case published <- struct{}{}:
			default:
			}
		})
	}()
	// The pods and namespaces informers sync within a second or two; give
	// the source ample time to (wrongly) publish.
	select {
	case <-published:
		t.Error("published a snapshot without being able to read policies")
	case <-time.After(5 * time.Second):
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestPrivilegedKubeAnnotator(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.ApplyDeploy(t)
	ctx := t.Context()
	pod := c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "web-0", Node: "node-1", IP: "198.18.1.10",
		Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"keep": "me"}})
	client, dyn := agentClients(t, c)
	a := kube.NewAnnotator(client, testLogger(t))
	ref := inventory.Pod{Namespace: "shop", Name: "web-0", UID: string(pod.UID)}

	annotations := func() map[string]string {
		t.Helper()
		p, err := c.Client.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations
	}
	for range 2 { // idempotent
		if err := a.SetRedirection(ctx, ref, true); err != nil {
			t.Fatal(err)
		}
		if got := annotations(); !maps.Equal(got, map[string]string{"keep": "me", kube.RedirectionAnnotation: "enabled"}) {
			t.Fatalf("annotations = %v", got)
		}
	}

	// The Source sees it, so a restarted agent knows what it had captured.
	src := kube.NewSource(client, dyn, testLogger(t))
	src.Coalesce, src.MinInterval = 20*time.Millisecond, 50*time.Millisecond
	wait := runSource(t, src)
	wait("the annotation", func(s *inventory.Snapshot) bool {
		p, ok := findPod(s, "shop", "web-0")
		return ok && p.Annotations[kube.RedirectionAnnotation] == "enabled"
	})

	for range 2 {
		if err := a.SetRedirection(ctx, ref, false); err != nil {
			t.Fatal(err)
		}
		if got := annotations(); !maps.Equal(got, map[string]string{"keep": "me"}) {
			t.Fatalf("annotations = %v", got)
		}
	}
	wait("the annotation removed", func(s *inventory.Snapshot) bool {
		p, ok := findPod(s, "shop", "web-0")
		return ok && len(p.Annotations) == 0
	})

	// A pod recreated under the same name is not touched with the old UID.
	c.DeletePod(t, "shop", "web-0")
	if err := a.SetRedirection(ctx, ref, false); err != nil {
		t.Errorf("removing from a deleted pod: %v", err)
	}
	if err := a.SetRedirection(ctx, ref, true); !apierrors.IsNotFound(err) {
		t.Errorf("annotating a deleted pod: err = %v, want NotFound", err)
	}
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "web-0", Node: "node-1", IP: "198.18.1.11"})
	if err := a.SetRedirection(ctx, ref, true); err == nil {
		t.Error("annotated a recreated pod through the old pod's UID")
	}
	if err := a.SetRedirection(ctx, ref, false); err != nil {
		t.Errorf("removing through the old pod's UID: %v, want nil (that pod is not annotated)", err)
	}
	if got := annotations(); got[kube.RedirectionAnnotation] != "" {
		t.Errorf("recreated pod annotated: %v", got)
	}

	// The agent's RBAC allows only the status subresource.
	_, err := client.Pods("shop").Patch(ctx, "web-0", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"x":"y"}}}`), metav1.PatchOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("agent patching a pod (not its status): err = %v, want Forbidden", err)
	}
}

func TestPrivilegedKubeTokenReview(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.ApplyDeploy(t)
	ctx := t.Context()

	agentPod := c.CreatePod(t, kubetest.Pod{Namespace: "istio-system", Name: "ferry-abcde", ServiceAccount: "ferry",
		Node: "node-1", IP: "198.18.0.1", HostNetwork: true, Labels: map[string]string{"app": "ferry"}})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "web-0", ServiceAccount: "web", Node: "node-1", IP: "198.18.1.10"})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "db-0", ServiceAccount: "db", Node: "node-2", IP: "198.18.2.10"})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "batch-0", ServiceAccount: "batch", Node: "node-1", IP: "198.18.1.11"})
	c.SetPodStatus(t, "shop", "batch-0", corev1.PodSucceeded, "198.18.1.11")

	// The CA runs as ferry-ca, with deploy/'s RBAC.
	auth, err := kube.NewTokenReviewAuthenticator(apiAs(t, c, "istio-system", "ferry-ca"), kube.TokenReviewConfig{Audiences: []string{"istio-ca"}})
	if err != nil {
		t.Fatal(err)
	}
	var later atomic.Bool // the clock of the review cache, past its TTL
	kube.SetClock(auth, func() time.Time {
		if later.Load() {
			return time.Now().Add(kube.DefaultReviewSuccessTTL)
		}
		return time.Now()
	})

	// The agent's projected token: bound to its pod, audience istio-ca.
	tok := c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: agentPod})
	caller, err := auth.Authenticate(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	want := istioca.Caller{Identity: certs.Identity{Namespace: "istio-system", ServiceAccount: "ferry"}, Node: "node-1"}
	if caller != want {
		t.Errorf("caller = %+v, want %+v", caller, want)
	}

	// A token bound to no pod identifies the service account, not a node.
	unbound := c.Token(t, "shop", "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}})
	if caller, err := auth.Authenticate(ctx, unbound); err != nil || caller != (istioca.Caller{Identity: certs.Identity{Namespace: "shop", ServiceAccount: "web"}}) {
		t.Errorf("unbound token: %+v, %v", caller, err)
	}

	for name, tok := range map[string]string{
		"empty":          "",
		"garbage":        "not-a-token",
		"wrong audience": c.Token(t, "istio-system", "ferry", kubetest.TokenOptions{Pod: agentPod}),
		"forged":         tok[:len(tok)-4] + "AAAA",
	} {
		if _, err := auth.Authenticate(ctx, tok); !errors.Is(err, kube.ErrUnauthenticated) {
			t.Errorf("%s token: err = %v, want ErrUnauthenticated", name, err)
		}
	}

	for _, q := range []struct {
		node, ns, sa string
		want         bool
	}{
		{"node-1", "shop", "web", true},
		{"node-2", "shop", "web", false},
		{"node-2", "shop", "db", true},
		{"node-1", "shop", "db", false},
		{"node-1", "shop", "batch", false}, // finished
		{"node-1", "other", "web", false},
		{"", "shop", "web", false},
	} {
		got, err := auth.ServiceAccountOnNode(ctx, q.node, q.ns, q.sa)
		if err != nil || got != q.want {
			t.Errorf("ServiceAccountOnNode(%q, %s/%s) = %v, %v; want %v", q.node, q.ns, q.sa, got, err, q.want)
		}
	}

	// Once the agent's pod is gone (or replaced), its token is worthless,
	// as soon as its cached review expires.
	c.DeletePod(t, "istio-system", "ferry-abcde")
	if _, err := auth.Authenticate(ctx, tok); err != nil {
		t.Errorf("token of a deleted pod, within the cache TTL: %v, want it served from the cache", err)
	}
	later.Store(true)
	if _, err := auth.Authenticate(ctx, tok); !errors.Is(err, kube.ErrUnauthenticated) {
		t.Errorf("token of a deleted pod: err = %v, want ErrUnauthenticated", err)
	}
}
