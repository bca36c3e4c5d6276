package kubenode

import (
	"context"
	"errors"
	"fmt"
	"os"

	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// stopOrder is the order Down stops the daemons in: the kubelet first (it
// restarts nothing after that), containerd after the pods' processes, the
// API server and etcd last.
var stopOrder = []string{"kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "containerd", "kube-apiserver", "etcd"}

// Down removes everything the node made, whether Up finished, failed half
// way or is running in another process: the processes (by recorded PID and
// process group, then any process still naming Dir, then everything in the
// node's cgroups), containerd's shim sockets, the pods' veths, the bridge,
// the macvlan parent, the nft tables (this package's and kube-proxy's), the
// cgroups, every mount under Dir and Dir itself. It is idempotent: with nothing to remove
// it returns nil. It does not use the API: it must work when the API
// server is the thing that failed.
func (n *Node) Down(ctx context.Context) error {
	st := n.loadState()
	var errs []error

	// 1. Processes: the recorded daemons in order, each with its group.
	for _, name := range stopOrder {
		var recs []procRecord
		for _, r := range st.Procs {
			if r.Name == name {
				recs = append(recs, r)
			}
		}
		if name == "containerd" {
			// The pods' processes first, so the shims have nothing to wait for.
			killCgroupProcs()
		}
		stopProcs(recs, 5*time.Second)
	}
	// Anything still naming Dir (shims, a daemon whose record was lost).
	stopProcs(procsReferencing(n.cfg.Dir), 3*time.Second)
	killCgroupProcs()
	if left := procsReferencing(n.cfg.Dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("kubenode: processes still running: %v", left))
	}

	// 2. containerd's leftovers outside Dir.
	removeShimSockets(n.ContainerdAddress(), n.path("containerd", "state"))
	// libcni's result cache (/var/lib/cni/results/NETWORK-ID-IFNAME), which
	// a CNI DEL would have removed: our network's, and containerd's
	// loopback network's for our sandboxes.
	if res, _ := filepath.Glob(filepath.Join(cniResults, CNINetwork+"-*")); len(res) > 0 {
		for _, f := range res {
			_ = os.Remove(f)
		}
	}
	for _, id := range n.sandboxIDs() {
		_ = os.Remove(filepath.Join(cniResults, "cni-loopback-"+id+"-lo"))
	}

	if ents, err := os.ReadDir(containerLogLinks); err == nil {
		for _, e := range ents {
			p := filepath.Join(containerLogLinks, e.Name())
			if target, err := os.Readlink(p); err == nil && (target == n.cfg.Dir || strings.HasPrefix(target, n.cfg.Dir+"/")) {
				_ = os.Remove(p)
			}
		}
	}

	// The macvlan parent, with its peer (a veth) and the pods' macvlan
	// interfaces, before its peer's namespace is unmounted below: deleting
	// the link is synchronous, a namespace's teardown is not.
	if linkExists(MacvlanParent) {
		if err := run("ip", "link", "del", MacvlanParent); err != nil {
			errs = append(errs, fmt.Errorf("kubenode: %w", err))
		}
	}

	// 3. Mounts under Dir (the pods' netns and volumes, containerd's
	// rootfs and shm mounts, the bpffs, Dir's own bind mount): after this
	// the pods' network namespaces are gone and with them their veths.
	if err := unmountAll(n.cfg.Dir); err != nil {
		errs = append(errs, err)
	}

	// 4. Network: veths left on the bridge, the bridge, the nft tables.
	if linkExists(Bridge) {
		ents, _ := os.ReadDir("/sys/class/net/" + Bridge + "/brif")
		for _, e := range ents {
			_ = run("ip", "link", "del", e.Name())
		}
		if err := run("ip", "link", "del", Bridge); err != nil {
			errs = append(errs, fmt.Errorf("kubenode: %w", err))
		}
	}

	for _, t := range ownedTables {
		for _, have := range tablesPresent() {
			if have == t[0]+" "+t[1] {
				if err := run("nft", "delete", "table", t[0], t[1]); err != nil {
					errs = append(errs, fmt.Errorf("kubenode: %w", err))
				}
			}
		}
	}

	// 5. Cgroups: the kubelet's pods' and the kubelet's own (KubeletCgroup),
	// all below CgroupRoot.
	if err := removeCgroups(10 * time.Second); err != nil {
		errs = append(errs, err)
	}

	// 6. Files: Dir, and the host directories Up saw appear and that are
	// empty again (deepest first).
	if len(mountPoints(n.cfg.Dir)) == 0 {
		if err := os.RemoveAll(n.cfg.Dir); err != nil {
			errs = append(errs, fmt.Errorf("kubenode: %w", err))
		}
	}
	for i := len(st.Created) - 1; i >= 0; i-- {
		_ = os.Remove(st.Created[i]) // fails, as it should, when not empty
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Status describes what of the node exists on the machine.
type Status struct {
	// Procs maps each recorded daemon to whether it runs.
	Procs map[string]bool
	// Objects lists the node's kernel objects and mounts that exist.
	Objects []string
	// NodeReady is the Node's Ready condition ("" when the API is not
	// reachable).
	NodeReady string
}

// Status reports what runs and what exists. It changes nothing.
func (n *Node) Status(ctx context.Context) Status {
	s := Status{Procs: map[string]bool{}}
	for _, r := range n.loadState().Procs {
		s.Procs[r.Name] = r.alive()
	}
	for _, l := range []string{Bridge, MacvlanParent} {
		if linkExists(l) {
			s.Objects = append(s.Objects, "interface "+l)
		}
	}
	for _, t := range tablesPresent() {
		s.Objects = append(s.Objects, "nft table "+t)
	}
	s.Objects = append(s.Objects, cgroupsPresent()...)
	if mps := mountPoints(n.cfg.Dir); len(mps) > 0 {
		s.Objects = append(s.Objects, fmt.Sprintf("%d mounts under %s", len(mps), n.cfg.Dir))
	}
	if c, err := n.Client(); err == nil {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if node, err := c.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{}); err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == "Ready" {
					s.NodeReady = string(cond.Status)
				}
			}
		}
	}
	return s
}

// String formats s for `kube-node status`.
func (s Status) String() string {
	var b strings.Builder
	for _, name := range stopOrder {
		if up, ok := s.Procs[name]; ok {
			state := "stopped"
			if up {
				state = "running"
			}
			fmt.Fprintf(&b, "%-24s %s\n", name, state)
		}
	}
	for _, o := range s.Objects {
		fmt.Fprintf(&b, "present: %s\n", o)
	}
	if s.NodeReady != "" {
		fmt.Fprintf(&b, "node %s Ready=%s\n", NodeName, s.NodeReady)
	}
	if b.Len() == 0 {
		b.WriteString("nothing of the node exists\n")
	}
	return b.String()
}

// cniResults is libcni's cache directory (fixed in containerd 1.6).
const cniResults = "/var/lib/cni/results"

// sandboxIDs returns the IDs of the node's containerd tasks and CRI
// sandboxes, read from its root and state directories.
func (n *Node) sandboxIDs() []string {
	var ids []string
	for _, pattern := range []string{
		n.path("containerd", "state", "io.containerd.runtime.v2.task", "*", "*"),
		n.path("containerd", "root", "io.containerd.grpc.v1.cri", "sandboxes", "*"),
		n.path("containerd", "state", "io.containerd.grpc.v1.cri", "sandboxes", "*"),
	} {
		m, _ := filepath.Glob(pattern)
		for _, p := range m {
			ids = append(ids, filepath.Base(p))
		}
	}
	return ids
}
