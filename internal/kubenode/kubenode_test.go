package kubenode

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestWriteImage reads the archive back the way an importer does: the
// manifest names the config, the config's diff_id is the layer's digest,
// and the layer holds the file with its mode.
func TestWriteImage(t *testing.T) {
	var buf bytes.Buffer
	img := Image{Ref: "ferry.test/x:1", Files: map[string][]byte{"/bin/x": []byte("#!bin")}, Entrypoint: []string{"/bin/x", "serve"}}
	if err := WriteImage(&buf, img); err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{img.Ref}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v", manifest)
	}
	var config struct {
		OS     string
		Config struct{ Entrypoint []string }
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(files[manifest[0].Config], &config); err != nil {
		t.Fatal(err)
	}
	layer := files[manifest[0].Layers[0]]
	sum := sha256.Sum256(layer)
	if !slices.Equal(config.RootFS.DiffIDs, []string{"sha256:" + hex.EncodeToString(sum[:])}) {
		t.Errorf("diff_ids = %v, layer digest %x", config.RootFS.DiffIDs, sum)
	}
	if config.OS != "linux" || !slices.Equal(config.Config.Entrypoint, img.Entrypoint) {
		t.Errorf("config = %+v", config)
	}
	tr := tar.NewReader(bytes.NewReader(layer))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == "bin/x" && h.Mode != 0o755 {
			t.Errorf("bin/x mode %o", h.Mode)
		}
	}
	if !slices.Equal(names, []string{"bin/", "bin/x"}) {
		t.Errorf("layer entries = %v", names)
	}
	// The same input gives the same bytes (the image ID is stable).
	var again bytes.Buffer
	if err := WriteImage(&again, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("WriteImage is not deterministic")
	}
}

func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		c, _ := io.ReadAll(tr)
		out[h.Name] = c
	}
}

func TestRefersTo(t *testing.T) {
	dir := "/var/lib/ferry-kubenode"
	for arg, want := range map[string]bool{
		dir:                               true,
		dir + "/containerd/x.sock":        true,
		"--data-dir=" + dir + "/etcd":     true,
		"unix://" + dir + "/c.sock":       true,
		dir + "-test/x":                   false,
		"/x" + dir:                        false,
		"--root-dir=/var/lib/ferry-kube":  false,
		"--config=" + dir + "/kubelet.ya": true,
	} {
		if got := refersTo(arg, dir); got != want {
			t.Errorf("refersTo(%q) = %v, want %v", arg, got, want)
		}
	}
}

// hostSnapshot is the host-wide state the node must not change.
type hostSnapshot struct {
	sysctls    map[string]string
	tables     string
	iptables   string
	links      []string
	netns      []string
	runCtrd    bool
	varLibCNI  bool
	logLinks   []string
	cniResults []string
	rootCgroup map[string][]string // top-level cgroups per hierarchy
	loAddrs    []string            // the addresses on lo (a --probe-source is put there)
}

func snapshot(t *testing.T) hostSnapshot {
	t.Helper()
	s := hostSnapshot{sysctls: map[string]string{}, rootCgroup: map[string][]string{}}
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv4/conf/all/route_localnet",
		"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
		"net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait", "net/bridge/bridge-nf-call-iptables"} {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err == nil {
			s.sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	out, _ := exec.Command("nft", "list", "tables").Output()
	s.tables = string(out)
	for _, ipt := range []string{"iptables-save", "iptables-legacy-save", "iptables-nft-save"} {
		if out, err := exec.Command(ipt).Output(); err == nil {
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "KUBE") {
					s.iptables += ipt + ": " + line + "\n"
				}
			}
		}
	}
	ents, _ := os.ReadDir("/sys/class/net")
	for _, e := range ents {
		s.links = append(s.links, e.Name())
	}
	ents, _ = os.ReadDir("/run/netns")
	for _, e := range ents {
		s.netns = append(s.netns, e.Name())
	}
	ents, _ = os.ReadDir(cniResults)
	for _, e := range ents {
		s.cniResults = append(s.cniResults, e.Name())
	}
	ents, _ = os.ReadDir(containerLogLinks)
	for _, e := range ents {
		s.logLinks = append(s.logLinks, e.Name())
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		addrs, _ := netlink.AddrList(lo, netlink.FAMILY_ALL)
		for _, a := range addrs {
			s.loAddrs = append(s.loAddrs, a.IPNet.String())
		}
	}
	_, err := os.Stat("/run/containerd")
	s.runCtrd = err == nil
	_, err = os.Stat("/var/lib/cni")
	s.varLibCNI = err == nil
	for _, m := range cgroupMounts() {
		ents, _ := os.ReadDir(m)
		for _, e := range ents {
			if e.IsDir() {
				s.rootCgroup[m] = append(s.rootCgroup[m], e.Name())
			}
		}
	}
	return s
}

// TestPrivilegedRealNodeUpDown brings a real node up, runs pods on it
// (the pause image, the project's test app as a server behind a ClusterIP
// Service and as a client in another pod), takes it down, and checks that
// nothing is left and that no host-wide setting changed at any point.
// nodeAssets returns the module root, the directory of the cached
// Kubernetes binaries (built on first use) and a freshly built pause binary.
func nodeAssets(ctx context.Context, t *testing.T) (root, bins, pause string) {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins, err = Binaries(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	pause = filepath.Join(t.TempDir(), "pause")
	if err := BuildStatic(ctx, root, "./internal/kubenode/pause", pause); err != nil {
		t.Fatal(err)
	}
	return root, bins, pause
}

// Debug knob: KUBENODE_KEEP=1 leaves a failed test's node up for
// inspection (scripts/kube-node down --dir /tmp/ferry-kubenode-test removes it).
func TestPrivilegedRealNodeUpDown(t *testing.T) {
	testutil.Privileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Minute)
	defer cancel()
	root, bins, pause := nodeAssets(ctx, t)
	before := snapshot(t)
	dir := filepath.Join(os.TempDir(), "ferry-kubenode-test")
	n, err := New(Config{Dir: dir, BinDir: bins, PauseBinary: pause, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	downed := false
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"kubelet", "containerd", "kube-proxy", "kube-apiserver", "kube-controller-manager"} {
				if b, err := os.ReadFile(n.LogPath(name)); err == nil {
					t.Logf("%s log (tail):\n%s", name, tailLines(b, 25))
				}
			}
		}
		if !downed && os.Getenv("KUBENODE_KEEP") == "" {
			if err := n.Down(context.WithoutCancel(ctx)); err != nil {
				t.Errorf("Down: %v", err)
			}
		}
	})

	start := time.Now()
	if err := n.Up(ctx); err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("up in %v", time.Since(start).Round(time.Millisecond))
	c, err := n.Client()
	if err != nil {
		t.Fatal(err)
	}
	// A running node changed no host-wide setting.
	during := snapshot(t)
	for k, v := range before.sysctls {
		if during.sysctls[k] != v {
			t.Errorf("while up: %s = %s, was %s", k, during.sysctls[k], v)
		}
	}
	if during.iptables != before.iptables {
		t.Errorf("while up: iptables changed:\n%s\nwas:\n%s", during.iptables, before.iptables)
	}
	if out, err := exec.Command("mount").Output(); err == nil && strings.Count(string(out), " /sys/fs/bpf ") != 1 {
		t.Errorf("while up: /sys/fs/bpf mounts:\n%s", out)
	}

	podStart := time.Now()
	if err := n.BuildImage(ctx, root, "./scripts/podapp", "ferry.test/podapp:1"); err != nil {
		t.Fatal(err)
	}
	const ns = "kubenode-test"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The namespace's default ServiceAccount comes from the controller manager.
	if err := waitSA(ctx, c.CoreV1().ServiceAccounts(ns).Get); err != nil {
		t.Fatal(err)
	}
	pod := func(name, image string, labels map[string]string, restart corev1.RestartPolicy, args ...string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{
				RestartPolicy:                 restart,
				TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{
					Name: "c", Image: image, Args: args, ImagePullPolicy: corev1.PullNever,
				}},
			},
		}
	}
	for _, p := range []*corev1.Pod{
		pod("pause", PauseImage, nil, corev1.RestartPolicyAlways),
		pod("web", "ferry.test/podapp:1", map[string]string{"app": "web"}, corev1.RestartPolicyAlways, "serve", "--addr", ":8000", "--name", ns+"/web"),
	} {
		if _, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var webIP string
	for _, name := range []string{"pause", "web"} {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		p, err := WaitPod(wctx, c, ns, name, PodRunning)
		wcancel()
		if err != nil {
			t.Fatalf("%v: %+v", err, p.Status)
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !PodCIDR.Contains(ip) {
			t.Errorf("pod %s IP %q, want one in %v", name, p.Status.PodIP, PodCIDR)
		}
		webIP = p.Status.PodIP
	}
	t.Logf("pods running %v after Up", time.Since(podStart).Round(time.Millisecond))

	svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8000)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !ServiceCIDR.Contains(vip) {
		t.Fatalf("ClusterIP %q, want one in %v", svc.Spec.ClusterIP, ServiceCIDR)
	}
	// kube-proxy has programmed the Service and its endpoint in its own
	// table (the mechanism the client's request goes through).
	if err := WaitKubeProxy(ctx, vip.String(), webIP); err != nil {
		t.Fatal(err)
	}
	client := pod("client", "ferry.test/podapp:1", nil, corev1.RestartPolicyNever, "get", "--timeout", "10s", "http://"+vip.String()+"/ip")
	if _, err := c.CoreV1().Pods(ns).Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	cp, err := WaitPod(wctx, c, ns, "client", PodDone)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.CoreV1().Pods(ns).GetLogs("client", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("client logs: %v", err)
	}
	// podapp get prints the status, then the body: the client address the
	// server saw, which is the client pod's own (DNAT, no masquerade).
	if cp.Status.Phase != corev1.PodSucceeded || strings.TrimSpace(string(logs)) != "200\n"+cp.Status.PodIP {
		t.Fatalf("client through ClusterIP %s: phase %s, output %q, want 200 and %s", vip, cp.Status.Phase, logs, cp.Status.PodIP)
	}

	start = time.Now()
	downed = true
	if err := n.Down(ctx); err != nil {
		t.Errorf("Down: %v", err)
	}
	t.Logf("down in %v", time.Since(start).Round(time.Millisecond))
	if err := n.Down(ctx); err != nil {
		t.Errorf("second Down: %v", err)
	}

	// Nothing is left.
	if procs := procsReferencing(dir); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
	if mps := mountPoints(dir); len(mps) > 0 {
		t.Errorf("mounts left: %v", mps)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s left: %v", dir, err)
	}
	if cg := cgroupsPresent(); len(cg) > 0 {
		t.Errorf("cgroups left: %v", cg)
	}
	after := snapshot(t)
	for m, names := range after.rootCgroup {
		if slices.Contains(names, "kubepods") || !slices.Equal(names, before.rootCgroup[m]) {
			t.Errorf("cgroups at %s: %v, were %v", m, names, before.rootCgroup[m])
		}
	}
	if !slices.Equal(after.links, before.links) {
		t.Errorf("interfaces: %v, were %v", after.links, before.links)
	}
	if !slices.Equal(after.netns, before.netns) {
		t.Errorf("/run/netns: %v, was %v", after.netns, before.netns)
	}
	if after.tables != before.tables {
		t.Errorf("nft tables:\n%s\nwere:\n%s", after.tables, before.tables)
	}
	if after.iptables != before.iptables {
		t.Errorf("iptables KUBE lines:\n%s\nwere:\n%s", after.iptables, before.iptables)
	}
	for k, v := range before.sysctls {
		if after.sysctls[k] != v {
			t.Errorf("%s = %s, was %s", k, after.sysctls[k], v)
		}
	}
	if !slices.Equal(after.cniResults, before.cniResults) {
		t.Errorf("%s: %v, was %v", cniResults, after.cniResults, before.cniResults)
	}
	if !slices.Equal(after.logLinks, before.logLinks) {
		t.Errorf("%s: %v, was %v", containerLogLinks, after.logLinks, before.logLinks)
	}
	if after.runCtrd != before.runCtrd || after.varLibCNI != before.varLibCNI {
		t.Errorf("/run/containerd exists %v (was %v), /var/lib/cni exists %v (was %v)", after.runCtrd, before.runCtrd, after.varLibCNI, before.varLibCNI)
	}
}

func waitSA(ctx context.Context, get func(context.Context, string, metav1.GetOptions) (*corev1.ServiceAccount, error)) error {
	for {
		_, err := get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tailLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
