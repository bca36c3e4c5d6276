package inventory

import "testing"

// TestPodKey: a pod's key is "namespace/name" whatever its UID says, and a
// pod whose istiod UID ends with it shares the UID's bytes (no allocation).
func TestPodKey(t *testing.T) {
	for _, p := range []*Pod{
		{Namespace: "a", Name: "b"},
		{Namespace: "a", Name: "b", Mesh: &MeshWorkload{UID: "Kubernetes//Pod/a/b"}},
		{Namespace: "a", Name: "b", Mesh: &MeshWorkload{UID: "Kubernetes//Pod/xa/b"}},
		{Namespace: "a", Name: "b", Mesh: &MeshWorkload{UID: "Kubernetes//Pod/a/bb"}},
		{Namespace: "a", Name: "b", Mesh: &MeshWorkload{UID: "a-b"}},
		{Namespace: "a", Name: "b", Mesh: &MeshWorkload{UID: "b"}},
		{Namespace: "a", Name: "b", Mesh: &MeshWorkload{}},
	} {
		if got := p.Key(); got != "a/b" {
			t.Errorf("%+v: key %q, want a/b", p.Mesh, got)
		}
	}
	p := &Pod{Namespace: "ns", Name: "web-0", Mesh: &MeshWorkload{UID: "Kubernetes//Pod/ns/web-0"}}
	if n := testing.AllocsPerRun(10, func() { _ = p.Key() }); n != 0 {
		t.Errorf("istiod's pod: %v allocations for its key, want 0", n)
	}
}
