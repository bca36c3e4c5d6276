// Package deploy holds Ferry's Kubernetes manifests and embeds them, so tests
// (and tools) can apply exactly the files an operator applies with
// `kubectl apply -k deploy/`.
//
// Layout: kustomization.yaml (everything), crds/ (security.istio.io
// AuthorizationPolicy and PeerAuthentication, for clusters without Istio),
// base/ (namespace, RBAC, the agent DaemonSet, the CA Deployment and Service)
// and istiod/ (an overlay of base: the agent in xDS mode beside an Istio
// ambient install, istiod as control plane and CA).
// README.md explains the choices (capabilities, RBAC, upgrade strategy).
package deploy
