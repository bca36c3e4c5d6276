package kube_test

import (
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/kube"
)

// TestPrivilegedKubeSourceNodeOnly runs the Source as the agent runs it in
// xDS mode (NodeOnly), as the agent's service account with deploy/istiod's
// RBAC, which grants neither Services nor policies: it syncs on its node's
// pods and the namespaces, sees no other node's pods, and the annotator
// still writes.
func TestPrivilegedKubeSourceNodeOnly(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.Namespace(t, "istio-system", nil) // Istio's install made it, not the overlay
	c.ApplyDeployOverlay(t, deploy.IstiodOverlay)
	ctx := t.Context()

	c.Namespace(t, "shop", map[string]string{"istio.io/dataplane-mode": "ambient"})
	web := c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "web-0", ServiceAccount: "web", Node: "node-1", IP: "198.18.1.10",
		Labels: map[string]string{"app": "web"}})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "db-0", ServiceAccount: "db", Node: "node-2", IP: "198.18.2.10"})
	c.CreatePod(t, kubetest.Pod{Namespace: "other", Name: "solo", Node: "node-2", IP: "198.18.2.11"})

	client, dyn := agentClients(t, c)
	// What istiod sends instead, the agent may not read.
	if _, err := client.Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing services: err = %v, want Forbidden", err)
	}
	for _, gvr := range []schema.GroupVersionResource{kubetest.AuthorizationPolicies, kubetest.PeerAuthentications} {
		if _, err := dyn.Resource(gvr).Namespace(metav1.NamespaceAll).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("listing %s: err = %v, want Forbidden", gvr.Resource, err)
		}
	}

	src := kube.NewSource(client, dyn, testLogger(t))
	src.NodeOnly = "node-1"
	src.Coalesce, src.MinInterval = 20*time.Millisecond, 50*time.Millisecond
	wait := runSource(t, src)

	onlyNode1 := func(s *inventory.Snapshot) {
		t.Helper()
		for _, p := range s.Pods {
			if p.NodeName != "node-1" {
				t.Errorf("pod %s/%s of %s in a node-1 snapshot", p.Namespace, p.Name, p.NodeName)
			}
		}
		if len(s.Services)+len(s.AuthorizationPolicies)+len(s.PeerAuthentications) != 0 {
			t.Errorf("snapshot has %d services, %d authorization policies, %d peer authentications; want none",
				len(s.Services), len(s.AuthorizationPolicies), len(s.PeerAuthentications))
		}
	}
	s := wait("node-1's pods", func(s *inventory.Snapshot) bool { _, ok := findPod(s, "shop", "web-0"); return ok })
	onlyNode1(s)
	if p, _ := findPod(s, "shop", "web-0"); p.UID != string(web.UID) || p.ServiceAccount != "web" || !enrolled(s, "shop", "web-0") {
		t.Errorf("web-0 = %+v, enrolled %v", p, enrolled(s, "shop", "web-0"))
	}
	// Every namespace, not only those with a pod on the node: a namespace's
	// label enrols pods scheduled later.
	for _, ns := range []string{"shop", "other", "istio-system"} {
		if _, ok := s.Namespaces[ns]; !ok {
			t.Errorf("namespace %s missing: %v", ns, s.Namespaces)
		}
	}

	// Pods scheduled later: node-1's come, node-2's never.
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "late-2", Node: "node-2", IP: "198.18.2.12"})
	c.CreatePod(t, kubetest.Pod{Namespace: "shop", Name: "late-1", Node: "node-1", IP: "198.18.1.12"})
	s = wait("late-1", func(s *inventory.Snapshot) bool { _, ok := findPod(s, "shop", "late-1"); return ok })
	onlyNode1(s)

	// The capture annotation is written with this RBAC, and read back.
	a := kube.NewAnnotator(client, testLogger(t))
	if err := a.SetRedirection(ctx, inventory.Pod{Namespace: "shop", Name: "web-0", UID: string(web.UID)}, true); err != nil {
		t.Fatal(err)
	}
	wait("web-0 annotated", func(s *inventory.Snapshot) bool {
		p, ok := findPod(s, "shop", "web-0")
		return ok && p.Annotations[kube.RedirectionAnnotation] == kube.RedirectionEnabled
	})
}
