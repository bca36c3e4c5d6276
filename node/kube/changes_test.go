package kube

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
)

// sourceStores are a Source's stores, filled by a test, and the
// snapshots built from them in turn.
type sourceStores struct {
	tr                             *transformer
	pods                           *podStore
	namespaces, services, aps, pas cache.Store
	book                           policyBook
	built                          published
}

func newSourceStores() *sourceStores {
	tr := &transformer{}
	store := func() cache.Store { return cache.NewStore(cache.MetaNamespaceKeyFunc) }
	return &sourceStores{tr: tr, pods: &podStore{transform: tr.pod, changed: func() {}},
		namespaces: store(), services: store(), aps: store(), pas: store()}
}

// build builds the next snapshot; policies says a policy informer's
// handler ran since the last.
func (s *sourceStores) build(policies bool) *inventory.Snapshot {
	return buildSnapshot(&s.book, &s.built, s.pods, policies, s.namespaces, s.services, s.aps, s.pas)
}

// TestSnapshotChanges: each snapshot lists the pods added, changed (in
// what Ferry reads of them) and removed (or finished) since the one before,
// with its own entries; a namespace or Service that changed, or a relist,
// lists nothing (the agent builds its view whole).
func TestSnapshotChanges(t *testing.T) {
	st := newSourceStores()
	pods, namespaces, services := st.pods, st.namespaces, st.services
	put := func(s cache.Store, obj any) {
		t.Helper()
		if err := s.Update(obj); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(i int, mutate func(*corev1.Pod)) *corev1.Pod {
		t.Helper()
		p := fullPod(i)
		if mutate != nil {
			mutate(p)
		}
		if err := pods.Update(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var initial []any
	for i := range 5 {
		initial = append(initial, fullPod(i))
	}
	if err := pods.Replace(initial, "1"); err != nil {
		t.Fatal(err)
	}
	put(namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	build := func() *inventory.Snapshot { return st.build(false) }
	changes := func(s *inventory.Snapshot) map[string]string {
		t.Helper()
		if s.Changes == nil {
			return nil
		}
		got := map[string]string{}
		for k, p := range s.Changes.Pods {
			got[k] = "removed"
			if p != nil {
				got[k] = p.UID
				if i := slices.IndexFunc(s.Pods, func(q *inventory.Pod) bool { return q.Key() == k }); i < 0 || s.Pods[i] != p {
					t.Errorf("%s: not the snapshot's own entry", k)
				}
			}
		}
		return got
	}

	first := build()
	if first.Revision == 0 || first.Changes != nil || len(first.Pods) != 5 {
		t.Fatalf("first snapshot: revision %d, changes %v, %d pods; want a revision, no changes, 5 pods", first.Revision, first.Changes, len(first.Pods))
	}
	pod(1, func(p *corev1.Pod) { p.Labels["version"] = "v2" })
	pod(7, nil)
	if err := pods.Delete(fullPod(2)); err != nil {
		t.Fatal(err)
	}
	pod(3, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	pod(4, func(p *corev1.Pod) { p.ResourceVersion = "99"; p.Status.Conditions = nil }) // nothing Ferry reads
	second := build()
	if second.Changes == nil || second.Changes.Since != first.Revision {
		t.Fatalf("second snapshot: changes %+v, want them since %d", second.Changes, first.Revision)
	}
	want := map[string]string{
		"shop/web-7d9f8c6b5-00001": string(fullPod(1).UID),
		"shop/web-7d9f8c6b5-00007": string(fullPod(7).UID),
		"shop/web-7d9f8c6b5-00002": "removed",
		"shop/web-7d9f8c6b5-00003": "removed",
	}
	if got := changes(second); !maps.Equal(got, want) {
		t.Errorf("changes = %v, want %v", got, want)
	}
	if len(second.Pods) != 4 {
		t.Errorf("%d pods, want 4 (0, 1, 4, 7)", len(second.Pods))
	}
	if got := changes(build()); len(got) != 0 {
		t.Errorf("nothing changed: changes = %v", got)
	}
	// More changes than are merged one by one.
	for i := 10; i < 110; i++ {
		pod(i, nil)
	}
	pod(0, func(p *corev1.Pod) { p.Labels["version"] = "v3" })
	if s := build(); len(changes(s)) != 101 || len(s.Pods) != 104 ||
		!slices.IsSortedFunc(s.Pods, func(a, b *inventory.Pod) int { return strings.Compare(a.Key(), b.Key()) }) {
		t.Errorf("101 changes: %d listed, %d pods (want 104), sorted %v", len(changes(s)), len(s.Pods),
			slices.IsSortedFunc(s.Pods, func(a, b *inventory.Pod) int { return strings.Compare(a.Key(), b.Key()) }))
	}

	put(namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}})
	if s := build(); s.Changes != nil {
		t.Errorf("a namespace changed: changes %v, want none", s.Changes.Pods)
	}
	put(services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}})
	if s := build(); s.Changes != nil {
		t.Errorf("a Service was added: changes %v, want none", s.Changes.Pods)
	}
	if s := build(); s.Changes == nil {
		t.Errorf("nothing changed since: no changes listed")
	}
	if err := pods.Replace(initial, "2"); err != nil {
		t.Fatal(err)
	}
	if s := build(); s.Changes != nil || len(s.Pods) != 5 {
		t.Errorf("after a relist: changes %v, %d pods; want none listed, 5 pods", s.Changes, len(s.Pods))
	}
}

// TestSnapshotSharesPolicies: a snapshot reads the policies again only
// when their informers' handlers said they changed; until then it shares
// the last snapshot's, revision and all.
func TestSnapshotSharesPolicies(t *testing.T) {
	st := newSourceStores()
	policy := func(rv, principal string) {
		t.Helper()
		o, _ := st.tr.policy(authz.KindAuthorizationPolicy)(&unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "p", "namespace": "shop", "uid": "u1", "resourceVersion": rv},
			"spec": map[string]any{"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{
				"principals": []any{principal}}}}}}},
		}})
		if err := st.aps.Update(o); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(i int, version string) {
		t.Helper()
		p := fullPod(i)
		p.Labels["version"] = version
		if err := st.pods.Update(p); err != nil {
			t.Fatal(err)
		}
	}
	build := st.build
	principal := func(s *inventory.Snapshot) string {
		t.Helper()
		if len(s.AuthorizationPolicies) != 1 {
			t.Fatalf("%d policies, want 1", len(s.AuthorizationPolicies))
		}
		return s.AuthorizationPolicies[0].Spec.Rules[0].From[0].Source.Principals[0]
	}
	if err := st.pods.Replace(nil, "1"); err != nil {
		t.Fatal(err)
	}
	pod(0, "v1")
	policy("1", "a")
	first := build(false) // the first snapshot reads them regardless
	if principal(first) != "a" || first.PolicyRevision == 0 {
		t.Fatalf("first: %q, revision %d", principal(first), first.PolicyRevision)
	}
	pod(0, "v2")
	policy("2", "b") // its handler has not run yet
	second := build(false)
	if second.Changes == nil || len(second.Changes.Pods) != 1 || &second.AuthorizationPolicies[0] != &first.AuthorizationPolicies[0] ||
		second.PolicyRevision != first.PolicyRevision {
		t.Errorf("a pod changed: changes %v, policies shared %v, revisions %d and %d; want one pod and the policies shared",
			second.Changes, &second.AuthorizationPolicies[0] == &first.AuthorizationPolicies[0], first.PolicyRevision, second.PolicyRevision)
	}
	third := build(true)
	if principal(third) != "b" || third.PolicyRevision == second.PolicyRevision {
		t.Errorf("after the policy's handler: %q, revision %d (was %d); want b, a new revision",
			principal(third), third.PolicyRevision, second.PolicyRevision)
	}
}

// TestSourceListsPodChanges runs the Source on a fake API: pods created,
// relabelled and deleted through it reach the snapshots, which list them
// as changed (the informer's handler names them).
func TestSourceListsPodChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
		dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
			{Group: "security.istio.io", Version: "v1", Resource: authorizationPolicies}: "AuthorizationPolicyList",
			{Group: "security.istio.io", Version: "v1", Resource: peerAuthentications}:   "PeerAuthenticationList",
		})
		src := NewSource(clientset{client}, dyn, slog.New(slog.DiscardHandler))
		var mu sync.Mutex
		var last *inventory.Snapshot
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- src.Run(ctx, func(s *inventory.Snapshot) {
				mu.Lock()
				defer mu.Unlock()
				last = s
			})
		}()
		step := func(what string, change func(), want map[string]string, changed ...string) {
			t.Helper()
			change()
			time.Sleep(5 * time.Second)
			synctest.Wait()
			mu.Lock()
			s := last
			mu.Unlock()
			got := map[string]string{}
			for _, p := range s.Pods {
				got[p.Name] = p.Labels["app"]
			}
			if !maps.Equal(got, want) {
				t.Errorf("%s: pods %v, want %v", what, got, want)
			}
			if s.Changes == nil {
				t.Fatalf("%s: no changes listed", what)
			}
			if keys := slices.Sorted(maps.Keys(s.Changes.Pods)); !slices.Equal(keys, changed) {
				t.Errorf("%s: changes %v, want %v", what, keys, changed)
			}
		}
		pods := client.CoreV1().Pods("shop")
		time.Sleep(time.Second)
		synctest.Wait()
		step("created", func() {
			for i := range 3 {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: "shop", Labels: map[string]string{"app": "web"}},
					Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("198.18.1.%d", i+1)}}
				if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}, map[string]string{"web-0": "web", "web-1": "web", "web-2": "web"}, "shop/web-0", "shop/web-1", "shop/web-2")
		step("relabelled and deleted", func() {
			pod, err := pods.Get(ctx, "web-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pod.Labels = map[string]string{"app": "api"}
			if _, err := pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := pods.Delete(ctx, "web-2", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, map[string]string{"web-0": "web", "web-1": "api"}, "shop/web-1", "shop/web-2")
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
