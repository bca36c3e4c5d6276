package node

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"

	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// Service endpoint picking, for connections whose captured destination is a
// Service address: no kube-proxy rewrote it before Ferry saw it (a cluster
// without kube-proxy, or the Service is only known to istiod). The rules are
// ztunnel's (src/state.rs load_balance): healthy endpoints only unless the
// Service allows all; with routing preferences, endpoints ranked by how many
// locality scopes in a row they share with the client, STRICT keeping only
// those sharing all, FAILOVER the best-ranked present; then weighted random
// by capacity.

// errNoHealthyEndpoint denies a connection to a Service with nothing to
// pick (ztunnel's NoHealthyUpstream).
var errNoHealthyEndpoint = errors.New("no healthy endpoint")

// pickEndpoint chooses where a connection from client to port of svc goes:
// an endpoint and its target port. rnd(n) returns a number in [0, n).
func (v *view) pickEndpoint(svc *inventory.Service, port uint16, client *Workload, rnd func(uint64) uint64) (*Workload, uint16, error) {
	i := slices.IndexFunc(svc.Ports, func(p inventory.ServicePort) bool { return p.Port == port })
	if i < 0 {
		return nil, 0, fmt.Errorf("service %s/%s has no port %d", svc.Namespace, svc.Name, port)
	}
	sp := svc.Ports[i]
	lb := svc.LoadBalancing
	if lb == nil {
		lb = &inventory.LoadBalancing{}
	}
	type candidate struct {
		w      *Workload
		port   uint16
		rank   int
		weight uint64
	}
	var cands []candidate
	best := 0
	for _, w := range v.endpointsOf(svc) {
		weight := capacity(w, lb.AllowUnhealthy)
		if weight == 0 {
			continue
		}
		target, ok := endpointPort(svc, sp, w)
		if !ok {
			continue
		}
		rank := localityRank(lb.RoutingPreference, client, w)
		if lb.Mode == "STRICT" && rank < len(lb.RoutingPreference) {
			continue
		}
		best = max(best, rank)
		cands = append(cands, candidate{w, target, rank, weight})
	}
	if lb.Mode == "FAILOVER" {
		cands = slices.DeleteFunc(cands, func(c candidate) bool { return c.rank < best })
	}
	c, ok := chooseWeighted(cands, func(c candidate) uint64 { return c.weight }, rnd)
	if !ok {
		return nil, 0, fmt.Errorf("service %s/%s port %d: %w", svc.Namespace, svc.Name, port, errNoHealthyEndpoint)
	}
	return c.w, c.port, nil
}

// chooseWeighted picks one of items at random, each as likely as its
// weight; ok is false when every weight is zero.
func chooseWeighted[T any](items []T, weight func(T) uint64, rnd func(uint64) uint64) (chosen T, ok bool) {
	var total uint64
	for _, it := range items {
		total += weight(it)
	}
	if total == 0 {
		return chosen, false
	}
	n := rnd(total)
	for _, it := range items {
		w := weight(it)
		if n < w {
			return it, true
		}
		n -= w
	}
	panic("unreachable: n < total")
}

// endpointPort is the endpoint's port for service port sp: as istiod resolved
// it for the pod, else the Service's number, else (a Kubernetes Service
// without a target port) the service port itself. A named target port not
// resolved for the pod cannot be reached there.
func endpointPort(svc *inventory.Service, sp inventory.ServicePort, w *Workload) (uint16, bool) {
	if w.Mesh != nil {
		if p, ok := w.Mesh.TargetPorts[svc.Namespace+"/"+svc.Hostname][sp.Port]; ok {
			return p, true
		}
	}
	switch {
	case sp.TargetPort != 0:
		return sp.TargetPort, true
	case sp.TargetPortName != "", svc.Hostname != "":
		// A named port (istiod sends a Service's as 0 and resolves it
		// per pod): this pod has none of that name.
		return 0, false
	}
	return sp.Port, true
}

// localityRank counts the routing-preference scopes, in order, that
// endpoint shares with client; it stops at the first it does not.
func localityRank(prefs []string, client, endpoint *Workload) int {
	locality := func(w *Workload, scope string) string {
		switch {
		case scope == "NODE":
			return w.NodeName
		case w.Mesh == nil:
			return ""
		case scope == "REGION":
			return w.Mesh.Where().Region
		case scope == "ZONE":
			return w.Mesh.Where().Zone
		case scope == "SUBZONE":
			return w.Mesh.Where().Subzone
		}
		return "" // CLUSTER, NETWORK: one cluster and network here
	}
	rank := 0
	for _, scope := range prefs {
		if locality(client, scope) != locality(endpoint, scope) {
			break
		}
		rank++
	}
	return rank
}

// randN is pickEndpoint's source of randomness in the agent.
func randN(n uint64) uint64 { return rand.Uint64N(n) }

// serviceRoute routes a connection from client to a Service address: to the
// endpoint picked, over HBONE when its node captures it, else directly; a
// PASSTHROUGH Service's address is dialled as it is.
func (v *view) serviceRoute(client *Workload, svc *inventory.Service, dst netip.AddrPort, hbonePort uint16) (tunnel.Route, error) {
	if svc.Waypoint != nil {
		if r, ok := v.viaWaypoint(client, svc.Waypoint, "Service "+svc.Namespace+"/"+svc.Name); ok {
			return r, nil
		}
	}
	if svc.LoadBalancing != nil && svc.LoadBalancing.Mode == "PASSTHROUGH" {
		return tunnel.Route{Mode: tunnel.Passthrough, Src: client.Identity()}, nil
	}
	ep, port, err := v.pickEndpoint(svc, dst.Port(), client, randN)
	if err != nil {
		return tunnel.Route{Mode: tunnel.Deny, Src: client.Identity(), Reason: err.Error()}, nil
	}
	r := tunnel.Route{Mode: tunnel.Passthrough, Src: client.Identity(), Target: netip.AddrPortFrom(ep.IP, port)}
	if ep.Enrolled {
		r.Mode, r.Dst, r.HBONEAddr = tunnel.HBONE, ep.Identity(), netip.AddrPortFrom(ep.IP, hbonePort)
	}
	return r, nil
}

// pickCounts counts, per Service ("namespace/name"), the outbound
// connections made to its address whose endpoint this agent picked and
// those kube-proxy had picked before (its DNAT, seen through conntrack):
// which component load-balances the Service on this node.
type pickCounts struct {
	mu sync.Mutex
	m  map[string]*[2]uint64 // [ferry, kube-proxy]
}

func (p *pickCounts) add(service string, byFerry bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*[2]uint64{}
	}
	c := p.m[service]
	if c == nil {
		c = new([2]uint64)
		p.m[service] = c
	}
	if byFerry {
		c[0]++
	} else {
		c[1]++
	}
}

func (p *pickCounts) get(service string) (ferry, kubeProxy uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.m[service]; c != nil {
		return c[0], c[1]
	}
	return 0, 0
}
