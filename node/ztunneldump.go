package node

import (
	"bytes"
	"cmp"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// The admin endpoint's /config_dump serves two documents.
//
// Without a query it serves ztunnel's: the JSON document ztunnel's admin
// endpoint serves on /config_dump (istio/ztunnel src/admin.rs), so that
// `istioctl ztunnel-config workloads|services|policies|certificates|connections`
// reads Ferry. istioctl fetches it through a port-forward to port 15000 of
// the node agent's pod with a plain `GET /config_dump` (no query, no
// distinguishing header), and its documented offline use is
// `curl localhost:15000/config_dump > f; istioctl ztunnel-config ... -f f`;
// neither can ask for a format, so ztunnel's must be the default.
//
// With ?format=ferry it serves Ferry's own ConfigDump, which `ferry
// status|workloads|policies|certs` and the tests read (FerryConfigDumpPath).
// The two cannot share one document: both have "workloads", "policies" and
// "certificates" keys whose elements disagree (ztunnel's certChain is a list
// of certificates, Ferry's a PEM string; ztunnel lists policies as enforced,
// Ferry the policy objects with their diagnostics). A query parameter rather
// than another path keeps a new `ferry` CLI working against an older agent,
// which ignores the query.
//
// The types below carry ztunnel's JSON field names (serde camelCase), as
// istioctl's istioctl/pkg/writer/ztunnel/configdump decodes them. Lists are
// sorted, so the document is stable; istioctl accepts lists and maps alike.

// ztunnelStaticStrict is the policy istiod sends for STRICT PeerAuthentications
// (pilot/pkg/serviceregistry/ambient: staticStrictPolicyName); workloads whose
// effective mode is STRICT on every port are bound to it.
const ztunnelStaticStrict = "istio_converted_static_strict"

// ztunnelConvertedPrefix names istiod's conversion of a workload
// PeerAuthentication with port-level modes (convertedPeerAuthenticationPrefix).
const ztunnelConvertedPrefix = "converted_peer_authentication_"

// ztunnelDump is ztunnel's /config_dump document.
type ztunnelDump struct {
	Workloads    []ztWorkload `json:"workloads"`
	Services     []ztService  `json:"services"`
	Policies     []ztPolicy   `json:"policies"`
	Certificates []ztCerts    `json:"certificates"`
	// WorkloadState holds this node's enrolled pods by pod UID, with their
	// open connections (`istioctl ztunnel-config connections`).
	WorkloadState map[string]ztWorkloadState `json:"workloadState"`
}

// ztWorkload is ztunnel's state::workload::Workload.
type ztWorkload struct {
	UID               string            `json:"uid"`
	WorkloadIPs       []netip.Addr      `json:"workloadIps"`
	Waypoint          *ztGatewayAddress `json:"waypoint,omitempty"` // istiod's, in front of the pod (xDS mode)
	Protocol          string            `json:"protocol"`           // HBONE or TCP
	NetworkMode       string            `json:"networkMode"`        // Standard (host-network pods are not workloads)
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace"`
	TrustDomain       string            `json:"trustDomain,omitempty"`
	ServiceAccount    string            `json:"serviceAccount,omitempty"`
	CanonicalName     string            `json:"canonicalName,omitempty"`
	CanonicalRevision string            `json:"canonicalRevision,omitempty"`
	Node              string            `json:"node,omitempty"`
	// AuthorizationPolicies are "namespace/name" of the WorkloadSelector
	// policies bound to the workload.
	AuthorizationPolicies []string    `json:"authorizationPolicies,omitempty"`
	Status                string      `json:"status"` // Healthy or Unhealthy
	ClusterID             string      `json:"clusterId"`
	Locality              *ztLocality `json:"locality,omitempty"`
	// Services are "namespace/hostname" of the Services selecting it.
	Services []string `json:"services,omitempty"`
	Capacity uint32   `json:"capacity"`
}

type ztLocality struct {
	Region  string `json:"region"`
	Zone    string `json:"zone"`
	Subzone string `json:"subzone"`
}

// ztService is ztunnel's state::service::Service.
type ztService struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Hostname  string `json:"hostname"`
	// VIPs are "network/address"; Ferry knows no networks.
	VIPs []string `json:"vips"`
	// Ports map service ports to target ports (0: a named target port).
	Ports map[uint16]uint16 `json:"ports"`
	// Endpoints are keyed by workload UID.
	Endpoints       map[string]ztEndpoint `json:"endpoints"`
	SubjectAltNames []string              `json:"subjectAltNames"`
	// Waypoint is the waypoint istiod puts in front of the Service's
	// addresses (xDS mode).
	Waypoint     *ztGatewayAddress `json:"waypoint,omitempty"`
	LoadBalancer *ztLoadBalancer   `json:"loadBalancer,omitempty"`
}

// ztGatewayAddress is ztunnel's state::workload::GatewayAddress. Its
// destination is a serde untagged enum of two types that serialize as
// strings: a NetworkAddress, "network/address" (Ferry knows no networks:
// "/10.96.0.20", like the Services' VIPs), or a NamespacedHostname,
// "namespace/hostname". istioctl's WAYPOINT column prints the name of the
// Service whose "namespace/hostname" or one of whose VIPs equals it.
type ztGatewayAddress struct {
	Destination   string `json:"destination"`
	HBONEMTLSPort uint16 `json:"hboneMtlsPort"`
}

// gatewayAddress is wp as ztunnel serializes it; nil for none.
func gatewayAddress(wp *inventory.Waypoint) *ztGatewayAddress {
	if wp == nil {
		return nil
	}
	g := &ztGatewayAddress{Destination: wp.Namespace + "/" + wp.Hostname, HBONEMTLSPort: wp.HBONEPort}
	if wp.Address.IsValid() {
		g.Destination = "/" + wp.Address.String()
	}
	return g
}

// ztLoadBalancer is ztunnel's state::service::LoadBalancer.
type ztLoadBalancer struct {
	RoutingPreferences []string `json:"routingPreferences"` // Region, Zone, Subzone, Node, Cluster, Network
	Mode               string   `json:"mode"`               // Standard, Strict, Failover or Passthrough
	HealthPolicy       string   `json:"healthPolicy"`       // OnlyHealthy or AllowAll
}

type ztEndpoint struct {
	WorkloadUID string            `json:"workloadUid"`
	Port        map[uint16]uint16 `json:"port"`
	Status      string            `json:"status"`
}

// ztPolicy is ztunnel's rbac::Authorization.
type ztPolicy struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Scope     string `json:"scope"`  // Global, Namespace or WorkloadSelector
	Action    string `json:"action"` // Allow or Deny
	// Rules are ORed; a rule's clauses ANDed; a clause's matches ORed.
	Rules  [][][]ztMatch `json:"rules"`
	DryRun bool          `json:"dryRun"`
}

// ztMatch is ztunnel's rbac::RbacMatch.
type ztMatch struct {
	Namespaces          []ztStringMatch `json:"namespaces,omitempty"`
	NotNamespaces       []ztStringMatch `json:"notNamespaces,omitempty"`
	ServiceAccounts     []ztSAMatch     `json:"serviceAccounts,omitempty"`
	NotServiceAccounts  []ztSAMatch     `json:"notServiceAccounts,omitempty"`
	Principals          []ztStringMatch `json:"principals,omitempty"`
	NotPrincipals       []ztStringMatch `json:"notPrincipals,omitempty"`
	SourceIPs           []netip.Prefix  `json:"sourceIps,omitempty"`
	NotSourceIPs        []netip.Prefix  `json:"notSourceIps,omitempty"`
	DestinationIPs      []netip.Prefix  `json:"destinationIps,omitempty"`
	NotDestinationIPs   []netip.Prefix  `json:"notDestinationIps,omitempty"`
	DestinationPorts    []uint32        `json:"destinationPorts,omitempty"`
	NotDestinationPorts []uint32        `json:"notDestinationPorts,omitempty"`
}

// ztStringMatch is ztunnel's rbac::StringMatch, a serde enum:
// {"Exact": "v"}, {"Prefix": "v"}, {"Suffix": "v"} or {"Presence": []}.
type ztStringMatch map[string]any

type ztSAMatch struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// ztCerts is ztunnel's admin::CertsDump.
type ztCerts struct {
	Identity string `json:"identity"`
	// State is Available, Initializing or "Unavailable: <why>".
	State     string   `json:"state"`
	CertChain []ztCert `json:"certChain"` // leaf first, then intermediates
	RootCerts []ztCert `json:"rootCerts"`
}

// ztCert is ztunnel's admin::CertDump.
type ztCert struct {
	PEM            string `json:"pem"`          // base64 of the PEM block, as ztunnel
	SerialNumber   string `json:"serialNumber"` // decimal
	ValidFrom      string `json:"validFrom"`    // RFC 3339, seconds, UTC
	ExpirationTime string `json:"expirationTime"`
}

type ztWorkloadState struct {
	State       string         `json:"state"` // Up (captured) or Pending
	Connections ztConnections  `json:"connections"`
	Info        ztWorkloadInfo `json:"info"`
}

type ztConnections struct {
	Inbound  []ztConnection `json:"inbound"`
	Outbound []ztConnection `json:"outbound"`
}

type ztConnection struct {
	Src         string `json:"src"`
	OriginalDst string `json:"originalDst"`
	ActualDst   string `json:"actualDst"`
	Protocol    string `json:"protocol"` // HBONE or TCP
}

type ztWorkloadInfo struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	TrustDomain    string `json:"trustDomain"`
	ServiceAccount string `json:"serviceAccount"`
}

// ztunnelConfigDump implements adminSource.
func (a *Agent) ztunnelConfigDump() ztunnelDump {
	in := ztunnelInput{cfg: a.cfg, state: a.current(), certs: a.store.Snapshot(), conns: a.conns.Connections()}
	if a.redirect != nil {
		in.captured = a.redirect.Captured
	}
	return in.dump()
}

// ztunnelInput is what the ztunnel-format dump is built from: one state,
// read once, and the agent's certificates and connections.
type ztunnelInput struct {
	cfg   Config
	state *state // nil before the first inventory
	certs []certs.CertStatus
	conns []tunnel.ConnInfo
	// captured reports whether a local enrolled pod's address is
	// captured; nil means every one is (no redirection).
	captured func(netip.Addr) bool
}

func (in *ztunnelInput) dump() ztunnelDump {
	d := ztunnelDump{
		Workloads: []ztWorkload{}, Services: []ztService{}, Policies: []ztPolicy{},
		Certificates: ztunnelCerts(in.certs), WorkloadState: map[string]ztWorkloadState{},
	}
	s := in.state
	if s == nil {
		return d
	}
	svcs := in.services(s)
	policies := in.policies(s)
	converted := map[string]bool{} // PeerAuthentication conversions listed
	for _, w := range s.view.byIP.All() {
		zw := in.workload(s, w)
		for _, key := range zw.Services {
			if zs := svcs[key]; zs != nil {
				zs.Endpoints[zw.UID] = endpoint(zw, w, key, zs)
			}
		}
		bound, cp := in.bound(s, w)
		zw.AuthorizationPolicies = bound
		if cp != nil && !converted[cp.Namespace+"/"+cp.Name] {
			converted[cp.Namespace+"/"+cp.Name] = true
			policies = append(policies, *cp)
		}
		d.Workloads = append(d.Workloads, zw)
		if w.Local && w.Enrolled {
			d.WorkloadState[cmp.Or(w.UID, zw.UID)] = in.workloadState(w)
		}
	}
	slices.SortFunc(d.Workloads, func(x, y ztWorkload) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name), cmp.Compare(x.UID, y.UID))
	})
	for _, zs := range svcs {
		d.Services = append(d.Services, *zs)
	}
	slices.SortFunc(d.Services, func(x, y ztService) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name), cmp.Compare(x.Hostname, y.Hostname))
	})
	slices.SortStableFunc(policies, func(x, y ztPolicy) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
	d.Policies = append(d.Policies, policies...)
	return d
}

// services lists the Services without endpoints, by "namespace/hostname".
func (in *ztunnelInput) services(s *state) map[string]*ztService {
	svcs := map[string]*ztService{}
	for i := range s.view.snap.Services {
		svc := &s.view.snap.Services[i]
		zs := &ztService{
			Name: svc.Name, Namespace: svc.Namespace, Hostname: in.hostname(svc),
			VIPs: []string{}, Ports: map[uint16]uint16{}, Endpoints: map[string]ztEndpoint{}, SubjectAltNames: []string{},
			Waypoint: gatewayAddress(svc.Waypoint),
		}
		for _, ip := range svc.ClusterIPs {
			zs.VIPs = append(zs.VIPs, "/"+ip.String())
		}
		for _, p := range svc.Ports {
			zs.Ports[p.Port] = serviceTargetPort(svc, p)
		}
		if lb := svc.LoadBalancing; lb != nil {
			zs.LoadBalancer = &ztLoadBalancer{RoutingPreferences: []string{}, Mode: "Standard", HealthPolicy: "OnlyHealthy"}
			for _, sc := range lb.RoutingPreference {
				zs.LoadBalancer.RoutingPreferences = append(zs.LoadBalancer.RoutingPreferences, titleCase(sc))
			}
			if lb.Mode != "" && lb.Mode != "UNSPECIFIED" {
				zs.LoadBalancer.Mode = titleCase(lb.Mode)
			}
			if lb.AllowUnhealthy {
				zs.LoadBalancer.HealthPolicy = "AllowAll"
			}
		}
		svcs[svc.Namespace+"/"+zs.Hostname] = zs
	}
	return svcs
}

// policies lists the AuthorizationPolicies as the engine enforces them,
// istiod's dry-run ones (not enforced, but ztunnel lists them) and, from
// PeerAuthentication objects, istiod's static STRICT policy, which it sends
// as soon as any exists.
func (in *ztunnelInput) policies(s *state) []ztPolicy {
	var out []ztPolicy
	for _, p := range s.engine.Policies() {
		out = append(out, viewPolicy(p))
	}
	for _, tp := range s.view.snap.TranslatedPolicies {
		if tp.DryRun {
			out = append(out, translatedPolicy(tp))
		}
	}
	if s.view.snap.TranslatedPolicies == nil && len(s.view.snap.PeerAuthentications) > 0 {
		out = append(out, ztPolicy{
			Name: ztunnelStaticStrict, Namespace: in.cfg.SystemNamespace, Scope: "WorkloadSelector", Action: "Deny",
			Rules: [][][]ztMatch{{{{NotPrincipals: []ztStringMatch{{"Presence": []any{}}}}}}},
		})
	}
	return out
}

// endpoint is w's entry in the Service zs (key "namespace/hostname"): its
// ports are those istiod resolved for the pod, else the Service's numbered
// target ports.
func endpoint(zw ztWorkload, w *Workload, key string, zs *ztService) ztEndpoint {
	ep := ztEndpoint{WorkloadUID: zw.UID, Port: map[uint16]uint16{}, Status: zw.Status}
	for sp, tp := range zs.Ports {
		if w.Mesh != nil {
			if p, ok := w.Mesh.TargetPorts[key][sp]; ok {
				tp = p
			}
		}
		if tp != 0 {
			ep.Port[sp] = tp
		}
	}
	return ep
}

// titleCase turns istiod's enum names (ZONE, FAILOVER) into ztunnel's (Zone,
// Failover).
func titleCase(s string) string {
	if s == "" {
		return s
	}
	return s[:1] + strings.ToLower(s[1:])
}

// workload is w as ztunnel holds it, with the Services selecting it but
// not yet its policies.
func (in *ztunnelInput) workload(s *state, w *Workload) ztWorkload {
	zw := ztWorkload{
		UID: in.uid(w), WorkloadIPs: workloadIPs(w), Protocol: "TCP", NetworkMode: "Standard",
		Name: w.Name, Namespace: w.Namespace, TrustDomain: w.trustDomain.Value(), ServiceAccount: w.ServiceAccount,
		Node: w.NodeName, Status: "Healthy", ClusterID: cmp.Or(in.cfg.ClusterID, "Kubernetes"), Capacity: 1,
	}
	if w.Enrolled {
		zw.Protocol = "HBONE"
	}
	zw.CanonicalName, zw.CanonicalRevision = canonicalService(w.Labels)
	if m := w.Mesh; m != nil {
		zw.Capacity = m.Capacity
		zw.Waypoint = gatewayAddress(m.Waypoint)
		if !m.Healthy {
			zw.Status = "Unhealthy"
		}
		if l := m.Where(); l != (inventory.Locality{}) {
			zw.Locality = &ztLocality{Region: l.Region, Zone: l.Zone, Subzone: l.Subzone}
		}
		zw.Services = m.Services.Slice()
	} else {
		for _, svc := range s.view.servicesByNS[w.Namespace] {
			if svc.Selects(w.Pod) {
				zw.Services = append(zw.Services, svc.Namespace+"/"+in.hostname(svc))
			}
		}
	}
	slices.Sort(zw.Services)
	return zw
}

// bound lists the WorkloadSelector policies bound to w: as istiod sent
// them, or, from CRDs, those whose selector selects w and the one istiod
// would bind for w's PeerAuthentications. That is the static STRICT policy
// when w is STRICT on every port, or a conversion of w's PeerAuthentication
// with port-level modes, returned as cp.
func (in *ztunnelInput) bound(s *state, w *Workload) (names []string, cp *ztPolicy) {
	switch {
	case w.Mesh != nil:
		names = w.Mesh.AuthorizationPolicies.Slice()
	case s.view.snap.TranslatedPolicies == nil:
		x := s.engine.Explain(authz.Request{Namespace: w.Namespace, Labels: w.Labels})
		for _, p := range x.Policies {
			if p.Scope == authz.ScopeWorkload {
				names = append(names, p.Policy)
			}
		}
		mv := s.engine.MTLS(w.Namespace, w.Labels)
		switch {
		case mv.Ports != nil:
			p := convertedPeerAuthentication(mv)
			cp = &p
			names = append(names, p.Namespace+"/"+p.Name)
		case mv.Mode == "STRICT":
			names = append(names, in.cfg.SystemNamespace+"/"+ztunnelStaticStrict)
		}
	}
	slices.Sort(names)
	return names, cp
}

// uid is istiod's workload UID when istiod sent the pod, else one in its
// format: "<cluster>//Pod/<namespace>/<name>".
func (in *ztunnelInput) uid(w *Workload) string {
	if w.Mesh != nil && w.Mesh.UID != "" {
		return w.Mesh.UID
	}
	return cmp.Or(in.cfg.ClusterID, "Kubernetes") + "//Pod/" + w.Namespace + "/" + w.Name
}

// hostname is the Service's DNS name: istiod's, else the cluster's.
func (in *ztunnelInput) hostname(svc *inventory.Service) string {
	if svc.Hostname != "" {
		return svc.Hostname
	}
	return svc.Name + "." + svc.Namespace + ".svc." + cmp.Or(in.cfg.ClusterDomain, "cluster.local")
}

// serviceTargetPort is the pods' port for p as istiod sends it: the number, or 0
// for a named target port (the pods' number is not known). From istiod
// (xDS mode) it is taken as sent; from a Kubernetes Service an empty
// target port defaults to the port.
func serviceTargetPort(svc *inventory.Service, p inventory.ServicePort) uint16 {
	if svc.Hostname != "" || p.TargetPort != 0 || p.TargetPortName != "" {
		return p.TargetPort
	}
	return p.Port
}

// workloadIPs lists the pod's addresses, its IP first.
func workloadIPs(w *Workload) []netip.Addr {
	ips := []netip.Addr{w.IP}
	for _, ip := range w.IPs {
		if !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	return ips
}

// canonicalService is Istio's canonical service name and revision from a
// pod's labels (pkg/config/labels CanonicalService), when its labels name
// one; Ferry does not know a pod's owner, Istio's last fallback.
func canonicalService(labels map[string]string) (name, revision string) {
	for _, k := range []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"} {
		if name = labels[k]; name != "" {
			break
		}
	}
	if name == "" {
		return "", ""
	}
	for _, k := range []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"} {
		if revision = labels[k]; revision != "" {
			return name, revision
		}
	}
	return name, "latest"
}

// workloadState is the state of a local enrolled pod and its connections.
func (in *ztunnelInput) workloadState(w *Workload) ztWorkloadState {
	st := ztWorkloadState{
		State:       "Up",
		Connections: ztConnections{Inbound: []ztConnection{}, Outbound: []ztConnection{}},
		Info:        ztWorkloadInfo{Name: w.Name, Namespace: w.Namespace, TrustDomain: w.trustDomain.Value(), ServiceAccount: w.ServiceAccount},
	}
	if in.captured != nil && !in.captured(w.IP) {
		st.State = "Pending"
	}
	ips := workloadIPs(w)
	for _, c := range in.conns {
		proto := "TCP"
		if c.Mode == "hbone" {
			proto = "HBONE"
		}
		switch {
		case c.Direction == tunnel.DirOutbound && slices.Contains(ips, c.Src.Addr()):
			orig, actual := c.Dst, c.Dst
			if c.DialledDst.IsValid() {
				orig = c.DialledDst
			}
			if c.Mode == "hbone" {
				actual = netip.AddrPortFrom(c.Dst.Addr(), in.cfg.hbonePort())
			}
			st.Connections.Outbound = append(st.Connections.Outbound, ztConnection{Src: c.Src.String(), OriginalDst: orig.String(), ActualDst: actual.String(), Protocol: proto})
		case c.Direction != tunnel.DirOutbound && slices.Contains(ips, c.Dst.Addr()):
			st.Connections.Inbound = append(st.Connections.Inbound, ztConnection{Src: c.Src.String(), ActualDst: c.Dst.String(), Protocol: proto})
		}
	}
	return st
}

// ztScopes and ztActions name authz's translated scopes and actions as
// ztunnel serializes them.
var (
	ztScopes = map[string]string{
		authz.TranslatedScopeGlobal:           "Global",
		authz.TranslatedScopeNamespace:        "Namespace",
		authz.TranslatedScopeWorkloadSelector: "WorkloadSelector",
	}
	ztActions = map[string]string{"ALLOW": "Allow", "DENY": "Deny"}
)

// viewPolicy is a policy as the engine enforces it. ztunnel skips a match
// without fields (it never matches), while in the view it matches
// everything: a clause holding one always holds, written as ztunnel's empty
// clause. A clause without matches never holds, written as one empty match.
func viewPolicy(p authz.PolicyView) ztPolicy {
	zp := ztPolicy{Name: p.Name, Namespace: p.Namespace, Scope: ztScopes[p.Scope], Action: ztActions[p.Action], Rules: [][][]ztMatch{}}
	for _, rule := range p.Rules {
		zr := [][]ztMatch{}
		for _, clause := range rule {
			zc := []ztMatch{}
			for _, m := range clause {
				zm := ztunnelMatch(m)
				if isEmptyMatch(zm) {
					zc = []ztMatch{}
					break
				}
				zc = append(zc, zm)
			}
			if len(clause) == 0 {
				zc = []ztMatch{{}}
			}
			zr = append(zr, zc)
		}
		zp.Rules = append(zp.Rules, zr)
	}
	return zp
}

// translatedPolicy is a policy as istiod sent it (ztunnel's semantics).
func translatedPolicy(tp authz.TranslatedPolicy) ztPolicy {
	zp := ztPolicy{Name: tp.Name, Namespace: tp.Namespace, Scope: ztScopes[tp.Scope], Action: ztActions[tp.Action], Rules: [][][]ztMatch{}, DryRun: tp.DryRun}
	for _, g := range tp.Groups {
		zr := [][]ztMatch{}
		for _, r := range g.Rules {
			zc := []ztMatch{}
			for _, m := range r.Matches {
				zc = append(zc, ztunnelMatch(m))
			}
			zr = append(zr, zc)
		}
		zp.Rules = append(zp.Rules, zr)
	}
	return zp
}

func isEmptyMatch(m ztMatch) bool {
	return len(m.Namespaces)+len(m.NotNamespaces)+len(m.ServiceAccounts)+len(m.NotServiceAccounts)+
		len(m.Principals)+len(m.NotPrincipals)+len(m.SourceIPs)+len(m.NotSourceIPs)+
		len(m.DestinationIPs)+len(m.NotDestinationIPs)+len(m.DestinationPorts)+len(m.NotDestinationPorts) == 0
}

func ztunnelMatch(m authz.TranslatedMatch) ztMatch {
	return ztMatch{
		Namespaces: ztStrings(m.Namespaces), NotNamespaces: ztStrings(m.NotNamespaces),
		ServiceAccounts: ztSAs(m.ServiceAccounts), NotServiceAccounts: ztSAs(m.NotServiceAccounts),
		Principals: ztStrings(m.Principals), NotPrincipals: ztStrings(m.NotPrincipals),
		SourceIPs: m.SourceIPs, NotSourceIPs: m.NotSourceIPs,
		DestinationIPs: m.DestinationIPs, NotDestinationIPs: m.NotDestinationIPs,
		DestinationPorts: m.DestinationPorts, NotDestinationPorts: m.NotDestinationPorts,
	}
}

func ztStrings(ms []authz.StringMatch) []ztStringMatch {
	var out []ztStringMatch
	for _, m := range ms {
		switch m.Kind {
		case authz.StringMatchPresence:
			out = append(out, ztStringMatch{"Presence": []any{}})
		case authz.StringMatchPrefix:
			out = append(out, ztStringMatch{"Prefix": m.Value})
		case authz.StringMatchSuffix:
			out = append(out, ztStringMatch{"Suffix": m.Value})
		default:
			out = append(out, ztStringMatch{"Exact": m.Value})
		}
	}
	return out
}

func ztSAs(ms []authz.ServiceAccountMatch) []ztSAMatch {
	var out []ztSAMatch
	for _, m := range ms {
		out = append(out, ztSAMatch{Namespace: m.Namespace, ServiceAccount: m.ServiceAccount})
	}
	return out
}

// convertedPeerAuthentication is istiod's conversion of the workload
// PeerAuthentication that gives a workload port-level modes
// (convertPeerAuthentication): a DENY policy that denies plaintext on the
// STRICT ports. Under a STRICT mode it denies plaintext except on the
// PERMISSIVE ports (one rule: no identity, and a clause per exempt port);
// under a PERMISSIVE mode it denies plaintext on each STRICT port (a rule
// each).
func convertedPeerAuthentication(mv authz.MTLSView) ztPolicy {
	ns, name, _ := strings.Cut(mv.PortPolicy, "/")
	zp := ztPolicy{Name: ztunnelConvertedPrefix + name, Namespace: ns, Scope: "WorkloadSelector", Action: "Deny", Rules: [][][]ztMatch{}}
	noIdentity := []ztStringMatch{{"Presence": []any{}}}
	ports := slices.Sorted(maps.Keys(mv.Ports))
	if mv.Mode == "STRICT" {
		var rule [][]ztMatch
		for _, p := range ports {
			rule = append(rule, []ztMatch{{NotDestinationPorts: []uint32{uint32(p)}}})
		}
		rule = append(rule, []ztMatch{{NotPrincipals: noIdentity}})
		zp.Rules = append(zp.Rules, rule)
		return zp
	}
	for _, p := range ports {
		zp.Rules = append(zp.Rules, [][]ztMatch{{{NotPrincipals: noIdentity, DestinationPorts: []uint32{uint32(p)}}}})
	}
	return zp
}

// ztunnelCerts lists the certificates as ztunnel does: the issued chain
// without its root, and the root apart.
func ztunnelCerts(cs []certs.CertStatus) []ztCerts {
	out := []ztCerts{}
	for _, c := range cs {
		zc := ztCerts{Identity: c.ID, CertChain: []ztCert{}, RootCerts: []ztCert{}}
		switch c.State {
		case certs.CertValid:
			zc.State = "Available"
		case certs.CertPending:
			zc.State = "Initializing"
		case certs.CertExpired:
			zc.State = "Unavailable: " + cmp.Or(c.LastError, "the certificate held is outside its validity period")
		default:
			zc.State = "Unavailable: " + c.LastError
		}
		chain := parseChainPEM(c.ChainPEM)
		for i, x := range chain {
			cd := ztCert{
				PEM:            base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})),
				SerialNumber:   x.SerialNumber.String(),
				ValidFrom:      x.NotBefore.UTC().Format(time.RFC3339),
				ExpirationTime: x.NotAfter.UTC().Format(time.RFC3339),
			}
			if i > 0 && bytes.Equal(x.RawIssuer, x.RawSubject) && x.CheckSignatureFrom(x) == nil {
				zc.RootCerts = append(zc.RootCerts, cd)
			} else {
				zc.CertChain = append(zc.CertChain, cd)
			}
		}
		out = append(out, zc)
	}
	return out
}

// parseChainPEM parses the certificates of a PEM chain, skipping what does
// not parse.
func parseChainPEM(s string) []*x509.Certificate {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && b.Type == "CERTIFICATE" {
			out = append(out, c)
		}
	}
}
