package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/google/go-containerregistry/pkg/name"
)

// TestPrivilegedImageRuns loads the image into a private containerd (its own
// root, state, socket and /run, in its own mount namespace) with `ctr images
// import`, and runs `ferry version` in it as deploy/ runs containers: image
// user, read-only root, containerd's default seccomp profile. The archive is
// built from a real static ferry binary exactly as `make image` builds it.
func TestPrivilegedImageRuns(t *testing.T) {
	testutil.Privileged(t)
	for _, b := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "mount"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: run scripts/install-deps (apt package containerd)", b)
		}
	}
	dir := t.TempDir()

	// The Makefile's flags, so the test and `make image` share the build cache.
	const version = "image-test"
	bin := filepath.Join(dir, "ferry")
	gobuild := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/ferry")
	gobuild.Dir = filepath.Join("..", "..")
	gobuild.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := gobuild.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ferry: %v\n%s", err, out)
	}
	if err := checkBinary(bin, runtime.GOARCH); err != nil {
		t.Fatal(err)
	}
	binary, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := build(spec{Binary: binary, Arch: runtime.GOARCH, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag("ghcr.io/ferrymesh/ferry:dev", name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "ferry-image.tar")
	if err := writeArchive(archive, ref, img); err != nil {
		t.Fatal(err)
	}

	c := startContainerd(t, filepath.Join(dir, "containerd"))
	if out, err := c.ctr(t, "images", "import", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}

	// What containerd makes of the image config: entrypoint and user.
	if out, err := c.ctr(t, "containers", "create", "--read-only", ref.String(), "ferry-config"); err != nil {
		t.Fatalf("ctr containers create: %v\n%s", err, out)
	}
	info, err := c.ctr(t, "containers", "info", "ferry-config")
	if err != nil {
		t.Fatalf("ctr containers info: %v\n%s", err, info)
	}
	var ci struct {
		Spec struct {
			Process struct {
				Args []string
				User struct{ UID, GID uint32 }
			}
		}
	}
	if err := json.Unmarshal(info, &ci); err != nil {
		t.Fatalf("ctr containers info: %v\n%s", err, info)
	}
	if p := ci.Spec.Process; !slices.Equal(p.Args, []string{"/usr/local/bin/ferry"}) || p.User.UID != nonUser || p.User.GID != nonGroup {
		t.Errorf("container process %+v: want args [/usr/local/bin/ferry] as %d:%d", p, nonUser, nonGroup)
	}
	if out, err := c.ctr(t, "containers", "rm", "ferry-config"); err != nil {
		t.Errorf("ctr containers rm: %v\n%s", err, out)
	}

	out, err := c.ctr(t, "run", "--rm", "--read-only", "--seccomp", "--fifo-dir", c.fifoDir, "--cgroup", "/"+c.cgroup,
		ref.String(), "ferry-version", "/usr/local/bin/ferry", "version")
	if err != nil {
		t.Fatalf("ctr run ferry version: %v\n%s\ncontainerd log:\n%s", err, out, c.log())
	}
	if got, want := string(out), "ferry "+version+"\n"; got != want {
		t.Errorf("ferry version in the container printed %q, want %q", got, want)
	}
}

// privateContainerd is a containerd for one test: everything it and its shims
// write is under dir, or under the /run its mount namespace sees (dir/run
// bind-mounted), so it never meets a system containerd.
type privateContainerd struct {
	dir, sock, fifoDir string
	cgroup             string // ctr run's cgroup, under each v1 controller's root
	cmd                *exec.Cmd
	done               chan struct{} // closed when containerd has exited
	mntNS              string        // its mount namespace, e.g. "mnt:[4026532173]"
}

func startContainerd(t *testing.T, dir string) *privateContainerd {
	t.Helper()
	c := &privateContainerd{
		dir:     dir,
		sock:    filepath.Join(dir, "containerd.sock"),
		fifoDir: filepath.Join(dir, "fifo"),
		cgroup:  fmt.Sprintf("ferry-image-test-%d", os.Getpid()),
		done:    make(chan struct{}),
	}
	for _, d := range []string{"run", "fifo", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// No CRI (no kubelet here); no btrfs, zfs, devmapper, aufs or tracing;
	// the opt plugin would install into /opt/containerd.
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "opt"))
	configFile := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()

	// A new mount namespace (Go makes / private in it before exec): the
	// snapshot and rootfs mounts of containerd and its shims stay in it and
	// die with it. Shims put their sockets and runc its state under
	// /run/containerd whatever the config says: that /run is dir/run here.
	c.cmd = exec.Command("sh", "-c", `mount --bind "$1" /run && exec containerd --config "$2"`,
		"sh", filepath.Join(dir, "run"), configFile)
	c.cmd.Env = append(os.Environ(), "TMPDIR="+filepath.Join(dir, "tmp"))
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	go func() {
		c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() { c.stop(t) })

	// Start returns after the exec: the process is in its namespace.
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.cmd.Process.Pid))
	self, _ := os.Readlink("/proc/self/ns/mnt")
	if err != nil || ns == self {
		// stop never hunts processes in the test's own namespace.
		t.Fatalf("containerd's mount namespace %q (%v): want one of its own, not %q", ns, err, self)
	}
	c.mntNS = ns

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-c.done:
			t.Fatalf("containerd exited: %v\n%s", c.cmd.ProcessState, c.log())
		default:
		}
		if out, err := c.ctr(t, "version"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("containerd not serving on %s after 60s: %v\n%s\n%s", c.sock, err, out, c.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// ctr runs ctr against this containerd in namespace ferry-test and returns
// its standard output (with standard error appended when it fails).
func (c *privateContainerd) ctr(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.sock, "-n", "ferry-test"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		out = append(out, stderr.Bytes()...)
	}
	return out, err
}

func (c *privateContainerd) log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "containerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop ends, by PID, whatever the test started: processes left in the
// container's cgroup, containerd, then every process in its mount namespace
// (the shims, which outlive containerd); then it removes the cgroups runc
// made and fails the test if a process, cgroup or mount under dir remains.
func (c *privateContainerd) stop(t *testing.T) {
	t.Helper()
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", c.cgroup))
	if fi, err := os.Stat(filepath.Join("/sys/fs/cgroup", c.cgroup)); err == nil && fi.IsDir() {
		cgroups = append(cgroups, filepath.Join("/sys/fs/cgroup", c.cgroup))
	}
	for _, cg := range cgroups {
		for _, pid := range cgroupPIDs(cg) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}

	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		t.Errorf("containerd did not exit on SIGTERM; killing it")
		c.cmd.Process.Kill()
		<-c.done
	}

	var left []int
	for range 100 {
		left = c.nsPIDs()
		if len(left) == 0 {
			break
		}
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("processes %v still in containerd's mount namespace", left)
	}

	for _, cg := range cgroups {
		var err error
		for range 50 {
			if err = syscall.Rmdir(cg); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
	}

	// The mounts lived in containerd's namespace; none should be visible
	// here. Detach any that is, deepest first, so the TempDir can go.
	mounts := mountsUnder(c.dir)
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, m := range mounts {
		t.Errorf("mount %s left in the test's namespace", m)
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// nsPIDs lists the processes in containerd's mount namespace.
func (c *privateContainerd) nsPIDs() []int {
	if c.mntNS == "" {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == c.mntNS {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cgroupPIDs(cg string) []int {
	b, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
	var pids []int
	for f := range strings.FieldsSeq(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists the mount points at or below dir in this namespace.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var ms []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			ms = append(ms, f[4])
		}
	}
	return ms
}
