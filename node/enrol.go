package node

import "github.com/ferrymesh/ferry/node/inventory"

// Labels and annotations Ferry reads and writes, as Istio names them.
const (
	// DataplaneModeLabel enrols a namespace or a pod ("ambient") or opts a pod out ("none").
	DataplaneModeLabel = "istio.io/dataplane-mode"
	// SidecarStatusAnnotation marks a pod with an injected sidecar: never enrolled.
	SidecarStatusAnnotation = "sidecar.istio.io/status"
	// RedirectionAnnotation is set to "enabled" on a pod once its traffic is captured.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	// AgentAppLabel identifies the agent's own pods (label app=ferry in the system namespace).
	AgentAppLabel = "app"
)

// Enrolled reports whether pod belongs in the ambient mesh, by Istio's rules:
// a pod labelled ambient is enrolled in any namespace; a namespace labelled
// ambient enrols its pods unless the pod says none; hostNetwork pods, pods with
// an injected sidecar, and the agent's own pods never are. ns may be the zero
// Namespace when the pod's namespace is unknown.
func Enrolled(pod inventory.Pod, ns inventory.Namespace, systemNamespace string) bool {
	if pod.HostNetwork || !pod.IP.IsValid() {
		return false
	}
	if _, ok := pod.Annotations[SidecarStatusAnnotation]; ok {
		return false
	}
	if pod.Namespace == systemNamespace && pod.Labels[AgentAppLabel] == "ferry" {
		return false
	}
	switch pod.Labels[DataplaneModeLabel] {
	case "ambient":
		return true
	case "none":
		return false
	}
	return ns.Labels[DataplaneModeLabel] == "ambient"
}
