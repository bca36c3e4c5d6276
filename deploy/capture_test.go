package deploy_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubetest"
)

// podModeArgs are the in-pod capture arguments of deploy/base's agent,
// which deploy/capture-node takes out.
var podModeArgs = []string{
	"--capture=pod",
	"--cni-conf-dir=/host/etc/cni/net.d",
	"--cni-bin-dir=/host/opt/cni/bin",
	"--cni-socket=/var/run/ferry/cni.sock",
	"--state-dir=/var/run/ferry",
	"--cri-socket=unix:///run/containerd/containerd.sock",
	"--probe-source=169.254.7.127",
	"--probe-cgroup=/host/sys/fs/cgroup/system.slice/kubelet.service",
}

// podModeVolumes are the host directories in-pod capture mounts into the
// agent, by volume name.
var podModeVolumes = map[string]struct {
	hostPath, mountPath string
	readOnly            bool
	propagation         corev1.MountPropagationMode
}{
	"cni-conf":    {"/etc/cni/net.d", "/host/etc/cni/net.d", false, ""},
	"cni-bin":     {"/opt/cni/bin", "/host/opt/cni/bin", false, ""},
	"ferry-run":   {"/var/run/ferry", "/var/run/ferry", false, ""},
	"netns":       {"/var/run/netns", "/var/run/netns", false, corev1.MountPropagationHostToContainer},
	"cri-socket":  {"/run/containerd/containerd.sock", "/run/containerd/containerd.sock", true, ""},
	"host-cgroup": {"/sys/fs/cgroup", "/host/sys/fs/cgroup", true, ""},
}

// agentDaemonSet returns the agent's DaemonSet among objs.
func agentDaemonSet(t *testing.T, objs []*unstructured.Unstructured) *appsv1.DaemonSet {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" && o.GetName() == "ferry" {
			var ds appsv1.DaemonSet
			fromUnstructured(t, o, &ds)
			return &ds
		}
	}
	t.Fatal("no agent DaemonSet")
	return nil
}

// TestPodCaptureInstalls checks the in-pod capture of the installs that
// run it (the default and deploy/istiod): the pod mode's arguments,
// SYS_ADMIN, and the five host directories and the CRI socket it needs —
// each mounted where the agent's arguments point, the CNI socket's
// directory and the namespaces' at their host paths (the plugin on the
// node and the runtime name them by those), the kubelet's cgroup
// (--probe-cgroup) inside the node's cgroup hierarchy, mounted read-only.
func TestPodCaptureInstalls(t *testing.T) {
	for _, dir := range []string{".", deploy.IstiodOverlay} {
		t.Run(dir, func(t *testing.T) {
			ds := agentDaemonSet(t, kubetest.RenderDeploy(t, dir))
			c := &ds.Spec.Template.Spec.Containers[0]
			for _, a := range podModeArgs {
				if !slices.Contains(c.Args, a) {
					t.Errorf("args %q: no %s", c.Args, a)
				}
			}
			if !slices.Contains(c.SecurityContext.Capabilities.Add, "SYS_ADMIN") {
				t.Errorf("capabilities %v: no SYS_ADMIN (setns into pods)", c.SecurityContext.Capabilities.Add)
			}
			mounts := map[string]corev1.VolumeMount{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m
			}
			for name, want := range podModeVolumes {
				var vol *corev1.Volume
				for i, v := range ds.Spec.Template.Spec.Volumes {
					if v.Name == name {
						vol = &ds.Spec.Template.Spec.Volumes[i]
					}
				}
				if vol == nil || vol.HostPath == nil || vol.HostPath.Path != want.hostPath {
					t.Errorf("volume %s = %+v, want hostPath %s", name, vol, want.hostPath)
					continue
				}
				m, ok := mounts[name]
				if !ok || m.MountPath != want.mountPath || m.ReadOnly != want.readOnly || propagation(m) != want.propagation {
					t.Errorf("mount of %s = %+v, want %s (read-only %v), propagation %q", name, m, want.mountPath, want.readOnly, want.propagation)
				}
			}
			// The arguments point into those mounts.
			arg := func(name string) string {
				for _, a := range c.Args {
					if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
						return v
					}
				}
				return ""
			}
			for flag, vol := range map[string]string{"cni-conf-dir": "cni-conf", "cni-bin-dir": "cni-bin", "state-dir": "ferry-run"} {
				if arg(flag) != podModeVolumes[vol].mountPath {
					t.Errorf("--%s=%s, want the mount of %s (%s)", flag, arg(flag), vol, podModeVolumes[vol].mountPath)
				}
			}
			if sock := arg("cni-socket"); !strings.HasPrefix(sock, podModeVolumes["ferry-run"].hostPath+"/") {
				t.Errorf("--cni-socket=%s: want it under %s, the same path on the node", sock, podModeVolumes["ferry-run"].hostPath)
			}
			if cri := arg("cri-socket"); cri != "unix://"+podModeVolumes["cri-socket"].mountPath {
				t.Errorf("--cri-socket=%s, want the mounted socket %s", cri, podModeVolumes["cri-socket"].mountPath)
			}
			// The container's /sys/fs/cgroup is its own cgroup namespace's:
			// the kubelet's cgroup is only found in the node's hierarchy,
			// mounted.
			if cg := arg("probe-cgroup"); !strings.HasPrefix(cg, podModeVolumes["host-cgroup"].mountPath+"/") {
				t.Errorf("--probe-cgroup=%s: want it in the node's cgroup hierarchy, mounted at %s", cg, podModeVolumes["host-cgroup"].mountPath)
			}
		})
	}
}

// TestCaptureNodeOverlay checks what deploy/capture-node renders to: every
// object of the default install, unchanged but the agent's DaemonSet, which
// differs from deploy/base's only by --capture=node instead of the pod
// mode's arguments, no SYS_ADMIN, and none of the pod mode's host mounts.
func TestCaptureNodeOverlay(t *testing.T) {
	def := kubetest.RenderDeploy(t, ".")
	got := kubetest.RenderDeploy(t, deploy.CaptureNodeOverlay)
	keys := func(objs []*unstructured.Unstructured) []string {
		var k []string
		for _, o := range objs {
			k = append(k, objectKey(o))
		}
		return k
	}
	if !slices.Equal(keys(got), keys(def)) {
		t.Fatalf("objects %q, want the default install's %q", keys(got), keys(def))
	}
	for i, o := range got {
		if o.GetKind() != "DaemonSet" && !reflect.DeepEqual(o, def[i]) {
			t.Errorf("%s differs from the default install's", objectKey(o))
		}
	}
	ds, baseDS := agentDaemonSet(t, got), agentDaemonSet(t, def)
	c := &ds.Spec.Template.Spec.Containers[0]
	base := &baseDS.Spec.Template.Spec.Containers[0]
	want := slices.DeleteFunc(slices.Clone(base.Args), func(a string) bool { return slices.Contains(podModeArgs, a) })
	if want = append(want, "--capture=node"); !slices.Equal(c.Args, want) {
		t.Errorf("args %q, want deploy/base's without the pod mode's, and --capture=node: %q", c.Args, want)
	}
	wantCaps := slices.DeleteFunc(slices.Clone(base.SecurityContext.Capabilities.Add), func(c corev1.Capability) bool { return c == "SYS_ADMIN" })
	if !slices.Equal(c.SecurityContext.Capabilities.Add, wantCaps) {
		t.Errorf("capabilities %v, want %v", c.SecurityContext.Capabilities.Add, wantCaps)
	}
	for _, m := range c.VolumeMounts {
		if _, ok := podModeVolumes[m.Name]; ok {
			t.Errorf("mount of %s left in node mode", m.Name)
		}
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if _, ok := podModeVolumes[v.Name]; ok {
			t.Errorf("volume %s left in node mode", v.Name)
		}
	}

	// Nothing else changed.
	base.Args = c.Args
	base.SecurityContext.Capabilities.Add = c.SecurityContext.Capabilities.Add
	base.VolumeMounts = slices.DeleteFunc(base.VolumeMounts, func(m corev1.VolumeMount) bool { _, ok := podModeVolumes[m.Name]; return ok })
	baseDS.Spec.Template.Spec.Volumes = slices.DeleteFunc(baseDS.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { _, ok := podModeVolumes[v.Name]; return ok })
	if !reflect.DeepEqual(ds, baseDS) {
		t.Errorf("the DaemonSet differs from deploy/base's in more than its args, capabilities and the pod mode's volumes:\n%+v\nwant\n%+v", ds, baseDS)
	}
}

func propagation(m corev1.VolumeMount) corev1.MountPropagationMode {
	if m.MountPropagation == nil {
		return ""
	}
	return *m.MountPropagation
}

// TestAgentSecurityContext checks the agent's pod in every install for
// what deploy/README.md promises: not privileged, no privilege escalation,
// a read-only root, RuntimeDefault seccomp, every capability dropped but
// the install's own list, no host PID or IPC namespace, and no mount that
// propagates from the container to the host.
func TestAgentSecurityContext(t *testing.T) {
	for dir, wantCaps := range map[string][]corev1.Capability{
		".":                       {"NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"},
		deploy.IstiodOverlay:      {"NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"},
		deploy.CaptureNodeOverlay: {"NET_ADMIN", "BPF", "PERFMON"},
	} {
		t.Run(dir, func(t *testing.T) {
			var ds appsv1.DaemonSet
			for _, o := range kubetest.RenderDeploy(t, dir) {
				if o.GetKind() == "DaemonSet" {
					fromUnstructured(t, o, &ds)
				}
			}
			spec := ds.Spec.Template.Spec
			if spec.HostPID || spec.HostIPC || len(spec.InitContainers) > 0 || len(spec.Containers) != 1 {
				t.Errorf("pod: hostPID %v, hostIPC %v, %d init containers, %d containers; want neither namespace and one container",
					spec.HostPID, spec.HostIPC, len(spec.InitContainers), len(spec.Containers))
			}
			sc := spec.Containers[0].SecurityContext
			switch {
			case sc == nil:
				t.Fatal("no securityContext")
			case sc.Privileged == nil || *sc.Privileged,
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation,
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem,
				sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault,
				sc.ProcMount != nil:
				t.Errorf("securityContext %+v: want not privileged, no escalation, read-only root, RuntimeDefault seccomp, default /proc", sc)
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(sc.Capabilities.Add, wantCaps) {
				t.Errorf("capabilities %+v, want drop ALL, add %v", sc.Capabilities, wantCaps)
			}
			for _, m := range spec.Containers[0].VolumeMounts {
				if propagation(m) == corev1.MountPropagationBidirectional {
					t.Errorf("mount %s propagates to the host (Bidirectional)", m.Name)
				}
			}
		})
	}
}
