package node

import (
	"net/netip"
	"strings"
	"testing"
	"unique"

	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// meshPod is a pod as istiod sends it, endpoint of web.shop.
func meshPod(name, ip, node, zone string, healthy bool, capacity uint32) *inventory.Pod {
	return &inventory.Pod{Name: name, Namespace: "shop", ServiceAccount: name, NodeName: node, IP: netip.MustParseAddr(ip),
		Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: healthy, Capacity: capacity,
			Locality: unique.Make(inventory.Locality{Region: "r1", Zone: zone}),
			Services: inventory.MakeNames("shop/web.shop.svc.cluster.local")}}
}

func endpointView(lb *inventory.LoadBalancing, pods ...*inventory.Pod) *view {
	client := &inventory.Pod{Name: "client", Namespace: "shop", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.1"),
		Labels: map[string]string{DataplaneModeLabel: "ambient"},
		Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1,
			Locality: unique.Make(inventory.Locality{Region: "r1", Zone: "z1"})}}
	snap := &inventory.Snapshot{
		Pods: append([]*inventory.Pod{client}, pods...),
		Services: []inventory.Service{{Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
			ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")},
			Ports:      []inventory.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 81}}, LoadBalancing: lb}},
	}
	return newView(snap, "node1", "cluster.local", "istio-system")
}

// counts picks n times with a rotating "random" source and counts the
// endpoints chosen.
func counts(t *testing.T, v *view, port uint16, n int) (map[string]int, error) {
	t.Helper()
	client, _ := v.workload(netip.MustParseAddr("198.18.1.1"))
	svc, _ := v.serviceAt(netip.MustParseAddrPort("198.19.0.10:80"))
	got := map[string]int{}
	for i := range n {
		w, p, err := v.pickEndpoint(svc, port, client, func(max uint64) uint64 { return uint64(i) % max })
		if err != nil {
			return nil, err
		}
		got[w.Name+":"+netip.AddrPortFrom(w.IP, p).String()]++
	}
	return got, nil
}

func TestPickEndpoint(t *testing.T) {
	z1a := meshPod("a", "198.18.2.1", "node2", "z1", true, 1)
	z1b := meshPod("b", "198.18.2.2", "node2", "z1", true, 3)
	z2 := meshPod("c", "198.18.3.1", "node3", "z2", true, 1)
	sick := meshPod("d", "198.18.2.3", "node2", "z1", false, 1)
	drained := meshPod("e", "198.18.2.4", "node2", "z1", true, 0)
	zone := []string{"REGION", "ZONE"}
	for _, c := range []struct {
		name string
		lb   *inventory.LoadBalancing
		pods []*inventory.Pod
		port uint16
		want map[string]int // over 8 picks
		err  string
	}{
		{"healthy endpoints by capacity", nil, []*inventory.Pod{z1a, z1b, sick, drained}, 80,
			map[string]int{"a:198.18.2.1:8080": 2, "b:198.18.2.2:8080": 6}, ""},
		{"unhealthy allowed", &inventory.LoadBalancing{AllowUnhealthy: true}, []*inventory.Pod{z1a, sick}, 80,
			map[string]int{"a:198.18.2.1:8080": 4, "d:198.18.2.3:8080": 4}, ""},
		{"named target port istiod did not resolve for the pod", nil, []*inventory.Pod{z1a}, 81, nil, "no healthy endpoint"},
		{"FAILOVER keeps the client's zone", &inventory.LoadBalancing{RoutingPreference: zone, Mode: "FAILOVER"},
			[]*inventory.Pod{z1a, z2}, 80, map[string]int{"a:198.18.2.1:8080": 8}, ""},
		{"FAILOVER falls over to another zone", &inventory.LoadBalancing{RoutingPreference: zone, Mode: "FAILOVER"},
			[]*inventory.Pod{z2, sick}, 80, map[string]int{"c:198.18.3.1:8080": 8}, ""},
		{"STRICT refuses another zone", &inventory.LoadBalancing{RoutingPreference: zone, Mode: "STRICT"},
			[]*inventory.Pod{z2}, 80, nil, "no healthy endpoint"},
		{"unspecified mode ignores locality", &inventory.LoadBalancing{RoutingPreference: zone, Mode: "UNSPECIFIED"},
			[]*inventory.Pod{z1a, z2}, 80, map[string]int{"a:198.18.2.1:8080": 4, "c:198.18.3.1:8080": 4}, ""},
		{"only unhealthy", nil, []*inventory.Pod{sick}, 80, nil, "no healthy endpoint"},
		{"no such port", nil, []*inventory.Pod{z1a}, 82, nil, "has no port 82"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := counts(t, endpointView(c.lb, c.pods...), c.port, 8)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("picked %v, want %v", got, c.want)
			}
			for k, n := range c.want {
				if got[k] != n {
					t.Errorf("picked %v, want %v", got, c.want)
				}
			}
		})
	}
}

func TestPickEndpointResolvedTargetPort(t *testing.T) {
	p := meshPod("a", "198.18.2.1", "node2", "z1", true, 1)
	p.Mesh.TargetPorts = map[string]map[uint16]uint16{"shop/web.shop.svc.cluster.local": {80: 9090}}
	got, err := counts(t, endpointView(nil, p), 80, 1)
	if err != nil || got["a:198.18.2.1:9090"] != 1 {
		t.Fatalf("picked %v (%v), want the port istiod resolved for the pod", got, err)
	}
}

// TestRouteToServiceAddress: a connection to a Service address is routed to
// the endpoint the agent picks (the CONNECT authority), over HBONE to a
// captured endpoint's node, directly to one outside the mesh; with no
// endpoint it is refused, and a PASSTHROUGH Service's address is dialled as
// it is.
func TestRouteToServiceAddress(t *testing.T) {
	vip := netip.MustParseAddrPort("198.19.0.10:80")
	src := netip.MustParseAddrPort("198.18.1.1:40000")
	route := func(v *view) tunnel.Route {
		a := &Agent{cfg: Config{NodeName: "node1", HBONEAddr: "0.0.0.0:15008"}}
		a.state.Store(&state{view: v})
		r, err := a.Route(src, vip, netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	plain := meshPod("a", "198.18.2.1", "node2", "z1", true, 1)
	plain.Mesh.HBONE = false
	for _, c := range []struct {
		name string
		v    *view
		want tunnel.Route
	}{
		{"captured endpoint", endpointView(nil, meshPod("a", "198.18.2.1", "node2", "z1", true, 1)), tunnel.Route{Mode: tunnel.HBONE,
			Target: netip.MustParseAddrPort("198.18.2.1:8080"), HBONEAddr: netip.MustParseAddrPort("198.18.2.1:15008")}},
		{"endpoint outside the mesh", endpointView(nil, plain), tunnel.Route{Mode: tunnel.Passthrough,
			Target: netip.MustParseAddrPort("198.18.2.1:8080")}},
		{"no endpoint", endpointView(nil), tunnel.Route{Mode: tunnel.Deny}},
		{"PASSTHROUGH", endpointView(&inventory.LoadBalancing{Mode: "PASSTHROUGH"}, meshPod("a", "198.18.2.1", "node2", "z1", true, 1)),
			tunnel.Route{Mode: tunnel.Passthrough}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := route(c.v)
			if got.Mode != c.want.Mode || got.Target != c.want.Target || got.HBONEAddr != c.want.HBONEAddr {
				t.Errorf("route %+v, want %+v", got, c.want)
			}
			if got.Mode == tunnel.HBONE && got.Dst.String() != "spiffe://cluster.local/ns/shop/sa/a" {
				t.Errorf("HBONE peer identity %s, want the endpoint's", got.Dst)
			}
			if got.Mode == tunnel.Deny && !strings.Contains(got.Reason, "no healthy endpoint") {
				t.Errorf("deny reason %q", got.Reason)
			}
		})
	}
}
