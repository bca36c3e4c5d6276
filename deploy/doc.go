// Package deploy holds Ferry's Kubernetes manifests and embeds them, so tests
// (and tools) can apply exactly the files an operator applies with
// `kubectl apply -k deploy/`.
//
// Layout: kustomization.yaml (everything), crds/ (security.istio.io
// AuthorizationPolicy and PeerAuthentication, for clusters without Istio) and
// base/ (namespace, RBAC, the agent DaemonSet, the CA Deployment and Service).
// README.md explains the choices (capabilities, RBAC, upgrade strategy).
package deploy
