package node

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// viaWaypoint routes a connection from client to something istiod put
// behind waypoint wp (of), as ztunnel does: over HBONE to one of the
// waypoint's pods, which must prove its own identity, with the original
// destination (Service address or pod address and port) as the CONNECT
// authority. The waypoint enforces the L7 policies attached to it; the
// destination's node then sees the waypoint as the peer and enforces its
// L4 policies against it. ok is false when the connection comes from the
// waypoint itself, which reaches the destination directly. A waypoint
// that cannot be resolved refuses the connection (fail closed).
func (v *view) viaWaypoint(client *Workload, wp *inventory.Waypoint, of string) (r tunnel.Route, ok bool) {
	pods, err := v.waypointPods(wp)
	if err != nil {
		return tunnel.Route{Mode: tunnel.Deny, Src: client.Identity(), Reason: fmt.Sprintf("waypoint of %s: %v", of, err)}, true
	}
	if slices.Contains(pods, client) {
		return tunnel.Route{}, false
	}
	p, found := chooseWeighted(pods, func(w *Workload) uint64 { return capacity(w, false) }, randN)
	if !found {
		return tunnel.Route{Mode: tunnel.Deny, Src: client.Identity(), Reason: fmt.Sprintf("waypoint of %s: %v", of, errNoHealthyEndpoint)}, true
	}
	return tunnel.Route{Mode: tunnel.HBONE, Src: client.Identity(), Dst: p.Identity(),
		HBONEAddr: netip.AddrPortFrom(p.IP, wp.HBONEPort)}, true
}

// waypointPods resolves a waypoint to its pods: the pod at its address, or
// the endpoints of the Service it names (by address or hostname).
func (v *view) waypointPods(wp *inventory.Waypoint) ([]*Workload, error) {
	var svc *inventory.Service
	switch {
	case wp.Hostname != "":
		svc = v.byHostname[wp.Namespace+"/"+wp.Hostname]
		if svc == nil {
			return nil, fmt.Errorf("no Service %s/%s", wp.Namespace, wp.Hostname)
		}
	default:
		if w, ok := v.workload(wp.Address); ok {
			return []*Workload{w}, nil
		}
		svc = v.servicesByIP[wp.Address]
		if svc == nil {
			return nil, fmt.Errorf("no pod or Service at %s", wp.Address)
		}
	}
	return v.endpointsOf(svc), nil
}

// capacity is a pod's weight as a Service endpoint: 0 when it may not be
// picked (no address, drained, or unhealthy unless allowUnhealthy).
func capacity(w *Workload, allowUnhealthy bool) uint64 {
	switch {
	case !w.IP.IsValid():
		return 0
	case w.Mesh == nil:
		return 1
	case !w.Mesh.Healthy && !allowUnhealthy:
		return 0
	}
	return uint64(w.Mesh.Capacity)
}
