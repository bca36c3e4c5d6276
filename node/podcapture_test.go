package node

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/node/cni"
	"github.com/ferrymesh/ferry/node/inventory"
)

// TestWithAddressesFillsCapturedPods: a captured pod the API lists without
// an address gets the one the CNI plugin reported; the API's address, other
// nodes' pods, another incarnation (UID) and the snapshot itself are left
// alone.
func TestWithAddressesFillsCapturedPods(t *testing.T) {
	ip := netip.MustParseAddr("198.18.1.5")
	v6 := netip.MustParseAddr("2001:db8::5")
	p := &podCapture{captured: map[netip.Addr]*capturedPod{
		ip: {Pod: cni.Pod{Namespace: "mesh", Name: "web", UID: "u1", IPs: []netip.Addr{ip, v6}}, ip: ip},
	}}
	listed := netip.MustParseAddr("198.18.1.9")
	snap := &inventory.Snapshot{Pods: []inventory.Pod{
		{Namespace: "mesh", Name: "web", UID: "u1", NodeName: "n1"},
		{Namespace: "mesh", Name: "other", NodeName: "n1", IP: listed},
	}}
	got := p.withAddresses(snap, "n1")
	if got == snap {
		t.Fatal("nothing filled")
	}
	if got.Pods[0].IP != ip || len(got.Pods[0].IPs) != 2 {
		t.Errorf("web = %v %v, want %v and both addresses", got.Pods[0].IP, got.Pods[0].IPs, ip)
	}
	if got.Pods[1].IP != listed {
		t.Errorf("other pod changed: %v", got.Pods[1].IP)
	}
	if snap.Pods[0].IP.IsValid() {
		t.Error("the snapshot itself was changed")
	}
	for name, s := range map[string]*inventory.Snapshot{
		"another node": {Pods: []inventory.Pod{{Namespace: "mesh", Name: "web", UID: "u1", NodeName: "n2"}}},
		"another UID":  {Pods: []inventory.Pod{{Namespace: "mesh", Name: "web", UID: "u2", NodeName: "n1"}}},
		"API address":  {Pods: []inventory.Pod{{Namespace: "mesh", Name: "web", UID: "u1", NodeName: "n1", IP: listed}}},
	} {
		if got := p.withAddresses(s, "n1"); got != s {
			t.Errorf("%s: filled %v", name, got.Pods[0].IP)
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
