package node

import (
	"net/netip"
	"testing"

	"github.com/ferrymesh/ferry/node/inventory"
)

func TestEnrolled(t *testing.T) {
	ip := netip.MustParseAddr("198.18.1.2")
	ambientNS := inventory.Namespace{Name: "foo", Labels: map[string]string{DataplaneModeLabel: "ambient"}}
	plainNS := inventory.Namespace{Name: "foo"}
	pod := func(mut func(*inventory.Pod)) inventory.Pod {
		p := inventory.Pod{Name: "web", Namespace: "foo", IP: ip, Labels: map[string]string{}, Annotations: map[string]string{}}
		if mut != nil {
			mut(&p)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		pod  inventory.Pod
		ns   inventory.Namespace
		want bool
	}{
		{"namespace label enrols", pod(nil), ambientNS, true},
		{"no labels", pod(nil), plainNS, false},
		{"pod label enrols in any namespace", pod(func(p *inventory.Pod) { p.Labels[DataplaneModeLabel] = "ambient" }), plainNS, true},
		{"pod none beats namespace", pod(func(p *inventory.Pod) { p.Labels[DataplaneModeLabel] = "none" }), ambientNS, false},
		{"other pod value defers to namespace", pod(func(p *inventory.Pod) { p.Labels[DataplaneModeLabel] = "sidecar" }), ambientNS, true},
		{"host network never", pod(func(p *inventory.Pod) { p.HostNetwork = true }), ambientNS, false},
		{"sidecar never", pod(func(p *inventory.Pod) { p.Annotations[SidecarStatusAnnotation] = "{}" }), ambientNS, false},
		{"no IP yet", pod(func(p *inventory.Pod) { p.IP = netip.Addr{} }), ambientNS, false},
		{"agent's own pod", pod(func(p *inventory.Pod) {
			p.Namespace = "istio-system"
			p.Labels[AgentAppLabel] = "ferry"
			p.Labels[DataplaneModeLabel] = "ambient"
		}), ambientNS, false},
		{"unknown namespace", pod(nil), inventory.Namespace{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Enrolled(tc.pod, tc.ns, "istio-system"); got != tc.want {
				t.Errorf("Enrolled = %v, want %v", got, tc.want)
			}
		})
	}
}
