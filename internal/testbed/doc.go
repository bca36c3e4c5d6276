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
// Every object is named after a per-run prefix (ftbXXXXXX): netns
// "<prefix>-fabric", "<prefix>-node<k>", "<prefix>-pod-<ns>-<name>", BPF pin
// directories "/sys/fs/bpf/<prefix>-node<k>", and a registry entry
// /run/ferry-testbed/<prefix> holding the run directory. Teardown finds them
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
