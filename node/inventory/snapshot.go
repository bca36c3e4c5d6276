package inventory

import (
	"context"
	"net/netip"

	"github.com/ferrymesh/ferry/authz"
)

// Snapshot is the cluster state one source last observed. A Snapshot is never
// modified after it is published; readers may share it freely.
type Snapshot struct {
	Namespaces            map[string]Namespace
	Pods                  []Pod
	AuthorizationPolicies []authz.AuthorizationPolicy
	PeerAuthentications   []authz.PeerAuthentication
	// Errors lists problems the source found (malformed YAML, objects it
	// could not identify, policies with errors), each naming the file or
	// object; the rest of the snapshot still applies.
	Errors []error
	// PolicyProblems are the errors of policy objects whose last good
	// version the snapshot holds instead (Effect says so): authz.Compile
	// cannot see them, so they are reported beside its own diagnostics.
	PolicyProblems []authz.Diagnostic
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
}

// Source publishes snapshots. Run calls publish with a complete snapshot each
// time the state changes, until ctx is done; publish must not block for long.
type Source interface {
	Run(ctx context.Context, publish func(*Snapshot)) error
}
