// Command kubedemo is `make demo`'s mTLS migration walkthrough on a real
// Kubernetes node (internal/kubenode): Ferry installed from deploy/ (in-pod
// capture; with --capture node, deploy/capture-node) as users install it,
// Istio's httpbin and curl pods in namespaces foo and bar
// (ambient) and legacy (not), every request made with `kubectl exec` through
// the Services' names, and policies applied through the API. It checks every
// expectation, exits non-zero if one fails, and removes everything it made.
// scripts/demo-kube builds what it needs and runs it; `make demo-kube` runs
// that (`make demo-kube CAPTURE=node` in node mode).
package main
