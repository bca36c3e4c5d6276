package node

import (
	"cmp"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"unique"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node/inventory"
)

// Workload is one pod as the agent sees it. The Pod is the snapshot's own
// or the view's copy (a cluster's pods are not held twice); it is never
// modified.
type Workload struct {
	*inventory.Pod
	// src is the pod as the source listed it when the view filled in its
	// addresses from capture (fill); nil otherwise.
	src *inventory.Pod
	// trustDomain is the view's, by handle: a cluster has one Workload a
	// pod.
	trustDomain unique.Handle[string]
	Enrolled    bool
	Local       bool // scheduled on this agent's node
}

// Identity is the pod's SPIFFE identity. (Made when asked: a cluster's
// 100,000 pods would hold 5 MB of them.)
func (w *Workload) Identity() certs.Identity {
	return certs.Identity{TrustDomain: w.trustDomain.Value(), Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
}

// source returns the pod as its source listed it.
func (w *Workload) source() *inventory.Pod { return cmp.Or(w.src, w.Pod) }

// addressed reports whether the pod's IP is a workload address: host-network
// pods share the node's IP.
func addressed(p *inventory.Pod) bool { return p.IP.IsValid() && !p.HostNetwork }

// capturedAddrs are the addresses capture (the CNI plugin) reported for a
// pod of this node the API lists without one yet: the kubelet reports a
// pod's IP a second or so after its sandbox starts, and until then the
// pod's probes and first connections would meet an unknown address and be
// refused.
type capturedAddrs struct {
	UID string
	IP  netip.Addr
	IPs []netip.Addr
}

func (c capturedAddrs) equal(d capturedAddrs) bool {
	return c.UID == d.UID && c.IP == d.IP && slices.Equal(c.IPs, d.IPs)
}

// view is the agent's compiled picture of the cluster, made from an
// inventory snapshot and then only read: it is safe for concurrent readers.
// The next snapshot makes a new view (update), which shares with this one
// what the snapshot did not change: a pod's change costs the same in a
// cluster of 1,000 pods and in one of 100,000.
type view struct {
	cfg viewConfig
	// snap is the snapshot the view was made from, without its Pods (pods
	// holds them) and, after an update, with the Services the view was
	// built from (the same, or the update would have rebuilt the view).
	snap *inventory.Snapshot
	// pods is every pod by "namespace/name"; byIP every pod with a
	// workload address by that address.
	pods pmap[string, *Workload]
	byIP pmap[netip.Addr, *Workload]
	// claims are the pod IPs claimed by more than one pod, with the pods
	// claiming them: such IPs are treated as unknown (fail closed) and are
	// in no other index until one pod is left. conflicts says so, one
	// error per IP.
	claims    map[netip.Addr][]*Workload
	conflicts []error
	local     []*Workload // enrolled pods on this node, sorted by IP
	// localByName is every pod on this node, with an address or not, by
	// "namespace/name".
	localByName map[string]*Workload
	// identities are the service accounts with an enrolled pod on this node.
	identities []certs.Identity
	// services are the Services by ClusterIP and port; servicesByNS lists
	// each namespace's Services with a selector.
	services     map[netip.AddrPort]*inventory.Service
	servicesByNS map[string][]*inventory.Service
	// endpoints are each Service's pods, by IP.
	endpoints pmap[*inventory.Service, []*Workload]
	// servicesByIP finds a Service by any of its addresses, byHostname by
	// "namespace/hostname" (xDS mode): how waypoints are named.
	servicesByIP map[netip.Addr]*inventory.Service
	byHostname   map[string]*inventory.Service
	// fills are the captured addresses the view filled in, by
	// "namespace/name".
	fills map[string]capturedAddrs
	// rebuild says the next snapshot must build a new view whole: this
	// one's snapshot named two pods alike.
	rebuild bool
}

// viewConfig is what a view needs of the agent's configuration.
type viewConfig struct {
	nodeName        string
	trustDomain     unique.Handle[string]
	systemNamespace string
}

// newView indexes snap for the agent on nodeName.
func newView(snap *inventory.Snapshot, nodeName, trustDomain, systemNamespace string) *view {
	return buildView(snap, viewConfig{nodeName, unique.Make(trustDomain), systemNamespace}, nil)
}

// buildView indexes snap whole, with the addresses fills has for this
// node's pods listed without one.
func buildView(snap *inventory.Snapshot, cfg viewConfig, fills map[string]capturedAddrs) *view {
	v := &view{cfg: cfg, snap: withoutPods(snap), claims: map[netip.Addr][]*Workload{}, localByName: map[string]*Workload{}, fills: fills}
	ws := make([]*Workload, len(snap.Pods))
	var addressedWs []*Workload
	for i, p := range snap.Pods {
		w := v.newWorkload(p)
		ws[i] = w
		if w.Local {
			v.localByName[w.Key()] = w
		}
		if addressed(w.Pod) {
			addressedWs = append(addressedWs, w)
		}
	}
	v.pods = pmapOf(stringHash(), len(ws), func(yield func(string, *Workload) bool) {
		for _, w := range ws {
			if !yield(w.Key(), w) {
				return
			}
		}
	}, nil)
	// Two pods of one name: the view cannot tell which a change names.
	v.rebuild = v.pods.Len() != len(ws)
	var claimed []netip.Addr // by more than one pod
	v.byIP = pmapOf(addrHash(), len(addressedWs), func(yield func(netip.Addr, *Workload) bool) {
		for _, w := range addressedWs {
			if !yield(w.IP, w) {
				return
			}
		}
	}, func(ip netip.Addr) { claimed = append(claimed, ip) })
	if len(claimed) > 0 {
		for _, w := range addressedWs {
			if slices.Contains(claimed, w.IP) {
				v.claims[w.IP] = append(v.claims[w.IP], w)
			}
		}
		txn := v.byIP.edit()
		for _, ip := range claimed {
			txn.Delete(ip)
		}
		v.byIP = txn.Done()
	}
	v.indexServices()
	if len(v.servicesByNS) > 0 {
		v.indexEndpoints(slices.Values(addressedWs))
	} else {
		v.endpoints = newPmap[*inventory.Service, []*Workload](comparableHash[*inventory.Service]())
	}
	v.indexLocal()
	v.indexConflicts()
	return v
}

// withoutPods returns a copy of snap without its Pods, which the view
// indexes: the snapshot's slice is not kept for them.
func withoutPods(snap *inventory.Snapshot) *inventory.Snapshot {
	s := *snap
	s.Pods = nil
	return &s
}

// newWorkload makes p's Workload, with its addresses filled in from capture.
func (v *view) newWorkload(p *inventory.Pod) *Workload {
	w := &Workload{Pod: p, trustDomain: v.cfg.trustDomain, Local: p.NodeName == v.cfg.nodeName}
	if f, ok := v.fill(p); ok {
		c := *p
		c.IP, c.IPs = f.IP, f.IPs
		w.Pod, w.src = &c, p
	}
	w.Enrolled = Enrolled(*w.Pod, v.snap.Namespaces[w.Namespace], v.cfg.systemNamespace)
	if w.Mesh != nil && !w.Local {
		// Another node's pod as istiod sends it, without labels: its
		// agent decided the capture and announced it.
		w.Enrolled = w.Mesh.HBONE
	}
	return w
}

// fill returns the captured addresses of p, a pod of this node the API
// lists without an address; the API's address, once listed, wins.
func (v *view) fill(p *inventory.Pod) (capturedAddrs, bool) {
	if p.IP.IsValid() || p.HostNetwork || p.NodeName != v.cfg.nodeName || len(v.fills) == 0 {
		return capturedAddrs{}, false
	}
	f, ok := v.fills[p.Key()]
	if !ok || p.UID != "" && f.UID != "" && p.UID != f.UID {
		return capturedAddrs{}, false
	}
	return f, true
}

func (v *view) indexServices() {
	v.services = map[netip.AddrPort]*inventory.Service{}
	v.servicesByNS = map[string][]*inventory.Service{}
	v.servicesByIP = map[netip.Addr]*inventory.Service{}
	v.byHostname = map[string]*inventory.Service{}
	for i := range v.snap.Services {
		s := &v.snap.Services[i]
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
}

// indexLocal lists the enrolled pods on this node and their identities.
func (v *view) indexLocal() {
	v.local = v.local[:0:0]
	ids := map[certs.Identity]bool{}
	for _, w := range v.localByName {
		if got, ok := v.byIP.Get(w.IP); ok && got == w && w.Enrolled {
			v.local = append(v.local, w)
			ids[w.Identity()] = true
		}
	}
	slices.SortFunc(v.local, func(a, b *Workload) int { return a.IP.Compare(b.IP) })
	v.identities = slices.SortedFunc(maps.Keys(ids), func(a, b certs.Identity) int { return strings.Compare(a.String(), b.String()) })
}

// indexConflicts says which IPs are claimed by more than one pod.
func (v *view) indexConflicts() {
	v.conflicts = nil
	for _, ip := range slices.SortedFunc(maps.Keys(v.claims), netip.Addr.Compare) {
		var names []string
		for _, w := range v.claims[ip] {
			names = append(names, w.Key())
		}
		slices.Sort(names)
		v.conflicts = append(v.conflicts, fmt.Errorf("node: pod IP %s claimed by %s: treated as unknown", ip, strings.Join(names, " and ")))
	}
}

// update returns the view of snap, the agent's next snapshot, with fills
// for this node's pods listed without an address. When snap lists its
// changes since v's snapshot (or is v's snapshot again), the new view
// shares what they leave as it was; otherwise it is built whole. v is not
// changed.
func (v *view) update(snap *inventory.Snapshot, fills map[string]capturedAddrs) *view {
	var changed map[string]*inventory.Pod
	switch rev := v.snap.Revision; {
	case v.rebuild || rev == 0:
		return buildView(snap, v.cfg, fills)
	case snap.Revision == rev:
	case snap.Changes != nil && snap.Changes.Since == rev && namedAsListed(snap.Changes.Pods):
		changed = snap.Changes.Pods
	default:
		return buildView(snap, v.cfg, fills)
	}
	n := *v
	n.snap = withoutPods(snap)
	n.snap.Services = v.snap.Services // the Changes say they are the same: endpoints are indexed by them
	n.fills = fills
	u := &viewUpdate{view: &n, pods: v.pods.edit(), byIP: v.byIP.edit(), endpoints: v.endpoints.edit()}
	for key, p := range changed {
		u.replace(key, p)
	}
	for key := range fills {
		if _, ok := changed[key]; !ok && !fills[key].equal(v.fills[key]) {
			u.refill(key)
		}
	}
	for key := range v.fills {
		if _, ok := changed[key]; !ok {
			if _, ok := fills[key]; !ok {
				u.refill(key)
			}
		}
	}
	n.pods, n.byIP, n.endpoints = u.pods.Done(), u.byIP.Done(), u.endpoints.Done()
	if u.localChanged {
		n.indexLocal()
	}
	if u.claimsChanged {
		n.indexConflicts()
	}
	return &n
}

// namedAsListed reports whether each pod of changes is listed under its
// own name: if not, the source is wrong, and the view is built whole.
func namedAsListed(changes map[string]*inventory.Pod) bool {
	for key, p := range changes {
		if ns, name, _ := strings.Cut(key, "/"); p != nil && (p.Namespace != ns || p.Name != name) {
			return false
		}
	}
	return true
}

// viewUpdate changes a copy of a view, pod by pod.
type viewUpdate struct {
	*view
	pods      *pmapTxn[string, *Workload]
	byIP      *pmapTxn[netip.Addr, *Workload]
	endpoints *pmapTxn[*inventory.Service, []*Workload]
	// localChanged and claimsChanged say that the local pods, or the
	// claims, changed; localCopied and claimsCopied that localByName, or
	// claims, are the update's own.
	localChanged, claimsChanged, localCopied, claimsCopied bool
}

// replace puts pod p (nil: none) in place of the pod named key.
func (u *viewUpdate) replace(key string, p *inventory.Pod) {
	old, _ := u.pods.Get(key)
	var w *Workload
	if p != nil {
		w = u.newWorkload(p)
		u.pods.Set(key, w)
	} else if old != nil {
		u.pods.Delete(key)
	}
	if old != nil && old.Local || w != nil && w.Local {
		u.ownLocal()
		delete(u.localByName, key)
		if w != nil && w.Local {
			u.localByName[key] = w
		}
		u.localChanged = true
	}
	switch oldAddr, newAddr := old != nil && addressed(old.Pod), w != nil && addressed(w.Pod); {
	case oldAddr && newAddr && old.IP == w.IP && u.holds(old):
		u.reindex(old, w) // the common change: labels, readiness
	default:
		if oldAddr {
			u.unclaim(old)
		}
		if newAddr {
			u.claim(w)
		}
	}
}

// holds reports whether w is the pod at its IP.
func (u *viewUpdate) holds(w *Workload) bool {
	cur, ok := u.byIP.Get(w.IP)
	return ok && cur == w
}

// refill makes the pod named key again, its captured addresses changed.
func (u *viewUpdate) refill(key string) {
	if w, ok := u.pods.Get(key); ok {
		u.replace(key, w.source())
	}
}

// ownLocal and ownClaims copy the Go maps the update changes in place,
// once each: the view updated keeps its own.
func (u *viewUpdate) ownLocal() {
	if !u.localCopied {
		u.localByName, u.localCopied = maps.Clone(u.localByName), true
	}
}

func (u *viewUpdate) ownClaims() {
	if !u.claimsCopied {
		u.claims, u.claimsCopied = maps.Clone(u.claims), true
	}
}

// claim gives w its IP, or makes the IP a conflict.
func (u *viewUpdate) claim(w *Workload) {
	if ws, ok := u.claims[w.IP]; ok {
		u.ownClaims()
		u.claims[w.IP] = append(slices.Clip(ws), w)
		u.claimsChanged = true
		return
	}
	if old, ok := u.byIP.Get(w.IP); ok {
		u.unindex(old)
		u.ownClaims()
		u.claims[w.IP] = []*Workload{old, w}
		u.claimsChanged = true
		return
	}
	u.index(w)
}

// unclaim takes w's IP from it: the IP goes to the one pod left claiming
// it, if any.
func (u *viewUpdate) unclaim(w *Workload) {
	ws, ok := u.claims[w.IP]
	if !ok {
		if u.holds(w) {
			u.unindex(w)
		}
		return
	}
	u.claimsChanged = true
	u.ownClaims()
	ws = slices.DeleteFunc(slices.Clone(ws), func(c *Workload) bool { return c == w })
	if len(ws) > 1 {
		u.claims[w.IP] = ws
		return
	}
	delete(u.claims, w.IP)
	if len(ws) == 1 {
		u.index(ws[0])
	}
}

// index makes w the pod at its IP, and an endpoint of the Services that
// select it.
func (u *viewUpdate) index(w *Workload) {
	u.byIP.Set(w.IP, w)
	u.addEndpoint(w)
	u.localChanged = u.localChanged || w.Local
}

// addEndpoint makes w an endpoint of the Services that select it.
func (u *viewUpdate) addEndpoint(w *Workload) {
	for _, s := range u.servicesSelecting(w) {
		eps, _ := u.endpoints.Get(s)
		i, _ := slices.BinarySearchFunc(eps, w.IP, func(e *Workload, ip netip.Addr) int { return e.IP.Compare(ip) })
		u.endpoints.Set(s, slices.Insert(slices.Clip(eps), i, w))
	}
}

// removeEndpoint undoes addEndpoint.
func (u *viewUpdate) removeEndpoint(w *Workload) {
	for _, s := range u.servicesSelecting(w) {
		eps, _ := u.endpoints.Get(s)
		eps = slices.DeleteFunc(slices.Clone(eps), func(e *Workload) bool { return e == w })
		if len(eps) == 0 {
			u.endpoints.Delete(s)
		} else {
			u.endpoints.Set(s, eps)
		}
	}
}

// reindex puts w, at the same IP, in the place of old.
func (u *viewUpdate) reindex(old, w *Workload) {
	u.byIP.Set(w.IP, w)
	u.removeEndpoint(old)
	u.addEndpoint(w)
	u.localChanged = u.localChanged || old.Local || w.Local
}

// unindex undoes index.
func (u *viewUpdate) unindex(w *Workload) {
	u.byIP.Delete(w.IP)
	u.removeEndpoint(w)
	u.localChanged = u.localChanged || w.Local
}

// servicesSelecting returns the Services w is an endpoint of: those istiod
// lists it under, or those whose selector selects it.
func (v *view) servicesSelecting(w *Workload) []*inventory.Service {
	var out []*inventory.Service
	if w.Mesh != nil {
		for k := range w.Mesh.Services.All() {
			if s, ok := v.byHostname[k]; ok && !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
		return out
	}
	for _, s := range v.servicesByNS[w.Namespace] {
		if s.Selects(w.Pod) {
			out = append(out, s)
		}
	}
	return out
}

// indexEndpoints indexes each Service's endpoints among ws, those of them
// byIP holds.
func (v *view) indexEndpoints(ws iter.Seq[*Workload]) {
	eps := map[*inventory.Service][]*Workload{}
	for w := range ws {
		if _, claimed := v.claims[w.IP]; claimed {
			continue
		}
		for _, s := range v.servicesSelecting(w) {
			eps[s] = append(eps[s], w)
		}
	}
	for _, ws := range eps {
		slices.SortFunc(ws, func(a, b *Workload) int { return a.IP.Compare(b.IP) })
	}
	v.endpoints = pmapOf(comparableHash[*inventory.Service](), len(eps), maps.All(eps), nil)
}

// endpointsOf returns svc's endpoints, sorted by IP.
func (v *view) endpointsOf(svc *inventory.Service) []*Workload {
	eps, _ := v.endpoints.Get(svc)
	return eps
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
	return v.byIP.Get(ip.Unmap())
}

// localPod returns this node's pod namespace/name, as listed whether or not
// it has an address yet (--capture pod meets pods before the kubelet reports
// one).
func (v *view) localPod(namespace, name string) (inventory.Pod, bool) {
	w, ok := v.localByName[namespace+"/"+name]
	if !ok {
		return inventory.Pod{}, false
	}
	return *w.Pod, true
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
