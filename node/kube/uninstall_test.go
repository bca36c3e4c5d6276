package kube

import (
	"context"
	"log/slog"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestUninstallWatch checks that only the deletion of the agent pod's own
// DaemonSet reads as an uninstall, and only until one by that name exists
// again.
func TestUninstallWatch(t *testing.T) {
	yes := true
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ferry", Namespace: "istio-system", UID: "ds-uid"}}
	owned := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ferry-abc", Namespace: "istio-system",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ferry", UID: "ds-uid", Controller: &yes}}}}
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "by-hand", Namespace: "istio-system"}}
	other := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "istio-system"}}
	c := fake.NewClientset(ds, other, owned, bare)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	w := WatchUninstall(ctx, clientset{c}, "istio-system", "ferry-abc", log)
	byHand := WatchUninstall(ctx, clientset{c}, "istio-system", "by-hand", log)
	select {
	case <-w.synced:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch never synced")
	}
	// waitFor waits until w has taken n events about its DaemonSet and
	// says whether it is uninstalling then.
	waitFor := func(n int64, want bool, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for w.handled.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s was not seen", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got := w.Uninstalling(); got != want {
			t.Fatalf("after %s: uninstalling %v, want %v", what, got, want)
		}
	}
	waitFor(1, false, "the DaemonSet's listing")

	// Another DaemonSet goes away, then a rolling update changes ours: the
	// informer hands over events in order, so once the update is taken the
	// deletion has been too.
	if err := c.AppsV1().DaemonSets("istio-system").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ds2 := ds.DeepCopy()
	ds2.Spec.Template.Spec.Containers = []corev1.Container{{Name: "ferry", Image: "ferry:v2"}}
	if _, err := c.AppsV1().DaemonSets("istio-system").Update(ctx, ds2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(2, false, "another DaemonSet's deletion and an update of ours")
	// Deleted at once (background deletion).
	if err := c.AppsV1().DaemonSets("istio-system").Delete(ctx, "ferry", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(3, true, "the DaemonSet's deletion")
	// Created again (kubectl replace --force): not an uninstall any more.
	ds3 := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ferry", Namespace: "istio-system", UID: "ds-uid-2"}}
	if _, err := c.AppsV1().DaemonSets("istio-system").Create(ctx, ds3, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(4, false, "the DaemonSet's re-creation")
	// A foreground deletion first marks the object, then removes it.
	marked := ds3.DeepCopy()
	marked.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if _, err := c.AppsV1().DaemonSets("istio-system").Update(ctx, marked, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(5, true, "the DaemonSet's deletion timestamp")
	if err := c.AppsV1().DaemonSets("istio-system").Delete(ctx, "ferry", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(6, true, "the marked DaemonSet's deletion")
	if byHand.Uninstalling() {
		t.Error("an agent pod without a DaemonSet read the deletion as its own uninstall")
	}
}
