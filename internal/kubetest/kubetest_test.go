package kubetest_test

import (
	"slices"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestPrivilegedKubeCluster(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	ctx := t.Context()

	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver %s", v.GitVersion)

	pod := c.CreatePod(t, kubetest.Pod{Namespace: "app", Name: "web-0", ServiceAccount: "web", Node: "node-1", IP: "198.18.1.10"})
	if pod.Status.PodIP != "198.18.1.10" || pod.Spec.NodeName != "node-1" || pod.Status.Phase != "Running" {
		t.Fatalf("pod = node %q ip %q phase %q", pod.Spec.NodeName, pod.Status.PodIP, pod.Status.Phase)
	}

	// A pod-bound token for a custom audience survives a TokenReview, which
	// reports the pod and its node.
	tok := c.Token(t, "app", "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
	tr, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{"istio-ca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:app:web" {
		t.Fatalf("token review = %+v", tr.Status)
	}
	if got := tr.Status.User.Extra["authentication.kubernetes.io/node-name"]; !slices.Equal(got, []string{"node-1"}) {
		t.Errorf("node-name extra = %q", got)
	}

	// RBAC is on: a service account with no bindings can read nothing.
	_, err = c.ClientAs(t, "app", "web").CoreV1().Pods("app").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("unbound service account listing pods: err = %v, want Forbidden", err)
	}

	// Kubeconfig files work for both kinds of credentials.
	for _, token := range []string{"", tok} {
		cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig(t, token))
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cs.CoreV1().Namespaces().Get(ctx, "app", metav1.GetOptions{})
		if token == "" && err != nil {
			t.Errorf("admin kubeconfig: %v", err)
		}
		if token != "" && !apierrors.IsUnauthorized(err) {
			// An istio-ca token is not valid for the API server itself.
			t.Errorf("token kubeconfig with an istio-ca token: err = %v, want Unauthorized", err)
		}
	}

	// The Istio CRDs are installed.
	objs, err := c.Apply(ctx, []byte(`
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: STRICT}}
`), kubetest.ApplyOptions{})
	if err != nil || len(objs) != 1 {
		t.Fatalf("apply PeerAuthentication: %v", err)
	}
}
