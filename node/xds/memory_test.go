package xds

import (
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/node/xds/workloadapi"
)

// TestWorkloadMemory bounds what the source holds per pod of the cluster,
// measured on the heap over 100k workloads as istiod sends them for
// bench/inventory's cluster (100 pods a namespace and a node, one
// service account, each pod bound to one of its namespace's 10 policies),
// decoded and published in a snapshot. It logs the figure.
func TestWorkloadMemory(t *testing.T) {
	const n = 100_000
	bodies := make([]*anypb.Any, n)
	names := make([]string, n)
	for i := range n {
		ns, name := "scale-"+strconv.Itoa(i/100), "pod-"+strconv.Itoa(i)
		ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		names[i] = "Kubernetes//Pod/" + ns + "/" + name
		a, err := anypb.New(&workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{
			Uid: names[i], Name: name, Namespace: ns, Addresses: [][]byte{ip.AsSlice()}, Network: "",
			ServiceAccount: "app", Node: "node-" + strconv.Itoa(i/100), WorkloadType: workloadapi.WorkloadType_POD,
			TunnelProtocol: workloadapi.TunnelProtocol_HBONE, Status: workloadapi.WorkloadStatus_HEALTHY,
			CanonicalName: "a" + strconv.Itoa(i%100), CanonicalRevision: "latest", WorkloadName: name, ClusterId: "Kubernetes",
			TrustDomain: "cluster.local", Capacity: wrapperspb.UInt32(1),
			AuthorizationPolicies: []string{ns + "/policy-" + strconv.Itoa(i%10)}, // 10k policies
		}}})
		if err != nil {
			t.Fatal(err)
		}
		bodies[i] = a
	}
	local := &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{}}
	type held struct {
		st   *state
		snap *inventory.Snapshot
	}
	h, bytes := testutil.Retained(func() held {
		st := newState()
		for i, body := range bodies {
			name := strings.Clone(names[i]) // as decoding the response allocates it
			r, err := decode(TypeAddress, name, body)
			if err != nil {
				t.Fatal(err)
			}
			st.put(TypeAddress, name, r)
		}
		return held{st, st.snapshot(local, "node-7", "Kubernetes")}
	})
	per := int(bytes) / n
	snap := h.snap
	runtime.KeepAlive(h.st)
	runtime.KeepAlive(bodies)
	runtime.KeepAlive(names)
	if len(snap.Pods) != n || !slices.Equal(snap.Pods[n-1].Mesh.AuthorizationPolicies.Slice(), []string{"scale-999/policy-9"}) {
		t.Fatalf("%d pods, last %+v", len(snap.Pods), snap.Pods[n-1])
	}
	t.Logf("%d bytes per pod held by the source and its snapshot (%d MB for %d pods)", per, per*n>>20, n)
	if per > 416 {
		t.Errorf("%d bytes per pod, want under 416", per)
	}
}
