package kubenode

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
)

// run runs a command and returns its error with its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// linkExists reports whether a network interface named name exists.
func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// BridgeMAC is Bridge's address, set when it is made: a bridge without one
// takes the lowest of its ports' addresses, which changes as pods come and
// go, and nftRules addresses frames to it.
const BridgeMAC = "02:66:72:6b:6e:30" // locally administered: "frkn0"

// rangesInUse names an address or route of this host inside one of ranges
// (default routes aside): the node's pod ranges must be the node's alone
// (nftRules tells the node's frames by PodCIDR's addresses).
func rangesInUse(ranges ...netip.Prefix) error {
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			return fmt.Errorf("kubenode: ip %s: %w", strings.Join(args, " "), err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, f := range strings.Fields(line) {
				p, err := netip.ParsePrefix(f)
				if err != nil {
					a, aerr := netip.ParseAddr(f)
					if aerr != nil {
						continue
					}
					p = netip.PrefixFrom(a, 32)
				}
				for _, r := range ranges {
					if p.Bits() > 0 && p.Overlaps(r) {
						return fmt.Errorf("kubenode: %v is in use on this host (%q); the node's pod range %v must be free", p, strings.TrimSpace(line), r)
					}
				}
			}
		}
	}
	return nil
}

// setupBridge creates Bridge with GatewayIP.
// Pods are bridge ports, but their IPv4 traffic to each other is routed
// through the node (nftRules), which needs IPv4 forwarding on the bridge:
// it is enabled on this interface alone (the input interface's setting
// decides), net.ipv4.ip_forward stays as it is, and the inet table of
// nftRules forwards nothing between the bridge and other interfaces.
func setupBridge() error {
	steps := [][]string{
		{"ip", "link", "add", Bridge, "address", BridgeMAC, "type", "bridge"},
		{"ip", "addr", "add", GatewayIP.String() + "/" + strconv.Itoa(PodCIDR.Bits()), "dev", Bridge},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("kubenode: bridge: %w", err)
		}
	}
	sysctls := map[string]string{
		"net/ipv4/conf/" + Bridge + "/forwarding":     "1",
		"net/ipv4/conf/" + Bridge + "/send_redirects": "0",
		"net/ipv6/conf/" + Bridge + "/disable_ipv6":   "1",
	}
	for k, v := range sysctls {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			return fmt.Errorf("kubenode: bridge: %w", err)
		}
	}
	if err := run("ip", "link", "set", Bridge, "up"); err != nil {
		return fmt.Errorf("kubenode: bridge: %w", err)
	}
	return nil
}

// macvlanPeer is the other end of MacvlanParent, a veth, in a network
// namespace of its own (bound at Dir/macvlan-peer.netns) where nothing
// else exists: frames the parent sends leave the node's network namespace
// and go nowhere. (A dummy interface would do, but kernels without
// CONFIG_DUMMY exist, this machine's among them.)
const macvlanPeer = "ferrykn-mvp"

// setupMacvlanParent creates MacvlanParent, up and without an address,
// its peer in the namespace bound at nsPath: macvlan needs a parent, and
// this one leads nowhere, so the pods (in macvlan's bridge mode) reach
// each other and nothing else.
func setupMacvlanParent(nsPath string) error {
	ns, err := netns.New()
	if err != nil {
		return fmt.Errorf("kubenode: macvlan parent: %w", err)
	}
	defer ns.Close()
	if err := os.WriteFile(nsPath, nil, 0o600); err != nil {
		return fmt.Errorf("kubenode: macvlan parent: %w", err)
	}
	if err := unix.Mount(ns.Path(), nsPath, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("kubenode: macvlan parent: bind its peer's namespace: %w", err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: MacvlanParent}, PeerName: macvlanPeer, PeerNamespace: netlink.NsFd(ns.FD())}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("kubenode: macvlan parent: %w", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+MacvlanParent+"/disable_ipv6", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("kubenode: macvlan parent: %w", err)
	}
	if err := ns.Do(func() error {
		peer, err := netlink.LinkByName(macvlanPeer)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(peer)
	}); err != nil {
		return fmt.Errorf("kubenode: macvlan parent's peer: %w", err)
	}
	if err := run("ip", "link", "set", MacvlanParent, "up"); err != nil {
		return fmt.Errorf("kubenode: macvlan parent: %w", err)
	}
	return nil
}

// nftRules are this package's own tables.
//
// The bridge table routes the pods' IPv4 traffic to each other through the
// node instead of switching it: every IPv4 frame a pod sends is addressed to
// the bridge itself, so the node's IP stack (kube-proxy's DNAT, routing,
// Ferry's capture) sees it, as on a routed CNI (Calico, Cilium's native
// routing, the AWS VPC CNI). ARP, broadcasts and frames already addressed
// to the bridge are left alone. Frames are told apart by their pod
// addresses (this kernel's nft has no bridge-name match), so Up refuses to
// start while PodCIDR is in use elsewhere on the host. A plain bridge
// would carry
// same-node pod traffic past any node-level capture (README, Limits).
//
// The inet table keeps pod traffic on the node even where forwarding is on
// host-wide (nothing is forwarded between Bridge and any other interface).
func nftRules() string {
	mac := BridgeMAC
	return `table bridge ` + Table + ` {
	chain prerouting {
		type filter hook prerouting priority -300; policy accept;
		ether type ip meta pkttype other ip saddr ` + PodCIDR.String() + ` ip daddr ` + PodCIDR.String() + ` ether daddr set ` + mac + ` meta pkttype set host
	}
}
table inet ` + Table + ` {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "` + Bridge + `" oifname != "` + Bridge + `" drop
		oifname "` + Bridge + `" iifname != "` + Bridge + `" drop
	}
}
`
}

func setupNFT(dir string) error {
	path := filepath.Join(dir, "nft.rules")
	if err := os.WriteFile(path, []byte(nftRules()), 0o600); err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	if err := run("nft", "-f", path); err != nil {
		return fmt.Errorf("kubenode: nft: %w", err)
	}
	return nil
}

// ownedTables are the nft tables Down deletes: ours, and kube-proxy's
// (named by kube-proxy's nftables README; only this node runs a
// kube-proxy here).
var ownedTables = [][2]string{
	{"bridge", Table},
	{"inet", Table},
	{"ip", "kube-proxy"}, {"ip6", "kube-proxy"},
}

// tablesPresent returns the owned tables that exist, as "family name".
func tablesPresent() []string {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil
	}
	var have []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "table" {
			continue
		}
		for _, t := range ownedTables {
			if f[1] == t[0] && f[2] == t[1] {
				have = append(have, f[1]+" "+f[2])
			}
		}
	}
	return have
}

// mount is one line of /proc/self/mountinfo: the mount point and the
// filesystem type.
type mount struct{ point, fstype string }

// mounts reads this process's mount table.
func mounts() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		line := sc.Text()
		i := strings.Index(line, " - ")
		if i < 0 {
			continue
		}
		fields, post := strings.Fields(line[:i]), strings.Fields(line[i+3:])
		if len(fields) < 5 || len(post) < 1 {
			continue
		}
		out = append(out, mount{point: unescapeMount(fields[4]), fstype: post[0]})
	}
	return out
}

// mountPoints returns the mount points at or below dir, deepest first.
func mountPoints(dir string) []string {
	var out []string
	for _, m := range mounts() {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll detaches every mount at or below dir, repeating while
// propagation leaves copies.
func unmountAll(dir string) error {
	for range 20 {
		mps := mountPoints(dir)
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if mps := mountPoints(dir); len(mps) > 0 {
		return fmt.Errorf("kubenode: still mounted: %s", strings.Join(mps, ", "))
	}
	return nil
}

// cgroupMounts returns the mount points of the cgroup hierarchies (v1
// controllers, named ones and the v2 unified hierarchy).
func cgroupMounts() []string {
	var out []string
	for _, m := range mounts() {
		if (m.fstype == "cgroup" || m.fstype == "cgroup2") && !slices.Contains(out, m.point) {
			out = append(out, m.point)
		}
	}
	return out
}

// cgroup2Root returns the mount point of the cgroup v2 hierarchy
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified beside v1 controllers), or ""
// if none is mounted.
func cgroup2Root() string {
	var found string
	for _, m := range mounts() {
		if m.fstype != "cgroup2" {
			continue
		}
		if m.point == "/sys/fs/cgroup" || m.point == "/sys/fs/cgroup/unified" {
			return m.point
		}
		if found == "" {
			found = m.point
		}
	}
	return found
}

// setupCgroups makes CgroupRoot in every hierarchy (the kubelet requires
// its cgroupRoot to exist) and gives the cpuset one its parent's CPUs and
// memory nodes (a v1 cpuset is empty when made).
func setupCgroups() error {
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, CgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("kubenode: cgroup: %w", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(m, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
				return fmt.Errorf("kubenode: cgroup: %w", err)
			}
		}
	}
	return nil
}

// cgroupsPresent returns CgroupRoot's directories that exist.
func cgroupsPresent() []string {
	var out []string
	for _, m := range cgroupMounts() {
		d := filepath.Join(m, CgroupRoot)
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// killCgroupProcs SIGKILLs every process in CgroupRoot's trees (the pods'
// containers, whatever their process groups) and reports how many it saw.
func killCgroupProcs() int {
	n := 0
	for _, d := range cgroupsPresent() {
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					n++
				}
			}
			return nil
		})
	}
	return n
}

// removeCgroups removes CgroupRoot's trees, deepest first, killing what
// still runs in them, until they are gone or timeout passes.
func removeCgroups(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		killCgroupProcs()
		var left []string
		for _, d := range cgroupsPresent() {
			var dirs []string
			_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
				if err == nil && e.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
			for _, p := range dirs {
				if err := unix.Rmdir(p); err != nil && !errors.Is(err, unix.ENOENT) {
					left = append(left, p)
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubenode: cgroups not removable: %s", strings.Join(left, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kernelTunables are the sysctls the kubelet sets host-wide at start
// (vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1, ...)
// with the values it wants. The kubelet runs in a mount namespace of its
// own where these files are bind-mounted over with copies holding those
// values, so it finds nothing to change and the host keeps its settings.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// kubeletWrapper returns the command that runs the kubelet in its own
// mount namespace (propagation unchanged: Dir is shared, so the volumes
// it mounts below Dir reach containerd) over the tunables' copies in
// dir/sysctl.
func kubeletWrapper(dir, kubelet string, args []string) (string, []string, error) {
	sd := filepath.Join(dir, "sysctl")
	if err := os.MkdirAll(sd, 0o755); err != nil {
		return "", nil, fmt.Errorf("kubenode: %w", err)
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	keys := make([]string, 0, len(kernelTunables))
	for k := range kernelTunables {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		f := filepath.Join(sd, strings.ReplaceAll(k, "/", "."))
		if err := os.WriteFile(f, []byte(kernelTunables[k]+"\n"), 0o644); err != nil {
			return "", nil, fmt.Errorf("kubenode: %w", err)
		}
		fmt.Fprintf(&script, "mount --bind %s /proc/sys/%s\n", shellQuote(f), k)
	}
	script.WriteString("exec \"$@\"\n")
	full := append([]string{"--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", script.String(), "kubelet", kubelet}, args...)
	return "unshare", full, nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shimSocketDir is where containerd 1.6 puts its shims' sockets whatever
// its state directory: /run/containerd/s/sha256(address/namespace/id).
const shimSocketDir = "/run/containerd/s"

// removeShimSockets removes the shim sockets of the containers and
// sandboxes of the containerd whose address and state directory are given.
func removeShimSockets(address, state string) {
	ents, _ := filepath.Glob(filepath.Join(state, "io.containerd.runtime.v2.task", "*", "*"))
	for _, e := range ents {
		ns, id := filepath.Base(filepath.Dir(e)), filepath.Base(e)
		sum := sha256.Sum256([]byte(filepath.Join(address, ns, id)))
		_ = os.Remove(filepath.Join(shimSocketDir, hex.EncodeToString(sum[:])))
	}
}
