// Package cni tells the node agent about each new pod's network namespace
// before the pod's containers start, as istio-cni does for ztunnel. It holds
// both ends of a small node-local protocol and the chained CNI plugin that
// speaks it:
//
//   - the agent side: a [Server] that calls the agent's [Hooks] for each pod
//     added or deleted, listening on a 0600 unix socket made by [Listen];
//   - the plugin side: a [Client], and [RunPlugin], the ferry-cni plugin that
//     the container runtime runs last in the node's network configuration
//     list, after the network plugin has set up the pod;
//   - [Install] and [Uninstall], which put the plugin's binary and its entry in
//     the node's CNI configuration, and take exactly those out again.
//
// The protocol is HTTP/1.1 over the unix socket with JSON bodies, so curl can
// speak it:
//
//	curl --unix-socket /var/run/ferry/cni.sock -d @pod.json http://ferry/v1/pods/add
//
// POST /v1/pods/add and /v1/pods/del carry one [Pod]; GET /v1/health answers
// 204 when the agent serves. Success is 204; a failure is a non-2xx status
// with a JSON body {"error": "..."} whose message the plugin hands the runtime
// unchanged, prefixed with the pod's name.
//
// The plugin fails closed. Istio's plugin fails the sandbox of an ambient pod
// when its node agent is unreachable; this plugin cannot know whether a pod is
// enrolled without the agent, so it fails the ADD of every Kubernetes pod
// outside the excluded namespaces (kube-system by default) until the agent is
// back, and the runtime retries the sandbox. Pods outside Kubernetes (no
// K8S_POD_* arguments) pass through untouched, and DEL never fails.
package cni
