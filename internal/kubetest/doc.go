// Package kubetest runs a real kube-apiserver and etcd on loopback for
// Ferry's Kubernetes integration tests: no kubelet, no controller manager, no
// fake clientset.
//
// Start(t) provisions the binaries (scripts/kube-test-binaries builds
// kube-apiserver from k8s.io/kubernetes through the Go module proxy on first
// use and caches it; set FERRY_KUBE_ASSETS to a directory holding etcd and
// kube-apiserver to use others), generates a CA, serving and client
// certificates and a service-account signing key, starts both processes on
// free loopback ports, installs Ferry's CRDs from deploy/, and stops and
// removes everything in t.Cleanup. What works without kubelet: Pods with
// spec.nodeName set and status patched through the status subresource,
// field selectors, RBAC, TokenRequest and TokenReview, CRDs.
//
// Render builds a kustomization of deploy/ (the subset of kustomize
// deploy/ uses: resources and strategic merge patches), so tests apply what
// `kubectl apply -k` applies, overlays included (ApplyDeployOverlay);
// deploy's TestRenderMatchesKustomize compares it with `kubectl kustomize`
// where kubectl is installed.
//
// Tests using it are named TestPrivileged*Kube* and gated by
// testutil.Privileged: they run in `make test-privileged` (CI, as root) and
// fail, not skip, when the binaries cannot be provisioned. A cold build takes
// 6–15 minutes on 2 cores: run scripts/kube-test-binaries first or give
// go test a -timeout of 30m.
package kubetest
