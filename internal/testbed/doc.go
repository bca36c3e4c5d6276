// Package testbed builds a Kubernetes-shaped cluster out of network
// namespaces on one machine, for Ferry's demo, end-to-end tests, adversarial
// suite and benchmarks. It needs root.
//
//	fabric netns ── bridge br0 ──┬── node1 netns (eth0 198.18.0.1/24, ip_forward)
//	                             │     └── vpN ⇄ pod netns (eth0 198.18.1.x/32, default via 198.18.0.1 onlink)
//	                             └── node2 netns (eth0 198.18.0.2/24) ...
//
// Node k owns the pod CIDR 198.18.k.0/24; every node routes the others'
// CIDRs via their node IPs; each pod gets a /32 and a /32 host route on its
// node (like the ptp CNI). Only 198.18.0.0/15 is used, nothing is routed
// from the root netns, and no host-wide setting changes: ip_forward is set
// inside node namespaces only.
//
// That is LayoutFabric, the default. Config.Layout = LayoutDirect builds the
// shape ferrybench measures in instead: two nodes joined by one veth pair,
// and pods as /32 addresses on their node's lo, sharing its namespace.
//
//	node1 netns (eth0 198.18.0.1/24) ⇄ node2 netns (eth0 198.18.0.2/24)
//	  └── lo: pods 198.18.1.x/32          └── lo: pods 198.18.2.x/32
//
// A packet from a pod on node1 to a pod on node2 crosses that one veth and
// nothing else: no bridge, no pod veth, no forwarding (ip_forward stays off).
// The nodes, their addresses and routes, and the pods' addresses are as in
// LayoutFabric. Since a pod shares its node's namespace, a pod server (when
// there is one) listens on the pod's address only, and a client must bind
// the pod's address to be seen as the pod. Up starts no agents in this
// layout (NoMesh): Ferry's redirection works on pod namespaces; ferrybench
// runs its own agents.
//
// Every object is named after a per-run prefix (ftbXXXXXX): netns
// "<prefix>-fabric", "<prefix>-node<k>", "<prefix>-pod-<ns>-<name>", BPF pin
// directories "/sys/fs/bpf/<prefix>-node<k>", a registry entry
// /run/ferry-testbed/<prefix> holding the run directory and, with capture
// pod, a cgroup v2 mount /run/ferry-testbed-cgroups/<prefix> holding each
// node's kubelet cgroup (Probe runs commands there). Teardown finds them
// by that prefix, so it also cleans up after a killed run.
//
// The run directory holds testbed.json (the Testbed value, which tests read
// back with Load), testbed.env (the same for shell scripts), manifests/ (the
// agents' inventory: Namespaces and Pods; add policies there), ca/, logs/
// (one file per pod and agent) and pids/.
//
// Up builds a testbed and returns it; Testbed's methods start, stop and wait
// for agents; Down and Teardown remove everything; Leftovers lists what a
// prefix still owns. cmd/testbed is the command-line front end that
// scripts/testbed runs.
package testbed
