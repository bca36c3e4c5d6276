package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
)

// Config says what Up builds.
type Config struct {
	// Prefix names every object of the run: "ftb" and six hex digits.
	// Empty means a random one.
	Prefix string
	// RunDir is the run directory. Empty means RunRoot/<prefix>, which Down
	// then removes (unless it keeps the logs).
	RunDir string
	// Nodes is the number of nodes; the spec may ask for more. 0 means as
	// many as the spec uses.
	Nodes int
	// Spec lists the namespaces and pods; see ParseSpec and DefaultSpec.
	Spec Spec
	// Layout is how nodes and pods are wired; empty means LayoutFabric.
	Layout Layout
	// NoMesh starts no agents (they may be started later with StartAgent
	// when Ferry is set).
	NoMesh bool
	// Redirect is the agents' --redirect mode; empty means "ebpf".
	Redirect string
	// Capture is the agents' --capture mode: "node" (empty) or "pod". The
	// testbed's pods sit behind veths on routed nodes, which node capture
	// serves, so node stays its default although the agent's is pod; the
	// agents are always given the mode. In pod mode each agent listens for the ferry-cni plugin, and Up, acting
	// as the container runtime, runs the plugin for every pod once the
	// agents are ready (Testbed.CNI).
	Capture string
	// LogLevel is the agents' --log-level; empty means "info".
	LogLevel string
	// AgentArgs are more arguments for every agent.
	AgentArgs []string
	// Ferry and Podapp are the binaries to run. Ferry may be empty with
	// NoMesh. Podapp empty means the pods run no server: their addresses
	// route all the same (ferrybench brings its own servers).
	Ferry, Podapp string
	// ReadyTimeout bounds the wait for each agent to be ready; 0 means 30 s.
	ReadyTimeout time.Duration
	// KeepOnFailure leaves a half-built testbed in place when Up fails, for
	// inspection; by default Up tears it down (keeping the logs).
	KeepOnFailure bool
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Layout is how a testbed wires its nodes and pods.
type Layout string

const (
	// LayoutFabric puts the nodes on a bridge in a fabric namespace and each
	// pod in a namespace of its own behind a veth to its node, like a
	// cluster with a ptp CNI. Any number of nodes.
	LayoutFabric Layout = "fabric"
	// LayoutDirect joins two nodes by one veth pair, with no fabric, and
	// makes each pod a /32 address on its node's lo, in the node's
	// namespace: the fewest hops a pod-to-pod path across two nodes can
	// take, for benchmarks. Exactly two nodes, and no agents (NoMesh).
	LayoutDirect Layout = "direct"
)

// PrefixRE matches a testbed prefix.
var PrefixRE = regexp.MustCompile(`^ftb[0-9a-f]{6}$`)

// NewPrefix returns a random testbed prefix.
func NewPrefix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "ftb" + hex.EncodeToString(b)
}

func (c *Config) validate() error {
	if c.Prefix == "" {
		c.Prefix = NewPrefix()
	}
	if !PrefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("testbed: bad prefix %s (want ftb + 6 hex digits)", c.Prefix)
	}
	if err := c.Spec.check(); err != nil {
		return err
	}
	c.Nodes = max(c.Nodes, c.Spec.maxNode())
	switch c.Layout {
	case "", LayoutFabric:
		c.Layout = LayoutFabric
		if c.Nodes > 250 {
			return fmt.Errorf("testbed: %d nodes; at most 250", c.Nodes)
		}
	case LayoutDirect:
		if c.Nodes > 2 {
			return fmt.Errorf("testbed: %d nodes; layout direct has two", c.Nodes)
		}
		if !c.NoMesh {
			return errors.New("testbed: layout direct runs no agents (set NoMesh)")
		}
		c.Nodes = 2
	default:
		return fmt.Errorf("testbed: unknown layout '%s' (fabric, direct)", c.Layout)
	}
	if c.Redirect == "" {
		c.Redirect = "ebpf"
	}
	switch c.Capture {
	case "":
		c.Capture = "node"
	case "node", "pod":
	default:
		return fmt.Errorf("testbed: unknown capture '%s' (node, pod)", c.Capture)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 30 * time.Second
	}
	if c.Ferry == "" && !c.NoMesh {
		return errors.New("testbed: no ferry binary")
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// Up builds a testbed: the nodes (and the fabric), the pods with their
// servers answering (unless Podapp is empty), and (unless NoMesh) the
// agents, ready. If it fails, it removes whatever it made (unless
// KeepOnFailure), keeping the logs.
func Up(ctx context.Context, cfg Config) (*Testbed, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if left := Leftovers(cfg.Prefix); len(left) > 0 {
		return nil, fmt.Errorf("testbed: %s already exists", cfg.Prefix)
	}
	tb, err := up(ctx, cfg)
	if err != nil && tb != nil {
		if cfg.KeepOnFailure {
			fmt.Fprintf(cfg.Log, "testbed: up failed; left %s in place for inspection (testbed down --prefix %s)\n", cfg.Prefix, cfg.Prefix)
		} else {
			fmt.Fprintf(cfg.Log, "testbed: up failed; tearing %s down (logs kept in %s)\n", cfg.Prefix, tb.path("logs"))
			err = errors.Join(err, Teardown(cfg.Prefix, tb.RunDir, true, cfg.Log))
		}
	}
	return tb, err
}

func up(ctx context.Context, cfg Config) (*Testbed, error) {
	dir, owned := cfg.RunDir, false
	if dir == "" {
		dir, owned = filepath.Join(RunRoot, cfg.Prefix), true
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"state", "logs", "pids", "manifests"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("testbed: %w", err)
		}
	}
	tb := &Testbed{
		Prefix: cfg.Prefix, RunDir: dir, Layout: cfg.Layout, Mesh: !cfg.NoMesh, Redirect: cfg.Redirect,
		Capture: cfg.Capture, LogLevel: cfg.LogLevel, AgentArgs: cfg.AgentArgs,
		Manifests: filepath.Join(dir, "manifests"),
		CACert:    filepath.Join(dir, "ca", "root-cert.pem"), CAKey: filepath.Join(dir, "ca", "root-key.pem"),
		Ferry: cfg.Ferry, Podapp: cfg.Podapp,
	}
	if tb.Layout == LayoutFabric {
		tb.FabricNetns, tb.FabricBridge = cfg.Prefix+"-fabric", Bridge
	}
	if owned {
		if err := os.WriteFile(tb.path("state", "owned"), nil, 0o644); err != nil {
			return tb, err
		}
	}
	if err := os.WriteFile(tb.path("state", "prefix"), []byte(cfg.Prefix+"\n"), 0o644); err != nil {
		return tb, err
	}
	if err := os.MkdirAll(Registry, 0o755); err != nil {
		return tb, err
	}
	if err := os.WriteFile(filepath.Join(Registry, cfg.Prefix), []byte(dir+"\n"), 0o644); err != nil {
		return tb, err
	}
	fmt.Fprintf(cfg.Log, "testbed: up %s: %d nodes, %d pods, layout %s, run dir %s\n", cfg.Prefix, cfg.Nodes, len(cfg.Spec.Pods), cfg.Layout, dir)
	if tb.Layout == LayoutDirect {
		err = tb.buildDirect()
	} else {
		err = tb.buildFabric(cfg.Nodes)
	}
	if err != nil {
		return tb, err
	}
	if err := tb.buildPods(cfg.Spec); err != nil {
		return tb, err
	}
	if tb.Capture == "pod" {
		if err := tb.makeKubeletCgroups(); err != nil {
			return tb, err
		}
	}
	if err := tb.writeManifests(cfg.Spec); err != nil {
		return tb, err
	}
	if err := tb.save(); err != nil {
		return tb, err
	}
	if tb.Podapp != "" {
		for _, p := range tb.Pods {
			if err := tb.startPod(p); err != nil {
				return tb, err
			}
		}
		for _, p := range tb.Pods {
			if err := tb.waitServing(ctx, p, 10*time.Second); err != nil {
				return tb, err
			}
		}
	}
	if tb.Mesh {
		for _, n := range tb.Nodes {
			if err := tb.StartAgent(n.Name); err != nil {
				return tb, err
			}
		}
		for _, n := range tb.Nodes {
			if err := tb.WaitReady(ctx, n.Name, cfg.ReadyTimeout); err != nil {
				return tb, err
			}
		}
		if tb.Capture == "pod" {
			for _, p := range tb.Pods {
				if err := tb.CNI(ctx, "ADD", p); err != nil {
					return tb, err
				}
			}
		}
	}
	fmt.Fprintf(cfg.Log, "testbed: up %s: ready (mesh=%v); %s, %s\n", tb.Prefix, tb.Mesh, tb.path("testbed.json"), tb.path("testbed.env"))
	return tb, nil
}

// buildFabric makes the nodes of LayoutFabric: the fabric namespace with
// its bridge, and each node with its eth0 on the bridge.
func (tb *Testbed) buildFabric(nodes int) error {
	fabric, err := addNetns(tb.FabricNetns, "net/ipv6/conf/all/disable_ipv6")
	if err != nil {
		return err
	}
	defer fabric.close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
	if err := fabric.h.LinkAdd(br); err != nil {
		return fmt.Errorf("testbed: add %s: %w", Bridge, err)
	}
	if err := fabric.h.LinkSetUp(br); err != nil {
		return fmt.Errorf("testbed: set %s up: %w", Bridge, err)
	}
	for k := 1; k <= nodes; k++ {
		n := tb.newNode(k)
		err := func() error {
			// ip_forward: the node routes between its pods and the fabric.
			node, err := addNetns(n.Netns, "net/ipv4/ip_forward", "net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6")
			if err != nil {
				return err
			}
			defer node.close()
			eth0, err := fabric.veth(n.Name, br.Index, node, "eth0")
			if err != nil {
				return err
			}
			return node.routeNode(eth0, k, nodes)
		}()
		if err != nil {
			return fmt.Errorf("testbed: %s: %w", n.Name, err)
		}
		tb.Nodes = append(tb.Nodes, n)
	}
	return nil
}

// buildDirect makes the two nodes of LayoutDirect, joined by one veth pair,
// eth0 on each side. They forward nothing: their pods are local addresses.
func (tb *Testbed) buildDirect() error {
	var nodes [2]*nsLinks
	for i := range nodes {
		n := tb.newNode(i + 1)
		l, err := addNetns(n.Netns, "net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6")
		if err != nil {
			return fmt.Errorf("testbed: %s: %w", n.Name, err)
		}
		defer l.close()
		nodes[i] = l
		tb.Nodes = append(tb.Nodes, n)
	}
	eth0b, err := nodes[0].veth("eth0", 0, nodes[1], "eth0")
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	eth0a, err := nodes[0].h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	for i, eth0 := range []netlink.Link{eth0a, eth0b} {
		if err := nodes[i].routeNode(eth0, i+1, 2); err != nil {
			return fmt.Errorf("testbed: %s: %w", tb.Nodes[i].Name, err)
		}
	}
	return nil
}

// newNode describes node k: its address 198.18.0.k and its pod CIDR
// 198.18.k.0/24.
func (tb *Testbed) newNode(k int) Node {
	n := Node{
		Name: fmt.Sprintf("node%d", k), Netns: fmt.Sprintf("%s-node%d", tb.Prefix, k),
		IP: fmt.Sprintf("198.18.0.%d", k), PodCIDR: fmt.Sprintf("198.18.%d.0/24", k),
		PinDir: filepath.Join(BPFFS, fmt.Sprintf("%s-node%d", tb.Prefix, k)),
	}
	n.AgentLog = tb.path("logs", "agent-"+n.Name+".log")
	return n
}

// routeNode gives node k its address on eth0, sets eth0 up, and routes the
// other nodes' pod CIDRs via their node addresses.
func (node *nsLinks) routeNode(eth0 netlink.Link, k, nodes int) error {
	ip := fmt.Sprintf("198.18.0.%d", k)
	if err := node.h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(ip), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return fmt.Errorf("address %s: %w", ip, err)
	}
	if err := node.h.LinkSetUp(eth0); err != nil {
		return err
	}
	for o := 1; o <= nodes; o++ {
		if o == k {
			continue
		}
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: mustCIDR(fmt.Sprintf("198.18.%d.0/24", o)), Gw: net.ParseIP(fmt.Sprintf("198.18.0.%d", o))}
		if err := node.h.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s: %w", r.Dst, err)
		}
	}
	return nil
}

// buildPods makes the pods. In LayoutFabric each gets a namespace wired to
// its node like the ptp CNI: a /32 on eth0, a link route to the node and a
// default route through it, and a /32 host route on the node's side. In
// LayoutDirect each is a /32 on its node's lo.
func (tb *Testbed) buildPods(spec Spec) error {
	next := map[string]int{} // per node: pods so far
	for _, ps := range spec.Pods {
		k, _ := strconv.Atoi(strings.TrimPrefix(ps.Node, "node"))
		next[ps.Node]++
		i := next[ps.Node]
		if i > 253 {
			return fmt.Errorf("testbed: %s: more than 253 pods", ps.Node)
		}
		p := Pod{
			Namespace: ps.Namespace, Name: ps.Name, ServiceAccount: ps.ServiceAccount, Labels: ps.Labels,
			Node: ps.Node, IP: fmt.Sprintf("198.18.%d.%d", k, i+1), Netns: tb.Prefix + "-pod-" + ps.Namespace + "-" + ps.Name,
			Enrolled: spec.enrolled(ps), NodeIface: fmt.Sprintf("vp%d", i),
			Log: tb.path("logs", "pod-"+ps.Namespace+"-"+ps.Name+".log"),
		}
		var err error
		if tb.Layout == LayoutDirect {
			p.Netns, p.NodeIface = fmt.Sprintf("%s-node%d", tb.Prefix, k), "lo"
			err = addPodAddr(p)
		} else {
			err = tb.buildPod(p, k)
		}
		if err != nil {
			return fmt.Errorf("testbed: pod %s: %w", p, err)
		}
		tb.Pods = append(tb.Pods, p)
	}
	return nil
}

// addPodAddr puts the pod's address on its node's lo (LayoutDirect).
func addPodAddr(p Pod) error {
	node, err := openLinks(p.Netns)
	if err != nil {
		return err
	}
	defer node.close()
	lo, err := node.h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := node.h.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(p.IP)}); err != nil {
		return fmt.Errorf("address %s: %w", p.IP, err)
	}
	return nil
}

func (tb *Testbed) buildPod(p Pod, k int) error {
	node, err := openLinks(fmt.Sprintf("%s-node%d", tb.Prefix, k))
	if err != nil {
		return err
	}
	defer node.close()
	pod, err := addNetns(p.Netns, "net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6")
	if err != nil {
		return err
	}
	defer pod.close()
	eth0, err := node.veth(p.NodeIface, 0, pod, "eth0")
	if err != nil {
		return err
	}
	gw := net.ParseIP(fmt.Sprintf("198.18.0.%d", k))
	if err := pod.h.AddrAdd(eth0, &netlink.Addr{IPNet: hostNet(p.IP)}); err != nil {
		return fmt.Errorf("address %s: %w", p.IP, err)
	}
	if err := pod.h.LinkSetUp(eth0); err != nil {
		return err
	}
	idx := eth0.Attrs().Index
	if err := pod.h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostNet(gw.String()), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to %s: %w", gw, err)
	}
	if err := pod.h.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw, Flags: int(netlink.FLAG_ONLINK)}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	vp, err := node.h.LinkByName(p.NodeIface)
	if err != nil {
		return err
	}
	if err := node.h.RouteAdd(&netlink.Route{LinkIndex: vp.Attrs().Index, Dst: hostNet(p.IP), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("host route on %s: %w", p.Node, err)
	}
	return nil
}

// nsLinks is a netlink handle on a named namespace.
type nsLinks struct {
	name string
	ns   *netns.NetNS
	h    *netlink.Handle
}

// addNetns creates the named namespace (as `ip netns add` does), sets lo
// up and writes 1 to each of the namespace's sysctls (paths under
// /proc/sys).
func addNetns(name string, sysctls ...string) (*nsLinks, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	l, err := openLinks(name)
	if err != nil {
		return nil, err
	}
	err = l.ns.Do(func() error {
		for _, s := range sysctls {
			if err := os.WriteFile(filepath.Join("/proc/sys", s), []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		var lo netlink.Link
		if lo, err = l.h.LinkByName("lo"); err == nil {
			err = l.h.LinkSetUp(lo)
		}
	}
	if err != nil {
		l.close()
		return nil, fmt.Errorf("testbed: netns %s: %w", name, err)
	}
	return l, nil
}

func openLinks(name string) (*nsLinks, error) {
	ns, err := netns.OpenNamed(name)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.FD()))
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("testbed: netlink in %s: %w", name, err)
	}
	return &nsLinks{name: name, ns: ns, h: h}, nil
}

func (l *nsLinks) close() {
	l.h.Close()
	l.ns.Close()
}

// veth adds a veth pair: name here, set up (and enslaved to master when
// not 0), and peer in the namespace of to. It returns the peer, still down.
func (l *nsLinks) veth(name string, master int, to *nsLinks, peer string) (netlink.Link, error) {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: master}, PeerName: peer,
		PeerNamespace: netlink.NsFd(to.ns.FD())}
	if err := l.h.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("veth %s/%s ⇄ %s/%s: %w", l.name, name, to.name, peer, err)
	}
	if err := l.h.LinkSetUp(v); err != nil {
		return nil, err
	}
	return to.h.LinkByName(peer)
}

func hostNet(ip string) *net.IPNet {
	return &net.IPNet{IP: net.ParseIP(ip).To4(), Mask: net.CIDRMask(32, 32)}
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// ensureBPFFS mounts a bpffs on BPFFS when none is there; it never remounts
// an existing one.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, ""); err != nil {
		return fmt.Errorf("testbed: mount bpffs on %s: %w", BPFFS, err)
	}
	return nil
}
