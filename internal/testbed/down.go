package testbed

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
)

// Down removes the testbed; see Teardown.
func (tb *Testbed) Down(keepLogs bool, log io.Writer) error {
	return Teardown(tb.Prefix, tb.RunDir, keepLogs, log)
}

// Teardown removes everything named after prefix, whether or not its run
// finished: it stops every process in the run's namespaces and those
// recorded in runDir's pids/, deletes the namespaces (their veths go with
// them), removes the BPF pin directories and the registry entry, and
// removes runDir when Up chose it and keepLogs is false. runDir may be
// empty when it is gone. It never signals the calling process or its parent.
func Teardown(prefix, runDir string, keepLogs bool, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	if !PrefixRE.MatchString(prefix) {
		return fmt.Errorf("testbed: bad prefix %s", prefix)
	}
	namespaces := netnsNames(prefix)
	var pids []int
	for _, ns := range namespaces {
		pids = append(pids, pidsIn(ns)...)
	}
	if runDir != "" {
		files, _ := filepath.Glob(filepath.Join(runDir, "pids", "*.pid"))
		for _, f := range files {
			if pid, ok := alive(f); ok {
				pids = append(pids, pid)
			}
		}
	}
	pids = slices.DeleteFunc(pids, func(pid int) bool { return pid == os.Getpid() || pid == os.Getppid() })
	slices.Sort(pids)
	pids = slices.Compact(pids)
	signal(pids, syscall.SIGTERM)
	if !waitExit(pids, 5*time.Second) {
		signal(pids, syscall.SIGKILL)
		waitExit(pids, 5*time.Second)
	}
	var errs []error
	for _, ns := range namespaces {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("testbed: ip netns del %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	pins, _ := filepath.Glob(filepath.Join(BPFFS, prefix+"-*"))
	for _, pin := range pins {
		if err := unix.Unmount(pin, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("testbed: umount %s: %w", pin, err))
		}
		if err := os.RemoveAll(pin); err != nil {
			errs = append(errs, fmt.Errorf("testbed: %w", err))
		}
	}
	if err := removeKubeletCgroups(prefix); err != nil {
		errs = append(errs, err)
	}
	os.Remove(filepath.Join(Registry, prefix))
	if runDir != "" {
		os.RemoveAll(filepath.Join(runDir, "pids"))
		if _, err := os.Stat(filepath.Join(runDir, "state", "owned")); err == nil && !keepLogs {
			if err := os.RemoveAll(runDir); err != nil {
				errs = append(errs, fmt.Errorf("testbed: %w", err))
			}
		}
	}
	fmt.Fprintf(log, "testbed: down %s: removed %d netns\n", prefix, len(namespaces))
	return errors.Join(errs...)
}

// Leftovers lists the network namespaces and BPF pins named after prefix,
// as "netns NAME" and "pin PATH": nothing once Teardown succeeded.
func Leftovers(prefix string) []string {
	var left []string
	for _, ns := range netnsNames(prefix) {
		left = append(left, "netns "+ns)
	}
	pins, _ := filepath.Glob(filepath.Join(BPFFS, prefix+"-*"))
	for _, p := range pins {
		left = append(left, "pin "+p)
	}
	if _, err := os.Stat(cgroupMount(prefix)); err == nil {
		left = append(left, "cgroup mount "+cgroupMount(prefix))
	}
	return left
}

var leftoverRE = regexp.MustCompile(`^(ftb[0-9a-f]{6})-`)

// Known returns the prefix of every testbed on this machine, sorted:
// registered runs, and leftovers of killed runs found by netns or pin name.
func Known() []string {
	var out []string
	if entries, err := os.ReadDir(Registry); err == nil {
		for _, e := range entries {
			out = append(out, e.Name())
		}
	}
	names := netnsNames("")
	if entries, err := os.ReadDir(BPFFS); err == nil {
		for _, e := range entries {
			if strings.Contains(e.Name(), "-node") {
				names = append(names, e.Name())
			}
		}
	}
	for _, n := range names {
		if m := leftoverRE.FindStringSubmatch(n); m != nil {
			out = append(out, m[1])
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// RunDirOf returns the run directory registered for prefix, or "" when the
// run is not registered or its directory is gone.
func RunDirOf(prefix string) string {
	b, err := os.ReadFile(filepath.Join(Registry, prefix))
	if err != nil {
		return ""
	}
	dir := strings.TrimSpace(string(b))
	if _, err := os.Stat(filepath.Join(dir, "state")); err != nil {
		return ""
	}
	return dir
}

// Select finds a run: by run directory if runDir is set, else by prefix,
// else the only testbed on the machine. It returns the prefix and the run
// directory ("" when it is gone).
func Select(runDir, prefix string) (string, string, error) {
	if runDir != "" {
		b, err := os.ReadFile(filepath.Join(runDir, "state", "prefix"))
		if err != nil {
			return "", "", fmt.Errorf("testbed: %s: not a testbed run dir", runDir)
		}
		dir, err := filepath.Abs(runDir)
		return strings.TrimSpace(string(b)), dir, err
	}
	if prefix == "" {
		all := Known()
		if len(all) != 1 {
			return "", "", fmt.Errorf("testbed: %d testbeds on this machine (%s); pick one with --prefix or --run-dir", len(all), strings.Join(all, " "))
		}
		prefix = all[0]
	}
	if !PrefixRE.MatchString(prefix) {
		return "", "", fmt.Errorf("testbed: bad prefix %s (want ftb + 6 hex digits)", prefix)
	}
	return prefix, RunDirOf(prefix), nil
}

// netnsNames lists the named network namespaces that start with prefix+"-"
// (all testbed-looking ones when prefix is empty).
func netnsNames(prefix string) []string {
	entries, err := os.ReadDir(netns.NamedDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if prefix == "" && leftoverRE.MatchString(e.Name()) || prefix != "" && strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// pidsIn lists the processes in the named network namespace, as `ip netns
// pids` does: those whose /proc/PID/ns/net is that namespace.
func pidsIn(name string) []int {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join(netns.NamedDir, name), &want); err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			out = append(out, pid)
		}
	}
	return out
}

func signal(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		syscall.Kill(pid, sig)
	}
}
