// Package kubenode runs a real Kubernetes node on this machine for tests
// and demos: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kube-proxy in nftables mode, a private containerd with runc, a kubelet
// and the bridge CNI plugin, with the pods' traffic to each other routed
// through the node as on a routed CNI (nftRules says why) — Kubernetes
// 1.37.1 built by scripts/kube-test-binaries --node, containerd/runc/CNI
// from Debian. With Config.CNI = CNIMacvlan the pods are on macvlan
// instead, where their traffic to each other never crosses the node's IP
// stack (the CNIs Ferry's node-level capture cannot serve).
// scripts/kube-node (up|down|status) is a thin command line over it.
//
// Everything listens on loopback or on the node's address GatewayIP
// (198.18.64.1, on the bridge Bridge); pods get addresses from PodCIDR (or
// MacvlanCIDR) and Services from ServiceCIDR, all inside 198.18.0.0/15 and
// clear of the netns testbed's ranges. The "kubernetes" Service works (kube-proxy sends
// it to the API server on GatewayIP).
//
// Cluster DNS: the kubelet gives pods (and hostNetwork pods with dnsPolicy
// ClusterFirstWithHostNet) the nameserver DNSAddr on GatewayIP, where
// ServeDNS answers Service names (NAME.NAMESPACE.svc.cluster.local) while
// the caller runs it; there is no CoreDNS.
//
// The kubelet runs in a cgroup v2 directory of its own, KubeletCgroup,
// from its first instruction, as systemd runs a node's kubelet in
// kubelet.service: deploy/'s agent attaches its probe program
// there (--probe-cgroup, which Overlay points at it), so that the kubelet's
// health probes, and no other process's connections, leave from the probe
// source address.
//
// It changes no host-wide setting that other processes rely on:
//   - no net.ipv4.ip_forward: forwarding is enabled on the bridge alone (the
//     input interface's setting decides), and table inet ferry-kubenode
//     forwards nothing between the bridge and any other interface, so pods
//     reach only each other and the node;
//   - no iptables: the kubelet runs with makeIPTablesUtilChains false (no
//     KUBE-FIREWALL), kube-proxy in nftables mode in its own tables, told
//     to leave the conntrack sysctls alone;
//   - no kernel tunables: the kubelet would set vm.overcommit_memory,
//     kernel.panic and kernel.panic_on_oops at start; it runs in a mount
//     namespace of its own where those files are copies;
//   - no host mounts: the node's bpffs is its own, under Dir, made shared
//     there (the host's /sys/fs/bpf is left as it is);
//   - its own containerd root, state, socket and configuration under Dir,
//     and its own CNI configuration and plugin directories (CNIConfDir,
//     CNIBinDir: links to Debian's plugins, which stay as they are).
//
// Ownership: the bridge, the macvlan parent, the nft tables ferry-kubenode
// and kube-proxy, the cgroup ferry-kubenode under each hierarchy (the
// kubelet's kubepods live below it, and in the cgroup v2 hierarchy the
// kubelet itself, in KubeletCgroup), every mount under Dir and the
// processes Up records belong to this package; Down removes them all, even
// after a failed Up, and only them. Only one node can exist on a machine at a time: Up returns
// ErrLeftovers while another's objects exist.
//
// Images have no registry: WriteImage writes a one-layer docker-archive
// from files (a static binary built with BuildStatic) and
// Node.ImportImage loads it into the node's containerd.
package kubenode
