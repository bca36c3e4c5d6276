package inventory

import "testing"

// FuzzParse feeds arbitrary bytes to the manifest parser: it must never panic,
// and a rejected file contributes no objects.
func FuzzParse(f *testing.F) {
	f.Add([]byte(manifests))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: 1.2.3.4}\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/8\"]}}]}]}\n"))
	f.Add([]byte("---\n---\nkind: [\n"))
	f.Add([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: &a x, labels: *a}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := parse("fuzz.yaml", b)
		if err != nil && (len(objs.pods) > 0 || len(objs.namespaces) > 0 || len(objs.aps) > 0 || len(objs.pas) > 0) {
			t.Fatalf("rejected file yielded objects: %v", err)
		}
	})
}
