// Package inventory is what the agent knows about the cluster: namespaces, pods
// and Istio security policies, as one immutable Snapshot. Sources (a local
// manifests file or directory, or Kubernetes informers) publish whole snapshots.
package inventory
