package deploy_test

import (
	"io/fs"
	"path"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// manifestFiles follows kustomization.yaml resources from dir, depth first,
// and returns the manifest files in apply order.
func manifestFiles(t *testing.T, dir string) []string {
	t.Helper()
	b, err := fs.ReadFile(deploy.FS(), path.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(b, &k, yaml.DisallowUnknownFields); err != nil {
		// kustomization files carry apiVersion and kind too.
		if err := yaml.Unmarshal(b, &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
	}
	var files []string
	for _, r := range k.Resources {
		p := path.Join(dir, r)
		if st, err := fs.Stat(deploy.FS(), p); err == nil && st.IsDir() {
			files = append(files, manifestFiles(t, p)...)
			continue
		}
		files = append(files, p)
	}
	return files
}

// TestManifests checks that every manifest is listed in a kustomization,
// decodes, and names its namespace explicitly.
func TestManifests(t *testing.T) {
	files := manifestFiles(t, ".")
	all, err := fs.Glob(deploy.FS(), "*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range all {
		if path.Base(f) != "kustomization.yaml" && !slices.Contains(files, f) {
			t.Errorf("%s is in no kustomization.yaml", f)
		}
	}
	if !slices.Equal(deploy.Files(), files) {
		t.Errorf("deploy.Files() = %q, kustomization order is %q", deploy.Files(), files)
	}
	for _, f := range deploy.CRDFiles() {
		if !slices.Contains(files, f) {
			t.Errorf("CRDFiles lists %s, which no kustomization applies", f)
		}
	}
	kinds := map[string]int{}
	for _, f := range files {
		b, err := fs.ReadFile(deploy.FS(), f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := kubetest.DecodeYAML(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, o := range objs {
			kinds[o.GetKind()]++
			clusterScoped := strings.HasPrefix(o.GetKind(), "Cluster") || o.GetKind() == "Namespace" || o.GetKind() == "CustomResourceDefinition"
			if !clusterScoped && o.GetNamespace() != "istio-system" {
				t.Errorf("%s: %s %s: namespace %q, want istio-system", f, o.GetKind(), o.GetName(), o.GetNamespace())
			}
		}
	}
	want := map[string]int{
		"CustomResourceDefinition": 2, "Namespace": 1, "ServiceAccount": 2, "ClusterRole": 2,
		"ClusterRoleBinding": 2, "Role": 1, "RoleBinding": 1, "DaemonSet": 1, "Deployment": 1, "Service": 1,
	}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d %s objects, want %d", kinds[k], k, n)
		}
	}
}

// TestPrivilegedKubeManifestsDryRun applies every manifest, in kustomization
// order, with a server-side dry run against a real API server: schemas,
// defaulting, admission (Pod Security included) and RBAC escalation checks.
func TestPrivilegedKubeManifestsDryRun(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	ctx := t.Context()
	// Namespaced objects cannot be admitted, even in a dry run, into a
	// namespace that does not exist: create it for real first.
	ns, err := fs.ReadFile(deploy.FS(), "base/namespace.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Apply(ctx, ns, kubetest.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range manifestFiles(t, ".") {
		b, err := fs.ReadFile(deploy.FS(), f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := c.Apply(ctx, b, kubetest.ApplyOptions{DryRun: true})
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, o := range objs {
			t.Logf("%s: %s %s/%s: ok", f, o.GetKind(), o.GetNamespace(), o.GetName())
		}
	}
}

// TestPrivilegedKubeRBAC applies the manifests for real and checks, with
// SubjectAccessReviews, that the agent and the CA hold exactly the access
// they need.
func TestPrivilegedKubeRBAC(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.ApplyDeploy(t)
	ctx := t.Context()
	const (
		agent = "system:serviceaccount:istio-system:ferry"
		ca    = "system:serviceaccount:istio-system:ferry-ca"
	)
	type access struct {
		user, verb, group, resource, subresource, namespace string
		allowed                                             bool
	}
	for _, a := range []access{
		{agent, "list", "", "pods", "", "", true},
		{agent, "watch", "", "pods", "", "", true},
		{agent, "get", "", "pods", "", "app", true},
		{agent, "patch", "", "pods", "status", "app", true},
		{agent, "patch", "", "pods", "", "app", false},
		{agent, "update", "", "pods", "status", "app", false},
		{agent, "delete", "", "pods", "", "app", false},
		{agent, "create", "", "pods", "", "app", false},
		{agent, "watch", "", "namespaces", "", "", true},
		{agent, "patch", "", "namespaces", "", "", false},
		{agent, "list", "", "services", "", "", true},
		{agent, "watch", "", "services", "", "", true},
		{agent, "update", "", "services", "", "app", false},
		{agent, "watch", "apps", "daemonsets", "", "istio-system", true},
		{agent, "watch", "apps", "daemonsets", "", "app", false},
		{agent, "delete", "apps", "daemonsets", "", "istio-system", false},
		{agent, "watch", "security.istio.io", "authorizationpolicies", "", "", true},
		{agent, "watch", "security.istio.io", "peerauthentications", "", "", true},
		{agent, "create", "security.istio.io", "authorizationpolicies", "", "app", false},
		{agent, "get", "", "secrets", "", "istio-system", false},
		{agent, "create", "", "serviceaccounts", "token", "app", false},
		{agent, "create", "authentication.k8s.io", "tokenreviews", "", "", false},
		{ca, "create", "authentication.k8s.io", "tokenreviews", "", "", true},
		{ca, "get", "", "pods", "", "app", true},
		{ca, "list", "", "pods", "", "", true},
		{ca, "watch", "", "pods", "", "", false},
		{ca, "patch", "", "pods", "status", "app", false},
		{ca, "get", "", "secrets", "", "istio-system", false},
		{ca, "create", "", "serviceaccounts", "token", "app", false},
	} {
		sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   a.user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:istio-system", "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace,
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != a.allowed {
			t.Errorf("%s %s %s/%s in %q: allowed = %v, want %v", a.user, a.verb, a.resource, a.subresource, a.namespace, sar.Status.Allowed, a.allowed)
		}
	}
}
