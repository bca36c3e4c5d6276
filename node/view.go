package node

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node/inventory"
)

// Workload is one pod as the agent sees it. The Pod is the snapshot's own
// (a cluster's pods are not held twice).
type Workload struct {
	*inventory.Pod
	Identity certs.Identity
	Enrolled bool
	Local    bool // scheduled on this agent's node
}

// view is the agent's compiled picture of the cluster, rebuilt from each
// inventory snapshot and then only read. It is safe for concurrent readers.
type view struct {
	snap  *inventory.Snapshot
	byIP  map[netip.Addr]*Workload
	local []*Workload // enrolled pods on this node, sorted by IP
	// localByName is every pod on this node, with an address or not, by
	// "namespace/name".
	localByName map[string]*inventory.Pod
	// identities are the service accounts with an enrolled pod on this node.
	identities []certs.Identity
	// conflicts names pod IPs claimed by more than one pod; such IPs are
	// treated as unknown (fail closed).
	conflicts []error
	// services are the Services by ClusterIP and port; servicesByNS lists
	// each namespace's Services with a selector.
	services     map[netip.AddrPort]*inventory.Service
	servicesByNS map[string][]*inventory.Service
	// endpoints are each Service's pods, by IP.
	endpoints map[*inventory.Service][]*Workload
	// servicesByIP finds a Service by any of its addresses, byHostname by
	// "namespace/hostname" (xDS mode): how waypoints are named.
	servicesByIP map[netip.Addr]*inventory.Service
	byHostname   map[string]*inventory.Service
}

// newView indexes snap for the agent on nodeName.
func newView(snap *inventory.Snapshot, nodeName, trustDomain, systemNamespace string) *view {
	v := &view{snap: snap, byIP: make(map[netip.Addr]*Workload, len(snap.Pods)), localByName: map[string]*inventory.Pod{}}
	dup := map[netip.Addr]bool{}
	for i := range snap.Pods {
		p := &snap.Pods[i]
		if p.NodeName == nodeName {
			v.localByName[p.Namespace+"/"+p.Name] = p
		}
		if !p.IP.IsValid() || p.HostNetwork {
			continue // host-network pods share the node's IP: not workload addresses
		}
		w := &Workload{
			Pod:      p,
			Identity: certs.Identity{TrustDomain: trustDomain, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount},
			Local:    p.NodeName == nodeName,
		}
		w.Enrolled = Enrolled(*p, snap.Namespaces[p.Namespace], systemNamespace)
		if p.Mesh != nil && !w.Local {
			// Another node's pod as istiod sends it, without labels: its
			// agent decided the capture and announced it.
			w.Enrolled = p.Mesh.HBONE
		}
		if old, ok := v.byIP[p.IP]; ok || dup[p.IP] {
			if ok {
				v.conflicts = append(v.conflicts, fmt.Errorf("node: pod IP %s claimed by %s/%s and %s/%s: treated as unknown", p.IP, old.Namespace, old.Name, p.Namespace, p.Name))
			}
			dup[p.IP] = true
			delete(v.byIP, p.IP)
			continue
		}
		v.byIP[p.IP] = w
	}
	ids := map[certs.Identity]bool{}
	for _, w := range v.byIP {
		if w.Local && w.Enrolled {
			v.local = append(v.local, w)
			ids[w.Identity] = true
		}
	}
	slices.SortFunc(v.local, func(a, b *Workload) int { return a.IP.Compare(b.IP) })
	for id := range ids {
		v.identities = append(v.identities, id)
	}
	slices.SortFunc(v.identities, func(a, b certs.Identity) int { return strings.Compare(a.String(), b.String()) })
	v.services = map[netip.AddrPort]*inventory.Service{}
	v.servicesByNS = map[string][]*inventory.Service{}
	v.servicesByIP = map[netip.Addr]*inventory.Service{}
	v.byHostname = map[string]*inventory.Service{}
	for i := range snap.Services {
		s := &snap.Services[i]
		if s.Hostname != "" {
			v.byHostname[s.Namespace+"/"+s.Hostname] = s
		}
		for _, ip := range s.ClusterIPs {
			v.servicesByIP[ip] = s
			for _, p := range s.Ports {
				v.services[netip.AddrPortFrom(ip, p.Port)] = s
			}
		}
		if len(s.Selector) > 0 || s.Hostname != "" {
			v.servicesByNS[s.Namespace] = append(v.servicesByNS[s.Namespace], s)
		}
	}
	v.indexEndpoints()
	return v
}

// serviceByAddr returns the Service with address ip, whatever the port
// (a connection to an unlisted port of a Service address is refused, not
// passed through).
func (v *view) serviceByAddr(ip netip.Addr) (*inventory.Service, bool) {
	s, ok := v.servicesByIP[ip.Unmap()]
	return s, ok
}

// serviceAt returns the Service with ClusterIP and port vip, if any.
func (v *view) serviceAt(vip netip.AddrPort) (*inventory.Service, bool) {
	s, ok := v.services[netip.AddrPortFrom(vip.Addr().Unmap(), vip.Port())]
	return s, ok
}

// serviceOf guesses the Service a connection to pod w on port was made
// through when its ClusterIP is not known (the connection arrived over
// HBONE): the one Service that selects w with port as a target port. Two
// or more such Services, or a target port given by name, make no guess.
func (v *view) serviceOf(w *Workload, port uint16) (*inventory.Service, bool) {
	var found *inventory.Service
	for _, s := range v.servicesByNS[w.Namespace] {
		if !s.Selects(w.Pod) || !slices.ContainsFunc(s.Ports, func(p inventory.ServicePort) bool {
			return p.TargetPort == port || p.TargetPort == 0 && p.TargetPortName == "" && p.Port == port
		}) {
			continue
		}
		if found != nil {
			return nil, false
		}
		found = s
	}
	return found, found != nil
}

// workload returns the pod with address ip, if any.
func (v *view) workload(ip netip.Addr) (*Workload, bool) {
	w, ok := v.byIP[ip.Unmap()]
	return w, ok
}

// localPod returns this node's pod namespace/name, as listed whether or not
// it has an address yet (--capture pod meets pods before the kubelet reports
// one).
func (v *view) localPod(namespace, name string) (inventory.Pod, bool) {
	p, ok := v.localByName[namespace+"/"+name]
	if !ok {
		return inventory.Pod{}, false
	}
	return *p, true
}

// localEnrolled returns the enrolled pod with address ip on this node, if any.
func (v *view) localEnrolled(ip netip.Addr) (*Workload, bool) {
	w, ok := v.workload(ip)
	if !ok || !w.Local || !w.Enrolled {
		return nil, false
	}
	return w, true
}

// localIPs returns every address of the enrolled pods on this node: each
// pod's IP and the rest of its status.podIPs. The redirection captures the
// IPv4 ones and refuses TCP on the IPv6 ones (node/redirect.NewPlan).
func (v *view) localIPs() []netip.Addr {
	ips := make([]netip.Addr, 0, len(v.local))
	for _, w := range v.local {
		ips = append(ips, w.IP)
		ips = append(ips, w.IPs...)
	}
	return ips
}
