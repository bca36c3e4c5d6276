package kubenode

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"
)

// The node's fixed names and addresses. Only one node runs on a machine at a
// time (Up refuses to start over another one's objects): these names are
// what Down removes, so they are owned by this package alone.
const (
	// NodeName is the Node object's name and the kubelet's hostname override.
	NodeName = "ferry-kubenode"
	// Bridge is the pods' bridge; it carries GatewayIP, the node's address.
	Bridge = "ferrykn0"
	// Table names the nft tables this package owns (families bridge and
	// inet); kube-proxy owns its own "kube-proxy" tables.
	Table = "ferry-kubenode"
	// CgroupRoot is the kubelet's cgroupRoot, made under every cgroup
	// hierarchy: the kubelet's kubepods and every container live below it.
	CgroupRoot = "ferry-kubenode"
	// CNINetwork is the CNI network name (also the prefix of libcni's
	// cache files in /var/lib/cni/results).
	CNINetwork = "ferry-kubenode"
	// PauseImage is the sandbox image Up builds from Config.PauseBinary.
	PauseImage = "ferry.test/pause:1"
	// APIServerPort is kube-apiserver's port on GatewayIP.
	APIServerPort = 6443
	// KubeletPort is the kubelet's port on GatewayIP.
	KubeletPort = 10250
	// DefaultDir is where scripts/kube-node keeps a node's state.
	DefaultDir = "/var/lib/ferry-kubenode"
	// MacvlanParent is the interface the macvlan CNI (Config.CNI) hangs
	// the pods' interfaces on: a veth without an address whose peer is
	// alone in a namespace of the node's. It leads nowhere: pods reach
	// each other through it, in macvlan's bridge mode, and nothing else.
	MacvlanParent = "ferrykn-mv0"
)

// The node's network plugins (Config.CNI), from the containernetworking
// plugins package.
const (
	// CNIBridge puts pods on Bridge, their IPv4 traffic to each other
	// routed through the node (nftRules), as on a routed CNI.
	CNIBridge = "bridge"
	// CNIMacvlan gives each pod a macvlan interface on MacvlanParent, in
	// bridge mode, with an address in MacvlanCIDR: pods talk to each other
	// without the node's IP stack seeing a packet, as on the CNIs Ferry's
	// node-level capture cannot serve (README, Limits). The node cannot
	// reach its pods either (macvlan isolates the parent's namespace from
	// its children): no probes, no Services from the node, no cluster DNS
	// for them.
	CNIMacvlan = "macvlan"
)

// Addresses: all inside 198.18.0.0/15 and clear of the netns testbed's
// 198.18.0.0/24 and 198.18.k.0/24 (k = node number).
var (
	// PodCIDR is the pods' range; GatewayIP (its first address) is on Bridge.
	PodCIDR = netip.MustParsePrefix("198.18.64.0/20")
	// GatewayIP is the node's address: kube-apiserver, the kubelet and the
	// pods' default gateway.
	GatewayIP = netip.MustParseAddr("198.18.64.1")
	// ServiceCIDR is the ClusterIP range; its first address is the
	// "kubernetes" Service, which kube-proxy sends to kube-apiserver.
	ServiceCIDR = netip.MustParsePrefix("198.19.128.0/20")
	// MacvlanCIDR is the pods' range with CNIMacvlan. No address of the
	// node is in it.
	MacvlanCIDR = netip.MustParsePrefix("198.18.80.0/20")
)

// Config configures a Node.
type Config struct {
	// Dir holds everything the node writes: certificates, configurations,
	// logs (Dir/logs/NAME.log), etcd's data, containerd's root and state,
	// the kubelet's root, the pods' logs and the node's bpffs
	// (Dir/bpffs). It must be absolute; Up bind-mounts it on itself as a
	// shared mount, and Down removes everything below it and the directory.
	// Empty means DefaultDir.
	Dir string
	// BinDir holds etcd, kube-apiserver, kubelet, kube-controller-manager,
	// kube-scheduler and kube-proxy (scripts/kube-test-binaries --node).
	// Up needs it; Down does not.
	BinDir string
	// PauseBinary is a static executable that sleeps until SIGTERM
	// (internal/kubenode/pause), the sandbox image's only file. Up needs it.
	PauseBinary string
	// CNI is the pods' network plugin: CNIBridge or CNIMacvlan. Empty
	// means CNIBridge.
	CNI string
	// ReadyTimeout bounds Up's wait for the Node to be Ready. 0 means 3
	// minutes.
	ReadyTimeout time.Duration
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if !filepath.IsAbs(c.Dir) {
		return errors.New("kubenode: Config.Dir must be an absolute path")
	}
	c.Dir = filepath.Clean(c.Dir)
	if c.Dir == "/" {
		return errors.New("kubenode: Config.Dir must not be /")
	}
	switch c.CNI {
	case "":
		c.CNI = CNIBridge
	case CNIBridge, CNIMacvlan:
	default:
		return fmt.Errorf("kubenode: Config.CNI %q: want %s or %s", c.CNI, CNIBridge, CNIMacvlan)
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 3 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
