package node

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// TestRouteViaWaypoint: what istiod puts behind a waypoint is reached over
// HBONE to a waypoint pod, which must prove the waypoint's identity, with
// the original destination as the authority (no Target: nothing
// translated); the waypoint's own traffic goes direct; a waypoint that
// cannot be resolved refuses.
func TestRouteViaWaypoint(t *testing.T) {
	wpVIP := netip.MustParseAddr("198.19.0.20")
	byAddr := &inventory.Waypoint{Address: wpVIP, HBONEPort: 15008}
	byName := &inventory.Waypoint{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local", HBONEPort: 15008}
	wpPod := inventory.Pod{Name: "waypoint-0", Namespace: "shop", ServiceAccount: "waypoint", NodeName: "node3",
		IP: netip.MustParseAddr("198.18.3.9"), Mesh: &inventory.MeshWorkload{Healthy: true, Capacity: 1,
			Services: []string{"shop/waypoint.shop.svc.cluster.local"}}}
	wpSvc := inventory.Service{Name: "waypoint", Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
		ClusterIPs: []netip.Addr{wpVIP}, Ports: []inventory.ServicePort{{Port: 15008}}}
	viewWith := func(svcWP, podWP *inventory.Waypoint, client inventory.Pod) *view {
		web := meshPod("a", "198.18.2.1", "node2", "z1", true, 1)
		web.Mesh.Waypoint = podWP
		pods := []inventory.Pod{client, web}
		if client.Name != wpPod.Name {
			pods = append(pods, wpPod)
		}
		snap := &inventory.Snapshot{Pods: pods, Services: []inventory.Service{wpSvc,
			{Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local", Waypoint: svcWP,
				ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}}}}
		return newView(snap, client.NodeName, "cluster.local", "istio-system")
	}
	client := inventory.Pod{Name: "client", Namespace: "shop", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.1"),
		Labels: map[string]string{DataplaneModeLabel: "ambient"}, Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1}}
	fromWaypoint := wpPod
	fromWaypoint.NodeName = "node1"
	fromWaypoint.Labels = map[string]string{DataplaneModeLabel: "ambient"}
	toWaypoint := tunnel.Route{Mode: tunnel.HBONE, HBONEAddr: netip.MustParseAddrPort("198.18.3.9:15008")}
	for _, c := range []struct {
		name   string
		v      *view
		src    inventory.Pod
		dst    string
		want   tunnel.Route
		reason string
	}{
		{"Service waypoint by address", viewWith(byAddr, nil, client), client, "198.19.0.10:80", toWaypoint, ""},
		{"Service waypoint by hostname", viewWith(byName, nil, client), client, "198.19.0.10:80", toWaypoint, ""},
		{"pod waypoint", viewWith(nil, byAddr, client), client, "198.18.2.1:8080", toWaypoint, ""},
		{"pod waypoint is the waypoint pod", viewWith(nil, &inventory.Waypoint{Address: wpPod.IP, HBONEPort: 15008}, client),
			client, "198.18.2.1:8080", toWaypoint, ""},
		{"the waypoint's own traffic goes direct", viewWith(byAddr, nil, fromWaypoint), fromWaypoint, "198.19.0.10:80",
			tunnel.Route{Mode: tunnel.HBONE, Target: netip.MustParseAddrPort("198.18.2.1:8080"), HBONEAddr: netip.MustParseAddrPort("198.18.2.1:15008")}, ""},
		{"Service-addressed traffic skips the pod's waypoint", viewWith(nil, byAddr, client), client, "198.19.0.10:80",
			tunnel.Route{Mode: tunnel.HBONE, Target: netip.MustParseAddrPort("198.18.2.1:8080"), HBONEAddr: netip.MustParseAddrPort("198.18.2.1:15008")}, ""},
		{"unknown waypoint refuses", viewWith(&inventory.Waypoint{Address: netip.MustParseAddr("198.19.9.9"), HBONEPort: 15008}, nil, client),
			client, "198.19.0.10:80", tunnel.Route{Mode: tunnel.Deny}, "waypoint of Service shop/web: no pod or Service at 198.19.9.9"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &Agent{cfg: Config{NodeName: c.src.NodeName, HBONEAddr: "0.0.0.0:15008"}}
			a.state.Store(&state{view: c.v})
			got, err := a.Route(netip.AddrPortFrom(c.src.IP, 40000), netip.MustParseAddrPort(c.dst))
			if err != nil {
				t.Fatal(err)
			}
			if got.Mode != c.want.Mode || got.Target != c.want.Target || got.HBONEAddr != c.want.HBONEAddr {
				t.Fatalf("route %+v, want %+v", got, c.want)
			}
			if c.want == toWaypoint && got.Dst.String() != "spiffe://cluster.local/ns/shop/sa/waypoint" {
				t.Errorf("peer identity %s, want the waypoint's", got.Dst)
			}
			if !strings.Contains(got.Reason, c.reason) {
				t.Errorf("reason %q, want %q", got.Reason, c.reason)
			}
		})
	}
}
