package xds

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/ferrymesh/ferry/node/inventory"
)

// BenchmarkSnapshot measures the snapshot after one workload of 100k
// changed (istiod sent it again): the source's work for each change.
func BenchmarkSnapshot(b *testing.B) {
	const cluster = "Kubernetes"
	st := newState()
	pod := func(i int) resource {
		ns, name := "ns-"+strconv.Itoa(i/100), "p"+strconv.Itoa(i)
		ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		return resource{pod: &inventory.Pod{Namespace: ns, Name: name, NodeName: "node-" + strconv.Itoa(i/100), IP: ip,
			Mesh: &inventory.MeshWorkload{UID: cluster + "//Pod/" + ns + "/" + name, HBONE: true}}}
	}
	for i := range 100_000 {
		r := pod(i)
		st.put(TypeAddress, r.pod.Mesh.UID, r)
	}
	local := &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{}}
	st.snapshot(local, "node-3", cluster)
	b.ReportAllocs()
	for b.Loop() {
		r := pod(7)
		st.put(TypeAddress, r.pod.Mesh.UID, r)
		if s := st.snapshot(local, "node-3", cluster); s.Changes == nil || len(s.Changes.Pods) != 1 {
			b.Fatalf("changes %v", s.Changes)
		}
	}
}
