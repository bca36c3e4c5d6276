package inventory

import (
	"context"
	"net/netip"
	"sync/atomic"
	"unique"

	"github.com/ferrymesh/ferry/authz"
)

// Snapshot is the cluster state one source last observed. A Snapshot is never
// modified after it is published; readers may share it freely.
type Snapshot struct {
	Namespaces map[string]Namespace
	// Pods are shared with the source and with its other snapshots (a pod
	// that did not change is the same *Pod in the next one): never
	// modified once published, so a snapshot costs a pointer per pod.
	Pods                  []*Pod
	Services              []Service
	AuthorizationPolicies []authz.AuthorizationPolicy
	PeerAuthentications   []authz.PeerAuthentication
	// TranslatedPolicies are AuthorizationPolicies (and PeerAuthentications)
	// as istiod translates them for node proxies. Non-nil only from istiod
	// (xDS mode), whose snapshots carry no objects in the two fields above.
	TranslatedPolicies []authz.TranslatedPolicy
	// Errors lists problems the source found (malformed YAML, objects it
	// could not identify, policies with errors), each naming the file or
	// object; the rest of the snapshot still applies.
	Errors []error
	// PolicyProblems are the errors of policy objects whose last good
	// version the snapshot holds instead (Effect says so): authz.Compile
	// cannot see them, so they are reported beside its own diagnostics.
	PolicyProblems []authz.Diagnostic
	// PolicyRevision names the content of the policy fields above
	// (AuthorizationPolicies, PeerAuthentications, TranslatedPolicies):
	// two snapshots with the same non-zero revision hold the same policies,
	// so a consumer may reuse what it compiled from them. Sources take a new
	// one from NewPolicyRevision whenever their policies change; zero says
	// nothing (compile every time).
	PolicyRevision uint64
	// Revision names this snapshot among those its source publishes (from
	// NewRevision); zero names none.
	Revision uint64
	// Changes, when set, says how this snapshot differs from the earlier
	// one Changes.Since names, so a consumer holding what it built from
	// that one may update it rather than build it again; nil says nothing.
	Changes *Changes
}

// Changes lists what a snapshot changed since an earlier one of the same
// source: pods only. A source whose namespaces or Services changed too
// sets no Changes (its policies are named by PolicyRevision, and its
// Errors are read whole).
type Changes struct {
	// Since is the Revision of the earlier snapshot.
	Since uint64
	// Pods names every pod added, changed or removed since, by
	// "namespace/name", with its pod in the snapshot's Pods, or nil when
	// it was removed. Every pod of a snapshot with Changes has a name of
	// its own. A pod listed unchanged is harmless.
	Pods map[string]*Pod
}

var revisions atomic.Uint64

// NewPolicyRevision returns a revision no other call in this process
// returns, for Snapshot.PolicyRevision.
func NewPolicyRevision() uint64 { return revisions.Add(1) }

// NewRevision returns a revision no other call in this process returns,
// for Snapshot.Revision.
func NewRevision() uint64 { return revisions.Add(1) }

// Key returns p's name in Changes.Pods: "namespace/name". istiod's UID of
// a pod ends with it, and lends it (a cluster's 100,000 keys would take 2
// MB).
func (p *Pod) Key() string {
	if p.Mesh != nil {
		uid, n := p.Mesh.UID, len(p.Namespace)+1+len(p.Name)
		if k := uid[max(0, len(uid)-n):]; len(k) == n && k[:len(p.Namespace)] == p.Namespace && k[len(p.Namespace)] == '/' && k[len(p.Namespace)+1:] == p.Name {
			return k
		}
	}
	return p.Namespace + "/" + p.Name
}

// Namespace is the part of a v1 Namespace Ferry uses.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Pod is the part of a v1 Pod Ferry uses.
type Pod struct {
	Name           string
	Namespace      string
	UID            string
	ServiceAccount string // spec.serviceAccountName; "default" when empty
	NodeName       string // spec.nodeName
	IP             netip.Addr
	// IPs are all the pod's addresses (status.podIPs: one per family in a
	// dual-stack cluster), IP among them when the source lists it. Ferry
	// carries IPv4; it refuses TCP to and from an enrolled pod's IPv6
	// addresses rather than let them bypass capture (node/redirect).
	IPs         []netip.Addr
	HostNetwork bool
	Labels      map[string]string
	Annotations map[string]string
	// Mesh is what istiod says about the pod (xDS mode); nil otherwise.
	Mesh *MeshWorkload
}

// MeshWorkload is istiod's view of a pod (an istio.workload.Workload). Its
// fields are ordered to pack: a cluster has one per pod.
type MeshWorkload struct {
	// UID is istiod's workload UID ("<cluster>//Pod/<namespace>/<name>").
	UID string
	// AuthorizationPolicies are "namespace/name" of the selector policies
	// istiod attached to the pod.
	AuthorizationPolicies Names
	// Services are "namespace/hostname" of the Services selecting the pod,
	// in name order.
	Services Names
	// TargetPorts maps a Service (as in Services) port to the pod's port
	// where istiod resolved it (a named target port); absent ports use the
	// Service's target port.
	TargetPorts map[string]map[uint16]uint16
	// Capacity weighs the pod when a node picks a Service endpoint
	// (default 1).
	Capacity uint32
	// HBONE says the pod's node captures it (tunnelProtocol HBONE): its
	// agent announced the capture (the ambient.istio.io/redirection
	// annotation) and terminates HBONE for it.
	HBONE bool
	// Healthy is false when istiod reports the pod not ready.
	Healthy bool
	// Waypoint, when set, receives the pod's traffic before it does.
	Waypoint *Waypoint
	// Locality is the pod's node's, shared by every pod there; the zero
	// Handle is none (read it with Where).
	Locality unique.Handle[Locality]
}

// Locality is where a node runs: its region, zone and subzone.
type Locality struct {
	Region, Zone, Subzone string
}

// Where returns m's locality, empty when istiod sent none.
func (m *MeshWorkload) Where() Locality {
	if m.Locality == (unique.Handle[Locality]{}) {
		return Locality{}
	}
	return m.Locality.Value()
}

// Service is the part of a v1 Service Ferry uses: it names the Service
// behind a connection (destination_service in metrics and access logs),
// never to authorize one. Ferry picks an endpoint itself only when it sees
// a connection to the Service's address (no kube-proxy chose first).
type Service struct {
	Name      string
	Namespace string
	// Hostname is the Service's DNS name as istiod sends it (xDS mode);
	// pods then name the Services selecting them (MeshWorkload.Services).
	Hostname string
	// ClusterIPs are spec.clusterIPs (or spec.clusterIP); none for a
	// headless Service.
	ClusterIPs []netip.Addr
	Ports      []ServicePort // TCP ports only
	// Selector is spec.selector; empty selects no pod (its endpoints are
	// managed by someone else, as Kubernetes reads it).
	Selector map[string]string
	// LoadBalancing says how a node picks an endpoint when it sees the
	// Service's address itself (no kube-proxy before it); nil picks among
	// all healthy endpoints.
	LoadBalancing *LoadBalancing
	// Waypoint, when set, receives traffic to the Service's address
	// before its endpoints do (xDS mode).
	Waypoint *Waypoint
}

// Waypoint is an L7 proxy istiod puts in front of a pod or Service: by
// address (its Service's or its pod's) or by Service hostname.
type Waypoint struct {
	Address             netip.Addr
	Namespace, Hostname string
	// HBONEPort is where the waypoint terminates HBONE (15008).
	HBONEPort uint16
}

// LoadBalancing is istiod's load-balancing setting of a Service
// (trafficDistribution and the networking.istio.io/traffic-distribution
// annotation), as ztunnel applies it.
type LoadBalancing struct {
	// RoutingPreference lists locality scopes, broadest first (REGION,
	// ZONE, SUBZONE, NODE, CLUSTER, NETWORK): endpoints sharing more of
	// them with the client, in order, are preferred.
	RoutingPreference []string
	// Mode is STRICT (only endpoints matching every scope), FAILOVER (the
	// best-matching endpoints available) or PASSTHROUGH (no endpoint
	// picking: the address is dialled as it is).
	Mode string
	// AllowUnhealthy lets unhealthy endpoints be picked (ALLOW_ALL).
	AllowUnhealthy bool
}

// ServicePort is one TCP port of a Service.
type ServicePort struct {
	Port uint16
	// TargetPort is the pods' port number; TargetPortName names a
	// container port instead (Ferry does not read container ports, so
	// such a port maps to a pod only through Port). Both empty means
	// Port, as Kubernetes defaults it.
	TargetPort     uint16
	TargetPortName string
}

// Selects reports whether s selects pod: as istiod says (xDS mode), else
// same namespace and every selector label matching.
func (s *Service) Selects(pod *Pod) bool {
	if pod.Mesh != nil && s.Hostname != "" {
		return pod.Mesh.Services.Contains(s.Namespace + "/" + s.Hostname)
	}
	if len(s.Selector) == 0 || pod.Namespace != s.Namespace {
		return false
	}
	for k, v := range s.Selector {
		if got, ok := pod.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Source publishes snapshots. Run calls publish with a complete snapshot each
// time the state changes, until ctx is done; publish must not block for long.
type Source interface {
	Run(ctx context.Context, publish func(*Snapshot)) error
}
