package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os/exec"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
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

// patchFiles lists the patch files dir's kustomization.yaml names.
func patchFiles(t *testing.T, dir string) []string {
	t.Helper()
	b, err := fs.ReadFile(deploy.FS(), path.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Patches []struct {
			Path string `json:"path"`
		} `json:"patches"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	var files []string
	for _, p := range k.Patches {
		if p.Path != "" {
			files = append(files, path.Join(dir, p.Path))
		}
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
	referenced := slices.Clone(files)
	for _, o := range []string{deploy.IstiodOverlay, deploy.CaptureNodeOverlay} {
		referenced = append(referenced, patchFiles(t, o)...)
	}
	for _, f := range all {
		if path.Base(f) != "kustomization.yaml" && !slices.Contains(referenced, f) {
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
// order, and deploy/capture-node's DaemonSet with a server-side dry run
// against a real API server: schemas, defaulting, admission (Pod Security
// included) and RBAC escalation checks.
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
	// deploy/capture-node's agent (its other objects are the default's).
	for _, o := range kubetest.RenderDeploy(t, deploy.CaptureNodeOverlay) {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		if _, err := c.ApplyObjects(ctx, []*unstructured.Unstructured{o}, kubetest.ApplyOptions{DryRun: true}); err != nil {
			t.Errorf("%s: %s: %v", deploy.CaptureNodeOverlay, objectKey(o), err)
		} else {
			t.Logf("%s: %s: ok", deploy.CaptureNodeOverlay, objectKey(o))
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
		checkAccess(ctx, t, c, a)

	}
}

// objectKey names an object as kustomize identifies it.
func objectKey(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

// TestRenderDefault checks kubetest.Render on the default install: its
// objects are those of deploy.Files(), in that order.
func TestRenderDefault(t *testing.T) {
	var want []*unstructured.Unstructured
	for _, f := range deploy.Files() {
		b, err := fs.ReadFile(deploy.FS(), f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := kubetest.DecodeYAML(b)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, objs...)
	}
	got := kubetest.RenderDeploy(t, ".")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Render(.) differs from deploy.Files(): %d objects, want %d", len(got), len(want))
	}
}

// TestIstiodOverlay checks what deploy/istiod renders to: deploy/base's
// agent objects, with the DaemonSet pointed at istiod and the ClusterRole
// cut to xDS mode's reads, and nothing of the namespace or `ferry ca`.
func TestIstiodOverlay(t *testing.T) {
	base := map[string]*unstructured.Unstructured{}
	for _, o := range kubetest.RenderDeploy(t, "base") {
		base[objectKey(o)] = o
	}
	var keys []string
	got := map[string]*unstructured.Unstructured{}
	for _, o := range kubetest.RenderDeploy(t, deploy.IstiodOverlay) {
		keys = append(keys, objectKey(o))
		got[objectKey(o)] = o
	}
	want := []string{
		"ServiceAccount istio-system/ferry", "ClusterRole /ferry", "ClusterRoleBinding /ferry",
		"Role istio-system/ferry", "RoleBinding istio-system/ferry", "DaemonSet istio-system/ferry",
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("objects %q, want %q", keys, want)
	}
	for _, k := range []string{"ServiceAccount istio-system/ferry", "ClusterRoleBinding /ferry", "Role istio-system/ferry", "RoleBinding istio-system/ferry"} {
		if !reflect.DeepEqual(got[k], base[k]) {
			t.Errorf("%s differs from deploy/base's", k)
		}
	}

	// The DaemonSet: deploy/base's but for the arguments and the root.
	var ds, baseDS appsv1.DaemonSet
	fromUnstructured(t, got["DaemonSet istio-system/ferry"], &ds)
	fromUnstructured(t, base["DaemonSet istio-system/ferry"], &baseDS)
	c := &ds.Spec.Template.Spec.Containers[0]
	// deploy/base's arguments (the patch restates them all, so a change
	// there must be made here too), with istiod for the CA and xDS.
	var wantArgs []string
	for _, a := range baseDS.Spec.Template.Spec.Containers[0].Args {
		if strings.HasPrefix(a, "--ca-addr=") {
			a = "--ca-addr=istiod.istio-system.svc:15012"
		}
		wantArgs = append(wantArgs, a)
		if a == "--kube" {
			wantArgs = append(wantArgs, "--xds-addr=istiod.istio-system.svc:15012")
		}
	}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args %q, want %q", c.Args, wantArgs)
	}
	if !slices.Contains(c.Args, "--ca-root=/var/run/secrets/istio/root-cert.pem") {
		t.Errorf("args %q: no --ca-root=/var/run/secrets/istio/root-cert.pem", c.Args)
	}
	// --ca-root is root-cert.pem in the mount of istiod's ConfigMap.
	var rootDir string
	for _, m := range c.VolumeMounts {
		if m.Name == "ca-root-cert" {
			rootDir = m.MountPath
		}
	}
	if rootDir != "/var/run/secrets/istio" {
		t.Errorf("ca-root-cert mounted at %q, want /var/run/secrets/istio", rootDir)
	}
	var rootVol *corev1.Volume
	for i, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "ca-root-cert" {
			rootVol = &ds.Spec.Template.Spec.Volumes[i]
		}
	}
	if rootVol == nil || rootVol.ConfigMap == nil || rootVol.ConfigMap.Name != "istio-ca-root-cert" || rootVol.Secret != nil {
		t.Errorf("ca-root-cert volume = %+v, want the ConfigMap istio-ca-root-cert", rootVol)
	}
	baseDS.Spec.Template.Spec.Containers[0].Args = c.Args
	for i, v := range baseDS.Spec.Template.Spec.Volumes {
		if v.Name == "ca-root-cert" {
			baseDS.Spec.Template.Spec.Volumes[i] = *rootVol
		}
	}
	if !reflect.DeepEqual(ds, baseDS) {
		t.Errorf("the DaemonSet differs from deploy/base's in more than its args and root volume:\n%+v\nwant\n%+v", ds, baseDS)
	}

	// The ClusterRole: pods and namespaces read, pods/status patched;
	// nothing on Services, policies or any other group.
	var cr rbacv1.ClusterRole
	fromUnstructured(t, got["ClusterRole /ferry"], &cr)
	for _, r := range cr.Rules {
		for _, g := range r.APIGroups {
			if g != "" {
				t.Errorf("rule %+v: group %q, want only the core group", r, g)
			}
		}
		for _, res := range r.Resources {
			if res == "services" || res == "*" || strings.Contains(res, "authorizationpolicies") || strings.Contains(res, "peerauthentications") {
				t.Errorf("rule %+v grants %s", r, res)
			}
		}
		if slices.Contains(r.Verbs, "*") || len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: want plain verbs on resources", r)
		}
	}
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"patch"}},
	}
	if !reflect.DeepEqual(cr.Rules, wantRules) {
		t.Errorf("ClusterRole rules %+v, want %+v", cr.Rules, wantRules)
	}
}

func fromUnstructured(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if o == nil {
		t.Fatal("no object")
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s: %v", objectKey(o), err)
	}
}

// TestRenderMatchesKustomize renders deploy/, deploy/istiod and
// deploy/capture-node with `kubectl kustomize`, where kubectl is installed,
// and checks that kubetest.Render, which the tests apply, gives the same
// objects. Lists of named entries (volumes, containers) are compared by
// name: kustomize may move a patched entry.
func TestRenderMatchesKustomize(t *testing.T) {
	testutil.System(t)
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed")
	}
	for _, dir := range []string{".", deploy.IstiodOverlay, deploy.CaptureNodeOverlay} {
		out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", dir).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", dir, err)
		}
		want, err := kubetest.DecodeYAML(out)
		if err != nil {
			t.Fatal(err)
		}
		got := kubetest.RenderDeploy(t, dir)
		index := func(objs []*unstructured.Unstructured) map[string]any {
			m := map[string]any{}
			for _, o := range objs {
				m[objectKey(o)] = byName(o.Object)
			}
			return m
		}
		if g, w := index(got), index(want); !reflect.DeepEqual(g, w) {
			gj, _ := json.MarshalIndent(g, "", " ")
			wj, _ := json.MarshalIndent(w, "", " ")
			t.Errorf("%s: Render gives\n%s\nkubectl kustomize\n%s", dir, gj, wj)
		}
	}
}

// byName returns v with every list whose elements all have a "name" sorted
// by it.
func byName(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := map[string]any{}
		for k, e := range v {
			m[k] = byName(e)
		}
		return m
	case []any:
		l := make([]any, len(v))
		named := true
		for i, e := range v {
			l[i] = byName(e)
			if m, ok := e.(map[string]any); !ok || m["name"] == nil {
				named = false
			}
		}
		if named {
			slices.SortStableFunc(l, func(a, b any) int {
				return strings.Compare(fmt.Sprint(a.(map[string]any)["name"]), fmt.Sprint(b.(map[string]any)["name"]))
			})
		}
		return l
	}
	return v
}

// TestPrivilegedKubeRBACIstiod applies deploy/istiod for real, beside an
// istio-system namespace another install created, and checks with
// SubjectAccessReviews that the agent holds exactly what xDS mode needs.
func TestPrivilegedKubeRBACIstiod(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	c.Namespace(t, "istio-system", nil) // Istio's
	c.ApplyDeployOverlay(t, deploy.IstiodOverlay)
	ctx := t.Context()
	const agent = "system:serviceaccount:istio-system:ferry"
	for _, a := range []struct {
		verb, group, resource, subresource, namespace string
		allowed                                       bool
	}{
		// Pods: RBAC cannot hold the agent to spec.nodeName=<node>.
		{"list", "", "pods", "", "", true},
		{"watch", "", "pods", "", "", true},
		{"get", "", "pods", "", "istio-system", true},
		{"patch", "", "pods", "status", "app", true},
		{"patch", "", "pods", "", "app", false},
		{"update", "", "pods", "status", "app", false},
		{"delete", "", "pods", "", "app", false},
		{"list", "", "namespaces", "", "", true},
		{"watch", "", "namespaces", "", "", true},
		{"patch", "", "namespaces", "", "", false},
		{"watch", "apps", "daemonsets", "", "istio-system", true},
		{"watch", "apps", "daemonsets", "", "app", false},
		// What istiod sends instead.
		{"list", "", "services", "", "", false},
		{"get", "", "services", "", "app", false},
		{"list", "", "endpoints", "", "", false},
		{"list", "discovery.k8s.io", "endpointslices", "", "", false},
		{"list", "security.istio.io", "authorizationpolicies", "", "", false},
		{"watch", "security.istio.io", "peerauthentications", "", "", false},
		// Nor what the CA did.
		{"create", "authentication.k8s.io", "tokenreviews", "", "", false},
		{"get", "", "secrets", "", "istio-system", false},
		{"get", "", "configmaps", "", "istio-system", false},
		{"create", "", "serviceaccounts", "token", "app", false},
	} {
		checkAccess(ctx, t, c, access{user: agent, verb: a.verb, group: a.group, resource: a.resource, subresource: a.subresource, namespace: a.namespace, allowed: a.allowed})

	}
	if _, err := c.Client.CoreV1().ServiceAccounts("istio-system").Get(ctx, "ferry-ca", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("service account ferry-ca: err = %v, want NotFound (istiod is the CA)", err)
	}
}

// access is one request a SubjectAccessReview checks, and whether RBAC
// must allow it.
type access struct {
	user, verb, group, resource, subresource, namespace string
	allowed                                             bool
}

// checkAccess asks the API server whether a.user (a service account of
// istio-system) may make the request a names, and fails t unless the
// answer is a.allowed.
func checkAccess(ctx context.Context, t *testing.T, c *kubetest.Cluster, a access) {
	t.Helper()
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
		t.Errorf("%s %s %s %s/%s in %q: allowed = %v, want %v", a.user, a.verb, a.group, a.resource, a.subresource, a.namespace, sar.Status.Allowed, a.allowed)
	}
}
