package kubenode

import (
	"path/filepath"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/ferrymesh/ferry/internal/kubetest"
)

// TestOverlay checks Overlay on deploy/ (pod mode) for both CNIs: the
// image, every host path moved to the node's own, the named ones (the CNI
// socket's directory, the pods' namespaces) at the node's path inside the
// container too with the arguments following, --probe-cgroup at the node's
// kubelet's cgroup in the mount of the machine's cgroup v2 hierarchy, and
// the CA in the node's network only on macvlan.
func TestOverlay(t *testing.T) {
	for _, cniName := range []string{CNIBridge, CNIMacvlan} {
		t.Run(cniName, func(t *testing.T) {
			n, err := New(Config{Dir: "/x/node", CNI: cniName})
			if err != nil {
				t.Fatal(err)
			}
			objs := kubetest.RenderDeploy(t, ".")
			if err := n.Overlay(objs, "t1"); err != nil {
				t.Fatal(err)
			}
			var ds appsv1.DaemonSet
			var ca appsv1.Deployment
			for _, o := range objs {
				switch o.GetKind() {
				case "DaemonSet":
					convert(t, o, &ds)
				case "Deployment":
					convert(t, o, &ca)
				}
			}
			hostPaths := map[string]string{}
			for _, v := range ds.Spec.Template.Spec.Volumes {
				if v.HostPath != nil {
					hostPaths[v.Name] = v.HostPath.Path
				}
			}
			want := map[string]string{
				"bpffs": n.BPFFS(), "cni-conf": n.CNIConfDir(), "cni-bin": n.CNIBinDir(),
				"netns": n.NetnsDir(), "ferry-run": n.RunDir(), "cri-socket": n.ContainerdAddress(),
				"host-cgroup": n.CgroupV2(),
			}
			for name, p := range want {
				if hostPaths[name] != p {
					t.Errorf("volume %s: hostPath %q, want %q", name, hostPaths[name], p)
				}
			}
			c := ds.Spec.Template.Spec.Containers[0]
			mounts := map[string]string{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m.MountPath
			}
			for name, p := range map[string]string{"bpffs": "/sys/fs/bpf", "cni-conf": "/host/etc/cni/net.d", "netns": n.NetnsDir(), "ferry-run": n.RunDir(), "host-cgroup": "/host/sys/fs/cgroup"} {
				if mounts[name] != p {
					t.Errorf("mount %s at %q, want %q", name, mounts[name], p)
				}
			}
			if want := filepath.Join(n.CgroupV2(), CgroupRoot, "kubelet"); n.KubeletCgroup() != want {
				t.Errorf("KubeletCgroup() = %s, want %s: the --probe-cgroup below names that", n.KubeletCgroup(), want)
			}
			for _, a := range []string{
				"--cni-socket=" + n.RunDir() + "/cni.sock", "--state-dir=" + n.RunDir(), "--bpf-pin-dir=/sys/fs/bpf/ferry", "--cni-conf-dir=/host/etc/cni/net.d",
				"--probe-source=169.254.7.127", "--probe-cgroup=/host/sys/fs/cgroup/" + CgroupRoot + "/kubelet",
			} {
				if !slices.Contains(c.Args, a) {
					t.Errorf("args %q: no %s", c.Args, a)
				}
			}
			for _, img := range []string{c.Image, ca.Spec.Template.Spec.Containers[0].Image} {
				if img != "ghcr.io/ferrymesh/ferry:t1" {
					t.Errorf("image %q, want tag t1", img)
				}
			}
			caHost := ca.Spec.Template.Spec.HostNetwork
			if caHost != (cniName == CNIMacvlan) || caHost && (*ca.Spec.Replicas != 1 || ca.Spec.Template.Spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet) {
				t.Errorf("CA: hostNetwork %v, %d replicas, dnsPolicy %s", caHost, *ca.Spec.Replicas, ca.Spec.Template.Spec.DNSPolicy)
			}
		})
	}
}

func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatal(err)
	}
}
