// Package kubepki makes the key material of the Kubernetes clusters Ferry's
// tests run: internal/kubetest's API server and internal/kubenode's node.
package kubepki
