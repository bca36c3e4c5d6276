package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/ferrymesh/ferry/node/inventory"
)

// TestSourceCoalesces checks, in virtual time, that a burst of changes
// yields one snapshot, that updates to fields Ferry ignores yield none, and
// that snapshots are at least MinInterval apart. (The integration with a real
// API server is TestPrivilegedKubeSource.)
func TestSourceCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}})
		dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
			{Group: "security.istio.io", Version: "v1", Resource: authorizationPolicies}: "AuthorizationPolicyList",
			{Group: "security.istio.io", Version: "v1", Resource: peerAuthentications}:   "PeerAuthenticationList",
		})
		src := NewSource(clientset{client}, dyn, slog.New(slog.DiscardHandler))
		src.Coalesce, src.MinInterval = 100*time.Millisecond, time.Second

		var (
			mu    sync.Mutex
			snaps []*inventory.Snapshot
			at    []time.Time
		)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- src.Run(ctx, func(s *inventory.Snapshot) {
				mu.Lock()
				defer mu.Unlock()
				snaps = append(snaps, s)
				at = append(at, time.Now())
			})
		}()
		count := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(snaps)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := count(); n != 1 {
			t.Fatalf("%d snapshots after sync, want 1", n)
		}

		// A burst of 50 pods: one snapshot.
		for i := range 50 {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: "shop", Labels: map[string]string{"app": "web"}},
				Spec:       corev1.PodSpec{NodeName: "node-1"},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("198.18.1.%d", i+1)},
			}
			if _, err := client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := count(); n != 2 {
			t.Fatalf("%d snapshots after a burst, want 2", n)
		}
		if got := len(snaps[1].Pods); got != 50 {
			t.Errorf("%d pods in the snapshot, want 50", got)
		}

		// Updates that touch no field Ferry uses: no snapshot.
		for i := range 10 {
			pod, err := client.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionStatus(fmt.Sprint(i%2 == 0))}}
			pod.ResourceVersion = fmt.Sprint(1000 + i)
			if _, err := client.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := count(); n != 2 {
			t.Fatalf("%d snapshots after irrelevant updates, want still 2", n)
		}

		// Two relevant changes far apart: two snapshots, MinInterval apart
		// at least.
		for _, ns := range []string{"a", "b"} {
			if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			synctest.Wait()
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		mu.Lock()
		n, gap := len(snaps), at[len(at)-1].Sub(at[len(at)-2])
		mu.Unlock()
		if n != 4 || gap < time.Second {
			t.Errorf("%d snapshots, last two %v apart; want 4, at least 1s apart", n, gap)
		}

		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
