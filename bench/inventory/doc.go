// Package inventory measures what the cluster's size costs a Ferry agent
// (memory, start-up sync, policy enforcement latency) in Kubernetes mode and
// in xDS mode against a real API server and istiod: TestPrivilegedInventoryScale,
// run small by make test and at 1k/10k/100k pods by scripts/bench-inventory.
package inventory
