package deploy

import (
	"embed"
	"io/fs"
)

//go:embed kustomization.yaml crds/*.yaml base/*.yaml istiod/*.yaml capture-node/*.yaml
var manifests embed.FS

// FS returns the manifests, rooted at this directory: kustomization.yaml,
// crds/*.yaml, base/*.yaml, istiod/*.yaml and capture-node/*.yaml. The returned file system is
// read-only and safe for concurrent use.
func FS() fs.FS { return manifests }

// IstiodOverlay is the directory, in FS, of the kustomize overlay that runs
// the agent in xDS mode beside an Istio ambient install: deploy/base with
// the agent pointed at istiod (control plane and CA) and its RBAC cut to
// what xDS mode reads, without the istio-system Namespace and without
// `ferry ca`. It has patches, so its objects are not files: render it (the
// tests use internal/kubetest.Render).
const IstiodOverlay = "istiod"

// CaptureNodeOverlay is the directory, in FS, of the kustomize overlay that
// runs the agent with --capture node: the default install (CRDs and
// deploy/base) with the agent capturing in the node's network namespace,
// for CNIs whose pod traffic crosses the node's routing, without the CNI
// plugin, SYS_ADMIN or the node's CNI, runtime and cgroup directories.
// Render it as IstiodOverlay.
const CaptureNodeOverlay = "capture-node"

// CRDFiles lists, in FS, the CustomResourceDefinitions Ferry reads: Istio's
// security.istio.io AuthorizationPolicy and PeerAuthentication.
func CRDFiles() []string {
	return []string{"crds/authorizationpolicies.yaml", "crds/peerauthentications.yaml"}
}

// Files lists every manifest in FS in the order `kubectl apply -k` applies
// them (CRDs, namespace, agent, CA). A test keeps it in step with the
// kustomization files.
func Files() []string {
	return append(CRDFiles(), "base/namespace.yaml", "base/agent.yaml", "base/ca.yaml")
}
