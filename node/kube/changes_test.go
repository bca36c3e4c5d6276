package kube

import (
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ferrymesh/ferry/node/inventory"
)

// TestSnapshotChanges: each snapshot lists the pods added, changed (a new
// object in the store) and removed (or finished) since the one before, with
// its own entries; a namespace or Service that changed lists nothing (the
// agent builds its view whole).
func TestSnapshotChanges(t *testing.T) {
	tr := &transformer{}
	pods := cache.NewStore(cache.MetaNamespaceKeyFunc)
	namespaces := cache.NewStore(cache.MetaNamespaceKeyFunc)
	services := cache.NewStore(cache.MetaNamespaceKeyFunc)
	aps, pas := cache.NewStore(cache.MetaNamespaceKeyFunc), cache.NewStore(cache.MetaNamespaceKeyFunc)
	put := func(s cache.Store, obj any) {
		t.Helper()
		if err := s.Update(obj); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(i int, mutate func(*corev1.Pod)) {
		t.Helper()
		p := fullPod(i)
		if mutate != nil {
			mutate(p)
		}
		obj, _ := tr.pod(p)
		put(pods, obj)
	}
	for i := range 5 {
		pod(i, nil)
	}
	put(namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
	var book policyBook
	var built published
	build := func() *inventory.Snapshot {
		return buildSnapshot(&book, &built, pods, namespaces, services, aps, pas)
	}
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
				if i := slices.IndexFunc(s.Pods, func(q inventory.Pod) bool { return q.Key() == k }); i < 0 || &s.Pods[i] != p {
					t.Errorf("%s: not the snapshot's own entry", k)
				}
			}
		}
		return got
	}

	first := build()
	if first.Revision == 0 || first.Changes != nil {
		t.Fatalf("first snapshot: revision %d, changes %v; want a revision, no changes", first.Revision, first.Changes)
	}
	pod(1, func(p *corev1.Pod) { p.Labels["version"] = "v2" })
	pod(7, nil)
	if err := pods.Delete(mustObj(t, pods, "shop/web-7d9f8c6b5-00002")); err != nil {
		t.Fatal(err)
	}
	pod(3, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
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
	if got := changes(build()); len(got) != 0 {
		t.Errorf("nothing changed: changes = %v", got)
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
}

func mustObj(t *testing.T, s cache.Store, key string) any {
	t.Helper()
	obj, ok, err := s.GetByKey(key)
	if err != nil || !ok {
		t.Fatalf("%s: %v %v", key, ok, err)
	}
	return obj
}
