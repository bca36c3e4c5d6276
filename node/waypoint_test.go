package node

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/authz"
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
	wpPod := &inventory.Pod{Name: "waypoint-0", Namespace: "shop", ServiceAccount: "waypoint", NodeName: "node3",
		IP: netip.MustParseAddr("198.18.3.9"), Mesh: &inventory.MeshWorkload{Healthy: true, Capacity: 1,
			Services: inventory.MakeNames("shop/waypoint.shop.svc.cluster.local")}}
	wpSvc := inventory.Service{Name: "waypoint", Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local",
		ClusterIPs: []netip.Addr{wpVIP}, Ports: []inventory.ServicePort{{Port: 15008}}}
	viewWith := func(svcWP, podWP *inventory.Waypoint, client *inventory.Pod) *view {
		web := meshPod("a", "198.18.2.1", "node2", "z1", true, 1)
		web.Mesh.Waypoint = podWP
		pods := []*inventory.Pod{client, web}
		if client.Name != wpPod.Name {
			pods = append(pods, wpPod)
		}
		snap := &inventory.Snapshot{Pods: pods, Services: []inventory.Service{wpSvc,
			{Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local", Waypoint: svcWP,
				ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}}}}
		return newView(snap, client.NodeName, "cluster.local", "istio-system")
	}
	client := &inventory.Pod{Name: "client", Namespace: "shop", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.1"),
		Labels: map[string]string{DataplaneModeLabel: "ambient"}, Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1}}
	fromWaypoint := new(*wpPod)
	fromWaypoint.NodeName = "node1"
	fromWaypoint.Labels = map[string]string{DataplaneModeLabel: "ambient"}
	toWaypoint := tunnel.Route{Mode: tunnel.HBONE, HBONEAddr: netip.MustParseAddrPort("198.18.3.9:15008")}
	for _, c := range []struct {
		name   string
		v      *view
		src    *inventory.Pod
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
			got, err := a.Route(netip.AddrPortFrom(c.src.IP, 40000), netip.MustParseAddrPort(c.dst), netip.AddrPort{})
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

// TestRouteAfterKubeProxy: where kube-proxy's DNAT came first, the Service
// address the pod dialled (conntrack) still sends it to the Service's
// waypoint, with that address as the authority, and it skips the
// endpoint's own waypoint.
func TestRouteAfterKubeProxy(t *testing.T) {
	wp := &inventory.Pod{Name: "waypoint-0", Namespace: "shop", ServiceAccount: "waypoint", NodeName: "node3",
		IP: netip.MustParseAddr("198.18.3.9"), Mesh: &inventory.MeshWorkload{Healthy: true, Capacity: 1}}
	web := meshPod("a", "198.18.2.1", "node2", "z1", true, 1)
	web.Mesh.Waypoint = &inventory.Waypoint{Address: wp.IP, HBONEPort: 15008}
	client := &inventory.Pod{Name: "client", Namespace: "shop", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.1"),
		Labels: map[string]string{DataplaneModeLabel: "ambient"}, Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1}}
	svc := func(w *inventory.Waypoint) inventory.Service {
		return inventory.Service{Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local", Waypoint: w,
			ClusterIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}}
	}
	route := func(s inventory.Service) tunnel.Route {
		v := newView(&inventory.Snapshot{Pods: []*inventory.Pod{client, web, wp}, Services: []inventory.Service{s}}, "node1", "cluster.local", "istio-system")
		a := &Agent{cfg: Config{NodeName: "node1", HBONEAddr: "0.0.0.0:15008"}}
		a.state.Store(&state{view: v})
		r, err := a.Route(netip.MustParseAddrPort("198.18.1.1:40000"), netip.MustParseAddrPort("198.18.2.1:8080"),
			netip.MustParseAddrPort("198.19.0.10:80"))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := route(svc(&inventory.Waypoint{Address: wp.IP, HBONEPort: 15008}))
	if r.Mode != tunnel.HBONE || r.HBONEAddr != netip.MustParseAddrPort("198.18.3.9:15008") || r.Authority != netip.MustParseAddrPort("198.19.0.10:80") {
		t.Errorf("Service with a waypoint, after DNAT: %+v, want HBONE to the waypoint with the Service address as authority", r)
	}
	r = route(svc(nil))
	if r.Mode != tunnel.HBONE || r.HBONEAddr != netip.MustParseAddrPort("198.18.2.1:15008") || r.Authority.IsValid() {
		t.Errorf("Service without a waypoint, after DNAT: %+v, want HBONE to the endpoint (its own waypoint skipped)", r)
	}
}

// TestRouteFailsClosed: a pod istiod says is captured on this node, which
// this agent does not capture, and a Service address on a port the Service
// does not list are refused, never passed through in plaintext.
func TestRouteFailsClosed(t *testing.T) {
	client := &inventory.Pod{Name: "client", Namespace: "shop", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.1"),
		Labels: map[string]string{DataplaneModeLabel: "ambient"}, Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1}}
	unseen := &inventory.Pod{Name: "new", Namespace: "shop", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.2"),
		Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1}}
	v := endpointView(nil, meshPod("a", "198.18.2.1", "node2", "z1", true, 1))
	pods := []*inventory.Pod{unseen}
	for _, w := range v.pods.All() {
		pods = append(pods, w.Pod)
	}
	v = newView(&inventory.Snapshot{Pods: pods, Services: v.snap.Services}, "node1", "cluster.local", "istio-system")
	a := &Agent{cfg: Config{NodeName: "node1", HBONEAddr: "0.0.0.0:15008"}}
	a.state.Store(&state{view: v})
	for _, dst := range []string{"198.18.1.2:8080", "198.19.0.10:9999"} {
		r, err := a.Route(netip.AddrPortFrom(client.IP, 40000), netip.MustParseAddrPort(dst), netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Mode != tunnel.Deny {
			t.Errorf("%s: %+v, want refused", dst, r)
		}
	}
}

// TestAuthorizeNeedsIstiodsWorkload: in xDS mode, selector policies (and
// STRICT) reach a pod only through the workload istiod sends; a captured
// pod istiod has not described yet is refused, not judged without them.
func TestAuthorizeNeedsIstiodsWorkload(t *testing.T) {
	pod := inventory.Pod{Name: "app", Namespace: "shop", ServiceAccount: "app", NodeName: "node1", IP: netip.MustParseAddr("198.18.1.5"),
		Labels: map[string]string{DataplaneModeLabel: "ambient"}}
	for _, c := range []struct {
		name    string
		mesh    *inventory.MeshWorkload
		allowed bool
	}{
		{"not yet sent by istiod", nil, false},
		{"sent by istiod", &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := pod
			p.Mesh = c.mesh
			snap := &inventory.Snapshot{Pods: []*inventory.Pod{&p}, TranslatedPolicies: []authz.TranslatedPolicy{}}
			engine, _ := authz.CompileTranslated(authz.Config{}, nil)
			a := &Agent{cfg: Config{NodeName: "node1"}, metrics: NewMetrics("test"), log: slog.New(slog.DiscardHandler)}
			a.state.Store(&state{view: newView(snap, "node1", "cluster.local", "istio-system"), engine: engine})
			err := a.authorize(tunnel.Request{Peer: id("client"), Src: netip.MustParseAddrPort("198.18.2.1:40000"),
				Dst: netip.MustParseAddrPort("198.18.1.5:8080")})
			if (err == nil) != c.allowed {
				t.Errorf("authorize: %v, want allowed=%v", err, c.allowed)
			}
		})
	}
}
