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
	w := WatchUninstall(ctx, c, "istio-system", "ferry-abc", log)
	byHand := WatchUninstall(ctx, c, "istio-system", "by-hand", log)
	select {
	case <-w.synced:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch never synced")
	}

	// A rolling update changes the DaemonSet; another DaemonSet goes away.
	ds2 := ds.DeepCopy()
	ds2.Spec.Template.Spec.Containers = []corev1.Container{{Name: "ferry", Image: "ferry:v2"}}
	if _, err := c.AppsV1().DaemonSets("istio-system").Update(ctx, ds2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.AppsV1().DaemonSets("istio-system").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the informer deliver (a wrong answer would show up here)
	if w.Uninstalling() {
		t.Fatal("an update of the DaemonSet, or another's deletion, read as an uninstall")
	}
	waitFor := func(want bool, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for w.Uninstalling() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s was not seen", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A foreground deletion first marks the object.
	marked := ds2.DeepCopy()
	marked.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if _, err := c.AppsV1().DaemonSets("istio-system").Update(ctx, marked, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(true, "the DaemonSet's deletion timestamp")
	if err := c.AppsV1().DaemonSets("istio-system").Delete(ctx, "ferry", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	waitFor(true, "the DaemonSet's deletion")
	// Created again (kubectl replace --force): not an uninstall any more.
	if _, err := c.AppsV1().DaemonSets("istio-system").Create(ctx, &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "ferry", Namespace: "istio-system", UID: "ds-uid-2"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(false, "the DaemonSet's re-creation")
	if byHand.Uninstalling() {
		t.Error("an agent pod without a DaemonSet read the deletion as its own uninstall")
	}
}
