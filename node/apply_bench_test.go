package node

import (
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/node/inventory"
)

// scaleSnapshot is a cluster of n pods, 100 per namespace and per node, and
// policies AuthorizationPolicies, as bench/inventory grows one; version
// changes one pod's labels.
func scaleSnapshot(n, policies, version int) *inventory.Snapshot {
	snap := &inventory.Snapshot{Namespaces: map[string]inventory.Namespace{}}
	labels := map[string]map[string]string{}
	for i := range n {
		ns := "scale-" + strconv.Itoa(i/100)
		app := "a" + strconv.Itoa(i%100)
		if labels[app] == nil {
			labels[app] = map[string]string{"app": app}
		}
		if _, ok := snap.Namespaces[ns]; !ok {
			snap.Namespaces[ns] = inventory.Namespace{Name: ns, Labels: map[string]string{DataplaneModeLabel: "ambient"}}
		}
		ip := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		p := &inventory.Pod{Name: "p" + strconv.Itoa(i), Namespace: ns, UID: fmt.Sprintf("uid-%d", i), ServiceAccount: "app",
			NodeName: "node-" + strconv.Itoa(i/100), IP: ip, IPs: []netip.Addr{ip}, Labels: labels[app]}
		if i == 0 {
			p.Labels = map[string]string{"app": app, "version": strconv.Itoa(version)}
		}
		snap.Pods = append(snap.Pods, p)
	}
	for i := range policies {
		ns := "scale-" + strconv.Itoa(i%max(1, n/100))
		snap.AuthorizationPolicies = append(snap.AuthorizationPolicies, authz.AuthorizationPolicy{
			Metadata: authz.ObjectMeta{Name: "pol-" + strconv.Itoa(i), Namespace: ns},
			Spec: authz.AuthorizationPolicySpec{
				Selector: &authz.WorkloadSelector{MatchLabels: map[string]string{"app": "a" + strconv.Itoa(i%100)}},
				Rules:    []authz.Rule{{From: []authz.From{{Source: authz.Source{Principals: []string{"cluster.local/ns/" + ns + "/sa/app"}}}}}},
			},
		})
	}
	return snap
}

// BenchmarkApply measures the agent applying a snapshot that differs from
// the last in one pod's labels, and says so (Snapshot.Changes, as the
// Kubernetes source does), at 1k and 100k cluster pods with 10k policies
// (issue 23's apply_cost_100k_vs_1k, which scripts/bench-inventory reads
// from it), for an agent whose node runs 100 of them.
func BenchmarkApply(b *testing.B) { benchmarkApply(b, true) }

// BenchmarkApplyWhole is BenchmarkApply with snapshots that do not list
// their changes: the agent builds its view whole, as after a namespace or
// Service changed.
func BenchmarkApplyWhole(b *testing.B) { benchmarkApply(b, false) }

func benchmarkApply(b *testing.B, changes bool) {
	for _, n := range []int{1000, 100_000} {
		b.Run("pods="+strconv.Itoa(n), func(b *testing.B) {
			a := applyAgent(b, "node-3")
			// The policies are the same in both, as a source says (the
			// same revision).
			snaps := [2]*inventory.Snapshot{scaleSnapshot(n, 10_000, 0), scaleSnapshot(n, 10_000, 1)}
			rev := inventory.NewPolicyRevision()
			snaps[0].PolicyRevision, snaps[1].PolicyRevision = rev, rev
			last := inventory.NewRevision()
			next := func(i int) *inventory.Snapshot {
				s := *snaps[i%2]
				if changes {
					s.Changes = &inventory.Changes{Since: last, Pods: map[string]*inventory.Pod{s.Pods[0].Key(): s.Pods[0]}}
				}
				s.Revision = inventory.NewRevision()
				last = s.Revision
				return &s
			}
			if err := a.apply(next(1)); err != nil {
				b.Fatal(err)
			}
			runtime.GC() // the setup's garbage is not the apply's
			i := 0
			cpu := processCPU()
			for b.Loop() {
				if err := a.apply(next(i)); err != nil {
					b.Fatal(err)
				}
				i++
			}
			// The process's CPU, the garbage collector's included: what
			// a change costs the node (wall time also counts waiting for
			// a core another process holds).
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU returns the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
