package kubenode

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// nodePath is a host directory deploy/'s agent mounts, and this node's own
// for it. A named one is a path the agent tells the node (the CNI socket,
// in the plugin's configuration) or the node tells the agent (CNI_NETNS):
// the container sees it at the node's path too, and the agent's arguments
// follow.
type nodePath struct {
	host  string
	node  func(*Node) string
	named bool
}

// nodePaths are the host directories deploy/'s agent mounts.
var nodePaths = []nodePath{
	{"/sys/fs/bpf", (*Node).BPFFS, false},
	{"/etc/cni/net.d", (*Node).CNIConfDir, false},
	{"/opt/cni/bin", (*Node).CNIBinDir, false},
	{"/var/run/netns", (*Node).NetnsDir, true},
	{"/var/run/ferry", (*Node).RunDir, true},
	{"/run/containerd/containerd.sock", (*Node).ContainerdAddress, false},
	{"/sys/fs/cgroup", (*Node).CgroupV2, false},
}

// probeCgroupFlag is the agent's flag naming the kubelet's cgroup, a path
// in the mount of the node's cgroup hierarchy.
const probeCgroupFlag = "--probe-cgroup="

// Overlay applies to the objects of a rendered kustomization of deploy/
// (internal/kubetest.Render: the default install, deploy/capture-node) what
// a node of this package needs, as a kustomize overlay would: every Ferry
// image set to tag (`kustomize edit set image`); every hostPath of the
// agent moved to this node's own (nodePaths: the host's bpffs is private
// here and the node must not remount it, and the CNI directories, the
// pods' namespaces, the run directory and containerd's socket are the
// node's, under Dir, and its cgroup hierarchy is the machine's cgroup v2
// one, CgroupV2); --probe-cgroup, if set, pointed at the kubelet's cgroup
// (KubeletCgroup) in the mount of that hierarchy;
// and, with CNIMacvlan, the CA in the node's network namespace (one
// replica): the agent, in the node's, could not reach a macvlan pod. It
// changes the objects in place.
func (n *Node) Overlay(objs []*unstructured.Unstructured, tag string) error {
	const image = "ghcr.io/ferrymesh/ferry:dev"
	images := 0
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" && o.GetKind() != "Deployment" {
			continue
		}
		spec, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
		containers, _, _ := unstructured.NestedSlice(spec, "containers")
		renames := map[string]string{} // old path → new, for named mounts and args
		var cgroupVol string           // the volume of the host's cgroup hierarchy
		if o.GetKind() == "DaemonSet" && o.GetName() == "ferry" {
			vols, _, _ := unstructured.NestedSlice(spec, "volumes")
			for _, v := range vols {
				v := v.(map[string]any)
				hp, ok, _ := unstructured.NestedString(v, "hostPath", "path")
				if !ok {
					continue
				}
				if hp == "/sys/fs/cgroup" {
					cgroupVol, _ = v["name"].(string)
				}
				i := slices.IndexFunc(nodePaths, func(p nodePath) bool { return p.host == hp })
				if i < 0 {
					return fmt.Errorf("kubenode: overlay: %s %s mounts %s, which this node has no stand-in for", o.GetKind(), o.GetName(), hp)
				}
				p := nodePaths[i]
				_ = unstructured.SetNestedField(v, p.node(n), "hostPath", "path")
				if p.named {
					renames[hp] = p.node(n)
				}
			}
			_ = unstructured.SetNestedSlice(spec, vols, "volumes")
		}
		for _, c := range containers {
			c := c.(map[string]any)
			if c["image"] == image {
				c["image"] = "ghcr.io/ferrymesh/ferry:" + tag
				images++
			}
			mounts, _, _ := unstructured.NestedSlice(c, "volumeMounts")
			var cgroupMount string // where the container sees the host's cgroup hierarchy
			for _, m := range mounts {
				m := m.(map[string]any)
				if cgroupVol != "" && m["name"] == cgroupVol {
					cgroupMount, _ = m["mountPath"].(string)
				}
				if to, ok := renames[m["mountPath"].(string)]; ok {
					m["mountPath"] = to
				}
			}
			_ = unstructured.SetNestedSlice(c, mounts, "volumeMounts")
			args, _, _ := unstructured.NestedStringSlice(c, "args")
			for i, a := range args {
				for from, to := range renames {
					if k, v, ok := strings.Cut(a, "="); ok && (v == from || strings.HasPrefix(v, from+"/")) {
						args[i] = k + "=" + to + strings.TrimPrefix(v, from)
					}
				}
				// The kubelet's cgroup: the host's (systemd's
				// kubelet.service) is not this node's kubelet's.
				if v, ok := strings.CutPrefix(a, probeCgroupFlag); ok {
					if cgroupMount == "" || !strings.HasPrefix(v, cgroupMount+"/") {
						return fmt.Errorf("kubenode: overlay: %s%s is not in a mount of the host's /sys/fs/cgroup", probeCgroupFlag, v)
					}
					args[i] = probeCgroupFlag + path.Join(cgroupMount, kubeletCgroup)
				}
			}
			if len(args) > 0 {
				_ = unstructured.SetNestedStringSlice(c, args, "args")
			}
		}
		_ = unstructured.SetNestedSlice(spec, containers, "containers")
		if n.cfg.CNI == CNIMacvlan && o.GetKind() == "Deployment" && o.GetName() == "ferry-ca" {
			spec["hostNetwork"] = true
			spec["dnsPolicy"] = "ClusterFirstWithHostNet"
			_ = unstructured.SetNestedField(o.Object, int64(1), "spec", "replicas")
		}
		if err := unstructured.SetNestedMap(o.Object, spec, "spec", "template", "spec"); err != nil {
			return fmt.Errorf("kubenode: overlay: %w", err)
		}
	}
	if images == 0 {
		return fmt.Errorf("kubenode: overlay: no container runs %s", image)
	}
	return nil
}
