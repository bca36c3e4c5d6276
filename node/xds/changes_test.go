package xds

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
)

// TestSnapshotChanges: after random changes to istiod's workloads and the
// node's own pods, each snapshot lists every pod that differs from the one
// before (added, changed, gone), with its own entry; a changed Service, or
// a pod of another cluster, lists nothing (the agent builds its view whole).
func TestSnapshotChanges(t *testing.T) {
	const cluster, node = "Kubernetes", "n1"
	rnd := rand.New(rand.NewPCG(3, 4))
	st := newState()
	local := &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{"a": {Name: "a"}}}
	pod := func(name, nodeName string) *inventory.Pod {
		ip := netip.AddrFrom4([4]byte{198, 18, 0, byte(rnd.IntN(8))}) // few: local pods hide istiod's
		return &inventory.Pod{Namespace: "a", Name: name, NodeName: nodeName, IP: ip,
			Mesh: &inventory.MeshWorkload{UID: cluster + "//Pod/a/" + name, HBONE: rnd.IntN(2) == 0}}
	}
	held := map[string]*inventory.Pod{} // istiod's pods as put, by name
	var prev *inventory.Snapshot
	for step := range 300 {
		wantNone := false
		switch r := rnd.IntN(20); {
		case r == 0: // a Service
			st.put(TypeAddress, "svc", resource{service: &inventory.Service{Name: "s" + strconv.Itoa(step), Namespace: "a"}})
			wantNone = true
		case r == 1: // the node's pods
			local = &inventory.Snapshot{Namespaces: local.Namespaces}
			for i := range rnd.IntN(3) {
				local.Pods = append(local.Pods, pod("p"+strconv.Itoa(i), node))
			}
		default:
			for range rnd.IntN(4) + 1 {
				name := "p" + strconv.Itoa(rnd.IntN(30))
				uid := cluster + "//Pod/a/" + name
				if rnd.IntN(3) == 0 {
					st.drop(TypeAddress, uid)
					delete(held, uid)
				} else {
					held[uid] = pod(name, []string{node, "n2", "n3"}[rnd.IntN(3)])
					st.put(TypeAddress, uid, resource{pod: held[uid]})
				}
			}
		}
		snap := st.snapshot(local, node, cluster)
		var got, want []*inventory.Pod
		for _, r := range st.res[TypeAddress].sorted {
			if r.pod != nil {
				got = append(got, r.pod)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(held)) {
			want = append(want, held[name])
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: pods in order %v, want %v", step, got, want)
		}
		if prev == nil || wantNone {
			if prev != nil && snap.Changes != nil {
				t.Fatalf("step %d: a Service changed, yet changes are listed", step)
			}
			prev = snap
			continue
		}
		if snap.Changes == nil || snap.Changes.Since != prev.Revision {
			t.Fatalf("step %d: changes %+v, want them since %d", step, snap.Changes, prev.Revision)
		}
		before, after := byKey(t, prev), byKey(t, snap)
		for key, p := range after {
			if q, ok := before[key]; !ok || !reflect.DeepEqual(*p, *q) {
				if got, ok := snap.Changes.Pods[key]; !ok || got != p {
					t.Fatalf("step %d: %s changed, listed as %v", step, key, got)
				}
			}
		}
		for key := range before {
			if _, ok := after[key]; !ok {
				if got, ok := snap.Changes.Pods[key]; !ok || got != nil {
					t.Fatalf("step %d: %s gone, listed as %v (%v)", step, key, got, ok)
				}
			}
		}
		for key, p := range snap.Changes.Pods {
			if p != nil && after[key] != p {
				t.Fatalf("step %d: %s listed with an entry not the snapshot's", step, key)
			}
		}
		prev = snap
	}

	// Another cluster's pod may share a name: nothing listed.
	st.put(TypeAddress, "other//Pod/a/p1", resource{pod: &inventory.Pod{Namespace: "a", Name: "p1", Mesh: &inventory.MeshWorkload{UID: "other//Pod/a/p1"}}})
	st.snapshot(local, node, cluster)
	if s := st.snapshot(local, node, cluster); s.Changes != nil {
		t.Errorf("pods of another cluster: changes listed")
	}
}

func byKey(t *testing.T, s *inventory.Snapshot) map[string]*inventory.Pod {
	t.Helper()
	m := map[string]*inventory.Pod{}
	for i := range s.Pods {
		if _, dup := m[s.Pods[i].Key()]; dup {
			t.Fatalf("two pods named %s", s.Pods[i].Key())
		}
		m[s.Pods[i].Key()] = s.Pods[i]
	}
	return m
}

// TestSnapshotSharesPolicies: snapshots made between two changes of the
// Authorizations share one list of them, which the source holds them in; a
// change makes a new one.
func TestSnapshotSharesPolicies(t *testing.T) {
	st := newState()
	local := &inventory.Snapshot{}
	st.put(TypeAuthorization, "a/p1", resource{policy: &authz.TranslatedPolicy{Namespace: "a", Name: "p1", Action: "DENY"}})
	s1, s2 := st.snapshot(local, "n1", "Kubernetes"), st.snapshot(local, "n1", "Kubernetes")
	if len(s1.TranslatedPolicies) != 1 || &s1.TranslatedPolicies[0] != &s2.TranslatedPolicies[0] {
		t.Fatalf("unchanged policies not shared: %p, %p", s1.TranslatedPolicies, s2.TranslatedPolicies)
	}
	st.put(TypeAuthorization, "a/p0", resource{policy: &authz.TranslatedPolicy{Namespace: "a", Name: "p0", Action: "ALLOW"}})
	s3 := st.snapshot(local, "n1", "Kubernetes")
	if len(s3.TranslatedPolicies) != 2 || s3.TranslatedPolicies[0].Name != "p0" || len(s1.TranslatedPolicies) != 1 || s1.TranslatedPolicies[0].Name != "p1" {
		t.Fatalf("after a change: %+v, and the first snapshot's %+v", s3.TranslatedPolicies, s1.TranslatedPolicies)
	}
	// Each policy is held once: its resource points into the list.
	if r, _ := st.res[TypeAuthorization].get("a/p1"); r.policy != &s3.TranslatedPolicies[1] {
		t.Errorf("a/p1 held beside the list's copy")
	}
}
