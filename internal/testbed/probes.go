package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
)

// ProbeSource is the address the agents of a pod-capture testbed send the
// kubelet's probes from (--probe-source), as Istio does.
const ProbeSource = "169.254.7.127"

// cgroupRoot holds, per pod-capture testbed, a mount of the cgroup v2
// hierarchy of its own (whatever the host mounted), named after its prefix;
// each node's "kubelet" cgroup lives under it as <node>-kubelet.
const cgroupRoot = "/run/ferry-testbed-cgroups"

func cgroupMount(prefix string) string { return filepath.Join(cgroupRoot, prefix) }

// KubeletCgroup is node's kubelet cgroup (--probe-cgroup).
func (tb *Testbed) KubeletCgroup(node Node) string {
	return filepath.Join(cgroupMount(tb.Prefix), node.Name+"-kubelet")
}

// makeKubeletCgroups mounts the cgroup v2 hierarchy and makes each node's
// kubelet cgroup.
func (tb *Testbed) makeKubeletCgroups() error {
	mnt := cgroupMount(tb.Prefix)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if err := unix.Mount("cgroup2", mnt, "cgroup2", 0, ""); err != nil {
		return fmt.Errorf("testbed: mount cgroup2 on %s: %w", mnt, err)
	}
	for _, n := range tb.Nodes {
		if err := os.Mkdir(tb.KubeletCgroup(n), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("testbed: %w", err)
		}
	}
	return nil
}

// removeKubeletCgroups undoes makeKubeletCgroups; the cgroups' processes
// must be gone.
func removeKubeletCgroups(prefix string) error {
	mnt := cgroupMount(prefix)
	if _, err := os.Stat(mnt); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	cgs, _ := filepath.Glob(filepath.Join(mnt, "node*-kubelet"))
	for _, cg := range cgs {
		if err := os.Remove(cg); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("testbed: %w", err))
		}
	}
	if err := unix.Unmount(mnt, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("testbed: umount %s: %w", mnt, err))
	}
	if err := os.Remove(mnt); err != nil {
		errs = append(errs, fmt.Errorf("testbed: %w", err))
	}
	os.Remove(cgroupRoot) // when no other testbed uses it
	return errors.Join(errs...)
}

// Probe runs argv in node's network namespace as the node's kubelet would:
// inside its kubelet cgroup, so its connections to captured pods leave from
// ProbeSource. It returns the command's standard output.
func (tb *Testbed) Probe(ctx context.Context, node Node, argv ...string) (string, error) {
	script := `echo $$ > "$1/cgroup.procs" && shift && exec nsenter --net="$0" -- "$@"`
	args := append([]string{"-c", script, filepath.Join(netns.NamedDir, node.Netns), tb.KubeletCgroup(node)}, argv...)
	cmd := exec.CommandContext(ctx, "sh", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("testbed: probe %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
