package kubenode

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferrymesh/ferry/internal/kubepki"
)

// Node is one real Kubernetes node on this machine: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kube-proxy (nftables), a private
// containerd and a kubelet, pods on a bridge. Up starts it; Down removes
// everything it made, from what is on the machine and in Dir, so it also
// works after a failed Up or from another process. A Node's methods are not
// safe for concurrent use.
type Node struct {
	cfg Config
	log *slog.Logger
	mu  sync.Mutex // guards state writes
	st  state
}

// state is what Up records in Dir/state.json as it goes.
type state struct {
	Procs []procRecord `json:"procs"`
	// Created lists host paths outside Dir that did not exist before Up
	// and that Down removes when they are empty again.
	Created []string `json:"created,omitempty"`
}

// New validates cfg. It starts nothing and touches nothing.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Node{cfg: cfg, log: cfg.Logger}, nil
}

// Dir returns the node's state directory.
func (n *Node) Dir() string { return n.cfg.Dir }

// Kubeconfig returns the path of an admin (system:masters) kubeconfig for
// the node's API server; it exists once Up has started the API server.
func (n *Node) Kubeconfig() string { return filepath.Join(n.cfg.Dir, "kubeconfig") }

// LogPath returns the log file of one of the node's processes (etcd,
// kube-apiserver, containerd, kubelet, ...).
func (n *Node) LogPath(name string) string { return filepath.Join(n.cfg.Dir, "logs", name+".log") }

// BPFFS returns the node's own bpffs, mounted shared (a hostPath volume
// with HostToContainer propagation accepts it; the host's /sys/fs/bpf is
// private and left alone).
func (n *Node) BPFFS() string { return filepath.Join(n.cfg.Dir, "bpffs") }

// KubeletCgroup returns the kubelet's cgroup: the directory
// CgroupRoot/kubelet of the machine's cgroup v2 hierarchy (CgroupV2),
// which Up makes and creates the kubelet's process in, so that the kubelet
// and nothing else runs there (the agent's --probe-cgroup names it, through
// Overlay). Down removes it with CgroupRoot.
func (n *Node) KubeletCgroup() string { return filepath.Join(n.CgroupV2(), kubeletCgroup) }

// kubeletCgroup is KubeletCgroup relative to CgroupV2.
const kubeletCgroup = CgroupRoot + "/kubelet"

// CgroupV2 returns where the machine's cgroup v2 hierarchy is mounted: the
// node's /sys/fs/cgroup, which is /sys/fs/cgroup/unified on a host with
// cgroup v1 controllers. Where none is mounted (Up refuses to start), it
// returns /sys/fs/cgroup.
func (n *Node) CgroupV2() string { return cmp.Or(cgroup2Root(), "/sys/fs/cgroup") }

// CNI returns the node's network plugin, CNIBridge or CNIMacvlan.
func (n *Node) CNI() string { return n.cfg.CNI }

// CNIConfDir returns the node's CNI configuration directory, which
// containerd reads (the node's /etc/cni/net.d). It holds one network
// configuration list, CNIConfFile.
func (n *Node) CNIConfDir() string { return n.path("cni", "net.d") }

// CNIConfFile is the name of the node's network configuration list in
// CNIConfDir.
const CNIConfFile = "10-ferry-kubenode.conflist"

// CNIBinDir returns the node's CNI plugin directory (its /opt/cni/bin):
// links to the plugins of Debian's containernetworking-plugins (in
// /usr/lib/cni, which is left alone), and whatever a test installs there.
func (n *Node) CNIBinDir() string { return n.path("cni", "bin") }

// NetnsDir returns where containerd binds its pods' network namespaces
// (the node's /var/run/netns), the paths it gives CNI plugins as
// CNI_NETNS. It is inside Dir's shared mount, so a hostPath volume with
// HostToContainer propagation sees the namespaces bound after it.
func (n *Node) NetnsDir() string {
	return n.path("containerd", "state", "io.containerd.grpc.v1.cri", "netns")
}

// RunDir returns the node's stand-in for /var/run/ferry, the directory of
// the agent's CNI socket and state with --capture pod (Overlay).
func (n *Node) RunDir() string { return n.path("run", "ferry") }

// debianCNIDir is where Debian's containernetworking-plugins installs the
// plugins.
const debianCNIDir = "/usr/lib/cni"

// cniPlugins are the plugins of debianCNIDir the node links into
// CNIBinDir (containerd runs loopback for every sandbox).
func cniPlugins(cni string) []string {
	return []string{"loopback", "host-local", cni}
}

// APIServer returns kube-apiserver's URL.
func APIServer() string {
	return "https://" + net.JoinHostPort(GatewayIP.String(), strconv.Itoa(APIServerPort))
}

// RESTConfig returns a client configuration from Kubeconfig.
func (n *Node) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", n.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("kubenode: %w", err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// Client returns a clientset from Kubeconfig.
func (n *Node) Client() (kubernetes.Interface, error) {
	cfg, err := n.RESTConfig()
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubenode: %w", err)
	}
	return c, nil
}

func (n *Node) path(p ...string) string { return filepath.Join(append([]string{n.cfg.Dir}, p...)...) }

// ContainerdAddress returns the private containerd's socket.
func (n *Node) ContainerdAddress() string { return n.path("containerd", "containerd.sock") }

// ImportImage loads a docker-archive (WriteImage) into the node's
// containerd, where the kubelet finds it (namespace k8s.io). Pods must use
// imagePullPolicy IfNotPresent or Never: there is no registry.
func (n *Node) ImportImage(ctx context.Context, archive string) error {
	out, err := exec.CommandContext(ctx, "ctr", "--address", n.ContainerdAddress(), "-n", "k8s.io",
		"images", "import", "--no-unpack=false", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubenode: import %s: %w: %s", archive, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (n *Node) saveState() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	b, err := json.MarshalIndent(n.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := n.path("state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	return os.Rename(tmp, n.path("state.json"))
}

func (n *Node) loadState() state {
	var st state
	b, err := os.ReadFile(n.path("state.json"))
	if err == nil {
		_ = json.Unmarshal(b, &st)
	}
	return st
}

// daemon starts a process and records it before anything else can fail.
func (n *Node) daemon(name, bin string, args ...string) (procRecord, error) {
	return n.daemonIn("", name, bin, args...)
}

// daemonIn is daemon with the process created in cgroup, a cgroup v2
// directory ("": the caller's).
func (n *Node) daemonIn(cgroup, name, bin string, args ...string) (procRecord, error) {
	r, err := n.startDaemon(name, cgroup, bin, args...)
	if err != nil {
		return r, err
	}
	n.st.Procs = append(n.st.Procs, r)
	n.log.Info("started", "prog", name, "pid", r.PID)
	return r, n.saveState()
}

// ErrLeftovers is returned by Up when objects of an earlier node are still
// on the machine; `scripts/kube-node down` (Down) removes them.
var ErrLeftovers = errors.New("kubenode: another node's objects are on this machine (run scripts/kube-node down)")

// leftovers describes the fixed-name objects that exist now.
func (n *Node) leftovers() []string {
	var out []string
	for _, l := range []string{Bridge, MacvlanParent} {
		if linkExists(l) {
			out = append(out, "interface "+l)
		}
	}
	for _, t := range tablesPresent() {
		out = append(out, "nft table "+t)
	}
	out = append(out, cgroupsPresent()...)
	for _, r := range n.loadState().Procs {
		if r.alive() {
			out = append(out, fmt.Sprintf("process %s (%d)", r.Name, r.PID))
		}
	}
	out = append(out, mountPoints(n.cfg.Dir)...)
	return out
}

// Up brings the node up and returns once its Node is Ready and the
// "default" ServiceAccount exists, so pods can be created. On error it
// leaves what it made for Down (which the caller should run), and the
// error names the process whose log explains it.
func (n *Node) Up(ctx context.Context) error {
	if left := n.leftovers(); len(left) > 0 {
		return fmt.Errorf("%w: %s", ErrLeftovers, strings.Join(left, ", "))
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		if n.cfg.BinDir == "" {
			return errors.New("kubenode: Config.BinDir is empty (scripts/kube-test-binaries --node)")
		}
		if _, err := os.Stat(filepath.Join(n.cfg.BinDir, b)); err != nil {
			return fmt.Errorf("kubenode: %w (scripts/kube-test-binaries --node builds it)", err)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nft", "ip", "unshare", "mount"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("kubenode: %s not found (scripts/install-deps installs it)", b)
		}
	}
	for _, p := range cniPlugins(n.cfg.CNI) {
		if _, err := os.Stat(filepath.Join(debianCNIDir, p)); err != nil {
			return fmt.Errorf("kubenode: CNI plugin %s: %w (apt containernetworking-plugins)", p, err)
		}
	}
	if err := rangesInUse(n.podRanges()...); err != nil {
		return err
	}
	if cgroup2Root() == "" {
		return errors.New("kubenode: no cgroup v2 hierarchy is mounted: the kubelet runs in a cgroup v2 directory of its own (KubeletCgroup)")
	}
	if _, err := os.Stat(n.cfg.PauseBinary); err != nil || n.cfg.PauseBinary == "" {
		return fmt.Errorf("kubenode: Config.PauseBinary: %v", err)
	}
	start := time.Now()
	n.st = state{}
	if err := n.prepareDir(); err != nil {
		return err
	}
	if err := n.saveState(); err != nil {
		return err
	}
	p, err := kubepki.NewPKI(NodeName, []net.IP{GatewayIP.AsSlice(), net.IP(firstServiceIP().AsSlice())})
	if err != nil {
		return fmt.Errorf("kubenode: pki: %w", err)
	}
	if err := n.writeFiles(p); err != nil {
		return err
	}
	n.log.Info("network", "cni", n.cfg.CNI)
	if err := setupBridge(); err != nil {
		return err
	}
	if n.cfg.CNI == CNIMacvlan {
		if err := setupMacvlanParent(n.path("macvlan-peer.netns")); err != nil {
			return err
		}
	}
	if err := setupNFT(n.cfg.Dir); err != nil {
		return err
	}
	if err := setupCgroups(); err != nil {
		return err
	}
	if err := os.Mkdir(n.KubeletCgroup(), 0o755); err != nil {
		return fmt.Errorf("kubenode: the kubelet's cgroup: %w", err)
	}
	if err := n.startControlPlane(ctx); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.startNode(); err != nil {
		return err
	}
	if err := n.waitReady(ctx); err != nil {
		return err
	}
	n.log.Info("node ready", "elapsed", time.Since(start).Round(time.Millisecond), "kubeconfig", n.Kubeconfig())
	return nil
}

// containerLogLinks is where the kubelet links each container's log (a
// fixed path in the kubelet); Down removes the links that point into Dir.
const containerLogLinks = "/var/log/containers"

// prepareDir makes Dir a shared bind mount of itself (the kubelet's volume
// mounts, made in its own mount namespace, propagate to containerd through
// it) and mounts the node's bpffs inside it.
func (n *Node) prepareDir() error {
	for _, d := range []string{"", "logs", "bpffs", "etcd", "containerd", "cni/net.d", "cni/bin", "cni/ipam", "kubelet", "pod-logs"} {
		if err := os.MkdirAll(n.path(d), 0o700); err != nil {
			return fmt.Errorf("kubenode: %w", err)
		}
	}
	// Host paths containerd and libcni make outside Dir; Down removes them
	// if they did not exist before and are empty again.
	for _, p := range []string{"/run/containerd", shimSocketDir, "/var/lib/cni", cniResults, containerLogLinks} {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			n.st.Created = append(n.st.Created, p)
		}
	}
	dir := n.cfg.Dir
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("kubenode: bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("kubenode: make %s shared: %w", dir, err)
	}
	if err := unix.Mount("bpf", n.BPFFS(), "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("kubenode: mount bpffs: %w", err)
	}
	if err := unix.Mount("", n.BPFFS(), "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("kubenode: make bpffs shared: %w", err)
	}
	for _, p := range cniPlugins(n.cfg.CNI) {
		if err := os.Symlink(filepath.Join(debianCNIDir, p), filepath.Join(n.CNIBinDir(), p)); err != nil {
			return fmt.Errorf("kubenode: %w", err)
		}
	}
	return nil
}

// firstServiceIP is the "kubernetes" Service's ClusterIP.
func firstServiceIP() netip.Addr { return ServiceCIDR.Addr().Next() }

func (n *Node) writeFiles(p *kubepki.PKI) error {
	files := map[string][]byte{
		"pki/ca.crt": p.CACert, "pki/ca.key": p.CAKey,
		"pki/apiserver.crt": p.ServingCert, "pki/apiserver.key": p.ServingKey,
		"pki/kubelet-client.crt": p.KubeletClientCert, "pki/kubelet-client.key": p.KubeletClientKey,
		"pki/sa.key": p.SAKey, "pki/sa.pub": p.SAPub,
		"kubeconfig":         kubeconfig(p.CACert, p.AdminCert, p.AdminKey, "admin"),
		"kubelet.kubeconfig": kubeconfig(p.CACert, p.NodeCert, p.NodeKey, "system:node:"+NodeName),
	}
	for name, b := range files {
		path := n.path(name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("kubenode: %w", err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return fmt.Errorf("kubenode: %w", err)
		}
	}
	return nil
}

func kubeconfig(ca, cert, key []byte, user string) []byte {
	type m = map[string]any
	b, _ := json.Marshal(m{
		"apiVersion": "v1", "kind": "Config",
		"clusters":        []m{{"name": "ferry-kubenode", "cluster": m{"server": APIServer(), "certificate-authority-data": ca}}},
		"users":           []m{{"name": user, "user": m{"client-certificate-data": cert, "client-key-data": key}}},
		"contexts":        []m{{"name": "ferry-kubenode", "context": m{"cluster": "ferry-kubenode", "user": user}}},
		"current-context": "ferry-kubenode",
	})
	return b
}

func (n *Node) bin(name string) string { return filepath.Join(n.cfg.BinDir, name) }

// waitFor polls check every 100 ms until it returns nil, the process r
// exits, ctx ends or timeout passes; the error names r's log.
func (n *Node) waitFor(ctx context.Context, r procRecord, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if r.PID != 0 && !r.alive() {
			return fmt.Errorf("kubenode: %s exited (see %s): %w", r.Name, n.LogPath(r.Name), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubenode: %s not ready after %v (see %s): %w", r.Name, timeout, n.LogPath(r.Name), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubenode: waiting for %s: %w", r.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) startControlPlane(ctx context.Context) error {
	client, peer := freePort(), freePort()
	if client == 0 || peer == 0 {
		return errors.New("kubenode: no free loopback port")
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	r, err := n.daemon("etcd", n.bin("etcd"),
		"--name=kubenode", "--data-dir="+n.path("etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubenode="+peerURL,
		"--log-level=warn", "--logger=zap")
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: time.Second}
	if err := n.waitFor(ctx, r, 30*time.Second, func() error { return httpOK(hc, etcdURL+"/health") }); err != nil {
		return err
	}
	pk := func(f string) string { return n.path("pki", f) }
	r, err = n.daemon("kube-apiserver", n.bin("kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--bind-address="+GatewayIP.String(),
		"--advertise-address="+GatewayIP.String(),
		"--secure-port="+strconv.Itoa(APIServerPort),
		"--cert-dir="+n.path("pki"),
		"--tls-cert-file="+pk("apiserver.crt"), "--tls-private-key-file="+pk("apiserver.key"),
		"--client-ca-file="+pk("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pk("sa.pub"),
		"--service-account-signing-key-file="+pk("sa.key"),
		"--service-cluster-ip-range="+ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate="+pk("kubelet-client.crt"),
		"--kubelet-client-key="+pk("kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1")
	if err != nil {
		return err
	}
	rc, err := n.RESTConfig()
	if err != nil {
		return err
	}
	rc.Timeout = 2 * time.Second
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	return n.waitFor(ctx, r, 90*time.Second, func() error {
		_, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
}

func httpOK(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago, or 0.
// freePort returns a loopback TCP port free at the time of the call.
func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (n *Node) containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[7]q
    max_conf_num = 1
`, n.path("containerd", "root"), n.path("containerd", "state"), n.ContainerdAddress(),
		n.ContainerdAddress()+".ttrpc", PauseImage, n.path("containerd", "runc"), n.CNIConfDir(), n.CNIBinDir())
}

// podRanges are the ranges the node's pods and its own address take.
func (n *Node) podRanges() []netip.Prefix {
	if n.cfg.CNI == CNIMacvlan {
		return []netip.Prefix{PodCIDR, MacvlanCIDR}
	}
	return []netip.Prefix{PodCIDR}
}

// cniConfig is the network configuration list CNINetwork for the node's
// CNI.
func (n *Node) cniConfig() string {
	ipam := map[string]any{
		"type":    "host-local",
		"dataDir": n.path("cni", "ipam"),
		"ranges": [][]map[string]string{{{
			"subnet":     PodCIDR.String(),
			"rangeStart": PodCIDR.Addr().Next().Next().String(),
			"gateway":    GatewayIP.String(),
		}}},
		"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
	}
	plugin := map[string]any{
		"type":        "bridge",
		"bridge":      Bridge,
		"isGateway":   false,
		"ipMasq":      false,
		"hairpinMode": false,
		"ipam":        ipam,
	}
	if n.cfg.CNI == CNIMacvlan {
		// No gateway and no default route: the pods' subnet is all they
		// reach.
		ipam["ranges"] = [][]map[string]string{{{
			"subnet":     MacvlanCIDR.String(),
			"rangeStart": MacvlanCIDR.Addr().Next().Next().String(),
		}}}
		delete(ipam, "routes")
		plugin = map[string]any{"type": "macvlan", "master": MacvlanParent, "mode": "bridge", "ipam": ipam}
	}
	b, _ := json.MarshalIndent(map[string]any{
		"cniVersion": "0.4.0",
		"name":       CNINetwork,
		"plugins":    []map[string]any{plugin},
	}, "", "  ")
	return string(b)
}

func (n *Node) startContainerd(ctx context.Context) error {
	files := map[string]string{
		"containerd/config.toml":   n.containerdConfig(),
		"cni/net.d/" + CNIConfFile: n.cniConfig(),
	}
	for name, s := range files {
		if err := os.WriteFile(n.path(name), []byte(s), 0o600); err != nil {
			return fmt.Errorf("kubenode: %w", err)
		}
	}
	r, err := n.daemon("containerd", "containerd", "--config", n.path("containerd", "config.toml"))
	if err != nil {
		return err
	}
	if err := n.waitFor(ctx, r, 30*time.Second, func() error {
		c, err := net.DialTimeout("unix", n.ContainerdAddress(), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return err
	}
	archive := n.path("pause.tar")
	pause, err := os.ReadFile(n.cfg.PauseBinary)
	if err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	if err := WriteImageFile(archive, Image{Ref: PauseImage, Files: map[string][]byte{"/pause": pause}, Entrypoint: []string{"/pause"}}); err != nil {
		return err
	}
	return n.ImportImage(ctx, archive)
}

func (n *Node) startNode() error {
	kubeconfig := n.Kubeconfig()
	if _, err := n.daemon("kube-controller-manager", n.bin("kube-controller-manager"),
		"--kubeconfig="+kubeconfig,
		"--controllers="+strings.Join([]string{
			"serviceaccount-controller", "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
			"node-lifecycle-controller", "namespace-controller", "garbage-collector-controller",
			"pod-garbage-collector-controller", "daemonset-controller", "deployment-controller",
			"replicaset-controller", "endpoints-controller", "endpointslice-controller",
			"clusterrole-aggregation-controller", "service-cidr-controller",
		}, ","),
		"--service-account-private-key-file="+n.path("pki", "sa.key"),
		"--root-ca-file="+n.path("pki", "ca.crt"),
		"--use-service-account-credentials=false",
		"--leader-elect=false", "--secure-port=0", "--v=1"); err != nil {
		return err
	}
	if _, err := n.daemon("kube-scheduler", n.bin("kube-scheduler"),
		"--kubeconfig="+kubeconfig, "--leader-elect=false", "--secure-port=0", "--v=1"); err != nil {
		return err
	}
	healthz, metrics := freePort(), freePort()
	proxyConfig := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: %q
hostnameOverride: %s
bindAddress: %s
clusterCIDR: %s
detectLocalMode: ClusterCIDR
nodePortAddresses: ["%s/32"]
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
oomScoreAdj: 0
# Leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
`, kubeconfig, NodeName, GatewayIP, PodCIDR, GatewayIP, healthz, metrics)
	if err := os.WriteFile(n.path("kube-proxy.yaml"), []byte(proxyConfig), 0o600); err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	if _, err := n.daemon("kube-proxy", n.bin("kube-proxy"), "--config="+n.path("kube-proxy.yaml"), "--v=1"); err != nil {
		return err
	}
	kubeletConfig := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[3]q}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /%[4]s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[5]s
registerNode: true
makeIPTablesUtilChains: false
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", nodefs.inodesFree: "1%%", imagefs.available: "1%%"}
podLogsDir: %[6]q
serializeImagePulls: false
rotateCertificates: false
resolvConf: /etc/resolv.conf
clusterDNS: [%[7]s]
clusterDomain: %[8]s
`, GatewayIP, KubeletPort, n.path("pki", "ca.crt"), CgroupRoot, n.ContainerdAddress(), n.path("pod-logs"), DNSAddr.Addr(), ClusterDomain)
	if err := os.WriteFile(n.path("kubelet.yaml"), []byte(kubeletConfig), 0o600); err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	cmd, args, err := kubeletWrapper(n.cfg.Dir, n.bin("kubelet"), []string{
		"--config=" + n.path("kubelet.yaml"),
		"--kubeconfig=" + n.path("kubelet.kubeconfig"),
		"--root-dir=" + n.path("kubelet"),
		"--hostname-override=" + NodeName,
		"--node-ip=" + GatewayIP.String(),
		"--v=1",
	})
	if err != nil {
		return err
	}
	// In its own cgroup from the start, so that every connection it makes
	// is its cgroup's (the agent's --probe-cgroup, KubeletCgroup).
	_, err = n.daemonIn(n.KubeletCgroup(), "kubelet", cmd, args...)
	return err
}

// waitReady waits for the Node to be Ready and for the default namespace's
// ServiceAccount (pods cannot be created before it exists).
func (n *Node) waitReady(ctx context.Context) error {
	c, err := n.Client()
	if err != nil {
		return err
	}
	var kubelet procRecord
	for _, r := range n.st.Procs {
		if r.Name == "kubelet" {
			kubelet = r
		}
	}
	return n.waitFor(ctx, kubelet, n.cfg.ReadyTimeout, func() error {
		for _, r := range n.st.Procs {
			if !r.alive() {
				return fmt.Errorf("%s (pid %d) exited, see %s", r.Name, r.PID, n.LogPath(r.Name))
			}
		}
		node, err := c.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			return fmt.Errorf("node %s not Ready", NodeName)
		}
		if slices.ContainsFunc(node.Spec.Taints, func(t corev1.Taint) bool { return t.Effect == corev1.TaintEffectNoSchedule }) {
			return fmt.Errorf("node %s still tainted NoSchedule", NodeName)
		}
		_, err = c.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}
