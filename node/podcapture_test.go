package node

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unique"

	"github.com/ferrymesh/ferry/node/cni"
	"github.com/ferrymesh/ferry/node/inventory"
)

// TestViewFillsCapturedAddresses: a captured pod the API lists without an
// address gets the one the CNI plugin reported; the API's address, other
// nodes' pods, another incarnation (UID) and the snapshot itself are left
// alone.
func TestViewFillsCapturedAddresses(t *testing.T) {
	ip := netip.MustParseAddr("198.18.1.5")
	v6 := netip.MustParseAddr("2001:db8::5")
	p := &podCapture{captured: map[netip.Addr]*capturedPod{
		ip: {Pod: cni.Pod{Namespace: "mesh", Name: "web", UID: "u1", IPs: []netip.Addr{ip, v6}}, ip: ip},
	}}
	cfg := viewConfig{"n1", unique.Make("cluster.local"), "istio-system"}
	listed := netip.MustParseAddr("198.18.1.9")
	snap := &inventory.Snapshot{Pods: []*inventory.Pod{
		{Namespace: "mesh", Name: "web", UID: "u1", NodeName: "n1"},
		{Namespace: "mesh", Name: "other", NodeName: "n1", IP: listed},
	}}
	v := buildView(snap, cfg, p.addresses())
	if w, ok := v.workload(ip); !ok || w.Name != "web" || len(w.IPs) != 2 {
		t.Errorf("web at %v: %v, want it with both addresses", ip, w)
	}
	if got, _ := v.localPod("mesh", "web"); got.IP != ip {
		t.Errorf("localPod(web) = %v, want %v", got.IP, ip)
	}
	if w, ok := v.workload(listed); !ok || w.Name != "other" {
		t.Errorf("other pod changed: %v", w)
	}
	if snap.Pods[0].IP.IsValid() {
		t.Error("the snapshot itself was changed")
	}
	for name, s := range map[string]*inventory.Snapshot{
		"another node": {Pods: []*inventory.Pod{{Namespace: "mesh", Name: "web", UID: "u1", NodeName: "n2"}}},
		"another UID":  {Pods: []*inventory.Pod{{Namespace: "mesh", Name: "web", UID: "u2", NodeName: "n1"}}},
		"API address":  {Pods: []*inventory.Pod{{Namespace: "mesh", Name: "web", UID: "u1", NodeName: "n1", IP: listed}}},
	} {
		if _, ok := buildView(s, cfg, p.addresses()).workload(ip); ok {
			t.Errorf("%s: filled", name)
		}
	}
}

// TestHandedOverPodCaptureStandsBack: once another agent has taken the CNI
// socket over, apply releases nothing and the record is left to it.
func TestHandedOverPodCaptureStandsBack(t *testing.T) {
	ip := netip.MustParseAddr("198.18.1.5")
	taken := false
	p := &podCapture{
		log:       slog.New(slog.DiscardHandler),
		stateFile: filepath.Join(t.TempDir(), "pods.json"),
		takenOver: func() bool { return taken },
		captured: map[netip.Addr]*capturedPod{
			ip: {Pod: cni.Pod{Namespace: "mesh", Name: "gone"}, ip: ip, added: time.Now().Add(-2 * podGrace)},
		},
	}
	if err := p.saveLocked(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.stateFile); err != nil {
		t.Fatalf("not handed over: no record written: %v", err)
	}
	os.Remove(p.stateFile)
	taken = true
	// The pod is gone from the inventory: this agent would release it.
	if err := p.apply(newView(&inventory.Snapshot{}, "n1", "cluster.local", "istio-system")); err != nil {
		t.Fatal(err)
	}
	if !p.Captured(ip) {
		t.Error("a handed-over agent released a pod")
	}
	if err := p.saveLocked(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.stateFile); !os.IsNotExist(err) {
		t.Errorf("a handed-over agent wrote the record: %v", err)
	}
}
