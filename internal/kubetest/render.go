package kubetest

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/ferrymesh/ferry/deploy"
)

// kustomization is the part of kustomize's Kustomization that Render
// supports. It is decoded strictly: a field kustomize knows and Render does
// not (images, namePrefix, a target's labelSelector) is an error rather than
// ignored.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []patch  `json:"patches"`
}

// patch is one entry of a kustomization's patches: a strategic merge patch
// read from Path or given inline as Patch, applied to what Target selects
// or, without a target, to the object the patch itself names.
type patch struct {
	Path   string  `json:"path"`
	Patch  string  `json:"patch"`
	Target *target `json:"target"`
}

// target selects objects as kustomize's Selector does: every field set must
// match, each an anchored regular expression.
type target struct {
	Group     string `json:"group"`
	Version   string `json:"version"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

func (t *target) selects(o *unstructured.Unstructured) (bool, error) {
	gvk := o.GroupVersionKind()
	for _, f := range [][2]string{
		{t.Group, gvk.Group}, {t.Version, gvk.Version}, {t.Kind, gvk.Kind},
		{t.Name, o.GetName()}, {t.Namespace, o.GetNamespace()},
	} {
		if f[0] == "" {
			continue
		}
		re, err := regexp.Compile("^(?:" + f[0] + ")$")
		if err != nil {
			return false, err
		}
		if !re.MatchString(f[1]) {
			return false, nil
		}
	}
	return true, nil
}

// Render builds the kustomization in dir of fsys as `kubectl kustomize`
// does, for the subset deploy/ uses:
//
//   - resources: manifest files, and directories holding a
//     kustomization.yaml, rendered first (depth first, in order);
//   - patches: strategic merge patches, from a file (path) or inline
//     (patch), applied to every object their target selects or, without a
//     target, to the one object with the patch's apiVersion, kind, name and
//     namespace; a patch holding `$patch: delete` removes them.
//
// Anything else in a kustomization.yaml is an error, and so is a patch that
// matches no object (kustomize accepts a target matching none). The objects
// come in resource order, which puts a Namespace before what it holds
// (kustomize sorts them by kind instead). Only kinds client-go knows can be
// patched.
func Render(fsys fs.FS, dir string) ([]*unstructured.Unstructured, error) {
	b, err := fs.ReadFile(fsys, path.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, fmt.Errorf("kubetest: render: %w", err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("kubetest: render %s/kustomization.yaml: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range k.Resources {
		p := path.Join(dir, r)
		if st, err := fs.Stat(fsys, p); err == nil && st.IsDir() {
			sub, err := Render(fsys, p)
			if err != nil {
				return nil, err
			}
			objs = append(objs, sub...)
			continue
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("kubetest: render: %w", err)
		}
		o, err := DecodeYAML(b)
		if err != nil {
			return nil, fmt.Errorf("kubetest: render %s: %w", p, err)
		}
		objs = append(objs, o...)
	}
	for i, p := range k.Patches {
		what := fmt.Sprintf("%s/kustomization.yaml: patches[%d]", dir, i)
		body := []byte(p.Patch)
		if p.Path != "" {
			what = path.Join(dir, p.Path)
			if body, err = fs.ReadFile(fsys, what); err != nil {
				return nil, fmt.Errorf("kubetest: render: %w", err)
			}
		}
		if (p.Path == "") == (p.Patch == "") {
			return nil, fmt.Errorf("kubetest: render %s: want one of path and patch", what)
		}
		docs, err := DecodeYAML(body)
		if err != nil {
			return nil, fmt.Errorf("kubetest: render %s: %w", what, err)
		}
		if len(docs) != 1 {
			return nil, fmt.Errorf("kubetest: render %s: %d patches, want 1", what, len(docs))
		}
		if objs, err = applyPatch(objs, docs[0], p.Target); err != nil {
			return nil, fmt.Errorf("kubetest: render %s: %w", what, err)
		}
	}
	return objs, nil
}

// applyPatch applies the strategic merge patch p to the objects t selects
// (or, for a nil t, the one p names) and returns the objects left.
func applyPatch(objs []*unstructured.Unstructured, p *unstructured.Unstructured, t *target) ([]*unstructured.Unstructured, error) {
	selects := func(o *unstructured.Unstructured) (bool, error) {
		if t != nil {
			return t.selects(o)
		}
		return o.GroupVersionKind() == p.GroupVersionKind() && o.GetName() == p.GetName() && o.GetNamespace() == p.GetNamespace(), nil
	}
	var out []*unstructured.Unstructured
	matched := 0
	for _, o := range objs {
		ok, err := selects(o)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, o)
			continue
		}
		matched++
		if p.Object["$patch"] == "delete" {
			continue
		}
		po, err := scheme.Scheme.New(o.GroupVersionKind())
		if err != nil {
			return nil, fmt.Errorf("patch %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		// The object's identity stays; the patch's only finds it.
		body := runtime.DeepCopyJSON(p.Object)
		body["apiVersion"], body["kind"] = o.GetAPIVersion(), o.GetKind()
		if err := unstructured.SetNestedField(body, o.GetName(), "metadata", "name"); err != nil {
			return nil, err
		}
		unstructured.RemoveNestedField(body, "metadata", "namespace")
		merged, err := strategicpatch.StrategicMergeMapPatch(runtime.DeepCopyJSON(o.Object), body, po)
		if err != nil {
			return nil, fmt.Errorf("patch %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		out = append(out, &unstructured.Unstructured{Object: merged})
	}
	if matched == 0 {
		return nil, errors.New("the patch matches no object")
	}
	return out, nil
}

// RenderDeploy renders the kustomization in dir of deploy.FS (".", the
// default install, or deploy.IstiodOverlay). It fails t on error.
func RenderDeploy(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := Render(deploy.FS(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// ApplyDeployOverlay applies for real, in resource order, the objects of a
// kustomization in deploy/ (deploy.IstiodOverlay), as ApplyDeploy applies
// the default install. An overlay that leaves the Namespace to another
// install needs it created first (Namespace). It fails t on error.
func (c *Cluster) ApplyDeployOverlay(t testing.TB, dir string) {
	t.Helper()
	if _, err := c.ApplyObjects(t.Context(), RenderDeploy(t, dir), ApplyOptions{}); err != nil {
		t.Fatalf("kubetest: %s: %v", dir, err)
	}
}
