// Package xds makes istiod Ferry's control plane: a Source that reads the
// mesh (pods, Services, AuthorizationPolicies as istiod translates them) from
// istiod's workload xDS, the Delta ADS stream ztunnel uses, and the node's own
// pods from a local source.
package xds
