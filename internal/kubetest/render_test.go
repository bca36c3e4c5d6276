package kubetest_test

import (
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ferrymesh/ferry/internal/kubetest"
)

const renderBase = `
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: x}
data: {k: v, keep: me}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b, namespace: x}
data: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: a, namespace: x}
`

// TestRender covers the kustomize subset: a patch by name, one by
// target, a deletion, and refusals of what it does not support.
func TestRender(t *testing.T) {
	fsys := fstest.MapFS{
		"base/kustomization.yaml": {Data: []byte("resources: [objects.yaml]\n")},
		"base/objects.yaml":       {Data: []byte(renderBase)},
		"o/kustomization.yaml": {Data: []byte(`
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../base]
patches:
- path: a.yaml
- target: {kind: ConfigMap, name: "a|b"}
  patch: |-
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: any}
    data: {added: "yes"}
- target: {kind: Secret}
  patch: |-
    $patch: delete
    apiVersion: v1
    kind: Secret
    metadata: {name: any}
`)},
		"o/a.yaml": {Data: []byte(`
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: x}
data: {k: patched}
`)},
		"unknown/kustomization.yaml":   {Data: []byte("resources: [../base]\nnamePrefix: p-\n")},
		"unmatched/kustomization.yaml": {Data: []byte("resources: [../base]\npatches: [{path: p.yaml}]\n")},
		"unmatched/p.yaml":             {Data: []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: x}\n")},
	}
	objs, err := kubetest.Render(fsys, "o")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		data, _, _ := unstructured.NestedStringMap(o.Object, "data")
		got = append(got, o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()+" "+strings.Join(sortedPairs(data), ","))
	}
	want := []string{
		"ConfigMap x/a added=yes,k=patched,keep=me",
		"ConfigMap x/b added=yes,k=v",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rendered\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	for dir, msg := range map[string]string{
		"unknown":   `unknown field "namePrefix"`,
		"unmatched": "matches no object",
	} {
		if _, err := kubetest.Render(fsys, dir); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Render(%s): err = %v, want one holding %q", dir, err, msg)
		}
	}
}

func sortedPairs(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}
