// Package node is the Ferry agent: it wires inventory (local manifests or
// Kubernetes), certificates, policy, redirection and the tunnel together, and
// serves the admin, metrics and readiness endpoints.
package node
