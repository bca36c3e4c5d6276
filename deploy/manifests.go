package deploy

import (
	"embed"
	"io/fs"
)

//go:embed kustomization.yaml crds/*.yaml base/*.yaml
var manifests embed.FS

// FS returns the manifests, rooted at this directory: kustomization.yaml,
// crds/*.yaml and base/*.yaml. The returned file system is read-only and safe
// for concurrent use.
func FS() fs.FS { return manifests }

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
