package node

import (
	"net/netip"
	"testing"

	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// TestTrafficLabelsService checks how a connection's Service is named: by
// the ClusterIP its source dialled, else inbound by the one Service that
// selects the destination pod on that port, else not at all.
func TestTrafficLabelsService(t *testing.T) {
	ip := netip.MustParseAddr
	ap := netip.MustParseAddrPort
	snap := &inventory.Snapshot{
		Namespaces: map[string]inventory.Namespace{"shop": {Name: "shop"}},
		Pods: []*inventory.Pod{
			{Name: "web-0", Namespace: "shop", ServiceAccount: "web", NodeName: "n1", IP: ip("198.18.1.2"), Labels: map[string]string{"app": "web"}},
			{Name: "db-0", Namespace: "shop", ServiceAccount: "db", NodeName: "n1", IP: ip("198.18.1.3"), Labels: map[string]string{"app": "db", "tier": "data"}},
		},
		Services: []inventory.Service{
			{Name: "web", Namespace: "shop", ClusterIPs: []netip.Addr{ip("198.19.0.10")},
				Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "web"}},
			// Two Services select db-0 on 5432: no guess.
			{Name: "db", Namespace: "shop", ClusterIPs: []netip.Addr{ip("198.19.0.11")},
				Ports: []inventory.ServicePort{{Port: 5432}}, Selector: map[string]string{"app": "db"}},
			{Name: "data", Namespace: "shop", ClusterIPs: []netip.Addr{ip("198.19.0.12")},
				Ports: []inventory.ServicePort{{Port: 5432}}, Selector: map[string]string{"tier": "data"}},
			// In another namespace: never selects shop's pods.
			{Name: "web", Namespace: "other", Ports: []inventory.ServicePort{{Port: 8080}}, Selector: map[string]string{"app": "web"}},
		},
	}
	a := &Agent{cfg: Config{NodeName: "n1", TrustDomain: "cluster.local", ClusterDomain: "example.org", SystemNamespace: "istio-system"}}
	a.state.Store(&state{view: newView(snap, "n1", "cluster.local", "istio-system")})
	client := ap("198.18.1.9:40000")
	for _, tc := range []struct {
		name             string
		info             tunnel.ConnInfo
		svc, svcName, ns string
	}{
		{"outbound to a ClusterIP", tunnel.ConnInfo{Direction: tunnel.DirOutbound, Src: client, Dst: ap("198.18.1.2:8080"), DialledDst: ap("198.19.0.10:80")},
			"web.shop.svc.example.org", "web", "shop"},
		{"plaintext inbound to a ClusterIP", tunnel.ConnInfo{Direction: tunnel.DirInboundPlaintext, Src: client, Dst: ap("198.18.1.2:8080"), DialledDst: ap("198.19.0.10:80")},
			"web.shop.svc.example.org", "web", "shop"},
		{"outbound to the pod address", tunnel.ConnInfo{Direction: tunnel.DirOutbound, Src: client, Dst: ap("198.18.1.2:8080")}, "", "", ""},
		{"HBONE inbound: the one Service selecting the pod on the port", tunnel.ConnInfo{Direction: tunnel.DirInbound, Src: client, Dst: ap("198.18.1.2:8080")},
			"web.shop.svc.example.org", "web", "shop"},
		{"HBONE inbound: no Service on that port", tunnel.ConnInfo{Direction: tunnel.DirInbound, Src: client, Dst: ap("198.18.1.2:9090")}, "", "", ""},
		{"HBONE inbound: two Services select the pod", tunnel.ConnInfo{Direction: tunnel.DirInbound, Src: client, Dst: ap("198.18.1.3:5432")}, "", "", ""},
		{"a NAT to an address that is no Service", tunnel.ConnInfo{Direction: tunnel.DirInbound, Src: client, Dst: ap("198.18.1.2:8080"), DialledDst: ap("198.19.9.9:80")}, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := a.trafficLabels(tc.info)
			if l.DestinationService != tc.svc || l.DestinationServiceName != tc.svcName || l.DestinationServiceNamespace != tc.ns {
				t.Errorf("service %q name %q namespace %q, want %q %q %q", l.DestinationService, l.DestinationServiceName,
					l.DestinationServiceNamespace, tc.svc, tc.svcName, tc.ns)
			}
			v := l.values()
			want := map[int]string{9: tc.svc, 10: tc.ns, 11: tc.svcName}
			for i, w := range want {
				if w == "" {
					w = "unknown"
				}
				if v[i] != w {
					t.Errorf("label %s = %q, want %q", trafficLabelNames[i], v[i], w)
				}
			}
		})
	}
}
