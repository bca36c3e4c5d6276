package redirect

import (
	"net/netip"
	"testing"
)

func TestPodPlanGolden(t *testing.T) {
	probe := netip.MustParseAddr("169.254.7.127")
	for _, tc := range []struct {
		name  string
		addrs []netip.Addr
		probe netip.Addr
	}{
		{"pod-plan", addrs("198.18.1.2"), netip.Addr{}},
		{"pod-plan-probe", addrs("198.18.1.2"), probe},
		{"pod-plan-dual-stack", addrs("2001:2:0:1::2", "198.18.1.2"), probe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPodPlan(tc.addrs, tc.probe, Config{})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, p.String())
		})
	}
}

func TestPodPlanRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		addrs []netip.Addr
		probe netip.Addr
	}{
		"no IPv4":    {addrs("2001:2:0:1::2"), netip.Addr{}},
		"two IPv4":   {addrs("198.18.1.2", "198.18.1.3"), netip.Addr{}},
		"IPv6 probe": {addrs("198.18.1.2"), netip.MustParseAddr("fe80::1")},
		"no address": {nil, netip.Addr{}},
	} {
		if _, err := NewPodPlan(tc.addrs, tc.probe, Config{}); err == nil {
			t.Errorf("%s: NewPodPlan accepted it", name)
		}
	}
}
