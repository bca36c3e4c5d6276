package kubenode

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procRecord identifies one daemon Up started. Start (the process's start
// time in clock ticks since boot) guards against a recycled PID.
type procRecord struct {
	Name  string `json:"name"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// startDaemon starts bin as a daemon of its own session (so it outlives
// the process that ran Up, and its process group can be signalled as one),
// its output in Dir/logs/name.log. With cgroup (a cgroup v2 directory) the
// process is created in that cgroup (clone3's CLONE_INTO_CGROUP): it runs
// nothing outside it, not even its first instruction.
func (n *Node) startDaemon(name, cgroup, bin string, args ...string) (procRecord, error) {
	logPath := n.LogPath(name)
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return procRecord{}, fmt.Errorf("kubenode: %w", err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = n.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cgroup != "" {
		cg, err := os.Open(cgroup)
		if err != nil {
			return procRecord{}, fmt.Errorf("kubenode: %s's cgroup: %w", name, err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
	}
	if err := cmd.Start(); err != nil {
		return procRecord{}, fmt.Errorf("kubenode: start %s: %w", name, err)
	}
	// Reap it when it exits, so a long-lived caller (a test) keeps no zombie.
	go func() { _ = cmd.Wait() }()
	start, _ := procStart(cmd.Process.Pid)
	return procRecord{Name: name, PID: cmd.Process.Pid, Start: start}, nil
}

// procStart returns field 22 of /proc/PID/stat (start time), and whether
// the process is a zombie or gone (false).
func procStart(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces: split after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, false
	}
	start, _ := strconv.ParseUint(fields[19], 10, 64)
	return start, fields[0] != "Z" && fields[0] != "X"
}

// alive reports whether the recorded process still runs (same PID, same
// start time, not a zombie).
func (r procRecord) alive() bool {
	start, ok := procStart(r.PID)
	return ok && start == r.Start
}

// stopProcs sends SIGTERM to each live process's group, waits up to grace
// for them to exit and then SIGKILLs what is left.
func stopProcs(recs []procRecord, grace time.Duration) {
	var live []procRecord
	for _, r := range recs {
		if r.alive() {
			_ = syscall.Kill(-r.PID, syscall.SIGTERM)
			_ = syscall.Kill(r.PID, syscall.SIGTERM)
			live = append(live, r)
		}
	}
	deadline := time.Now().Add(grace)
	for len(live) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		live = slicesFilter(live, procRecord.alive)
	}
	for _, r := range live {
		_ = syscall.Kill(-r.PID, syscall.SIGKILL)
		_ = syscall.Kill(r.PID, syscall.SIGKILL)
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(live) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		live = slicesFilter(live, procRecord.alive)
	}
}

func slicesFilter[T any](s []T, keep func(T) bool) []T {
	out := s[:0]
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// procsReferencing returns the processes whose command line names a path
// at or below dir: the daemons (their flags point into dir) and
// containerd's shims (-address dir/...), but not the caller or its
// ancestors (a `kube-node down --dir DIR` names dir too).
func procsReferencing(dir string) []procRecord {
	skip := map[int]bool{}
	for pid := os.Getpid(); pid > 1; {
		skip[pid] = true
		ppid, err := parentPID(pid)
		if err != nil {
			break
		}
		pid = ppid
	}
	ents, _ := os.ReadDir("/proc")
	var out []procRecord
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || skip[pid] {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			if refersTo(string(arg), dir) {
				start, ok := procStart(pid)
				if ok {
					out = append(out, procRecord{Name: string(bytes.SplitN(b, []byte{0}, 2)[0]), PID: pid, Start: start})
				}
				break
			}
		}
	}
	return out
}

// refersTo reports whether arg names dir or a path below it, alone or as
// a flag value (--x=dir/..., unix://dir/...).
func refersTo(arg, dir string) bool {
	for i := 0; ; {
		j := strings.Index(arg[i:], dir)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(dir)
		// dir starts with '/': a '/' before it is unix:// or a doubled slash.
		before := j == 0 || strings.ContainsRune("=:/,", rune(arg[j-1]))
		if before && (end == len(arg) || strings.ContainsRune("/,", rune(arg[end]))) {
			return true
		}
		i = j + 1
	}
}

func parentPID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return 0, errors.New("bad stat")
	}
	return strconv.Atoi(fields[1])
}
