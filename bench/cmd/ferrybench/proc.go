package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a peer process started in a namespace, in its own process group.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startProc runs argv in the namespace ns (through `ip netns exec`, which
// execs in place, so the pid is the peer's), output to logDir/name.log.
func startProc(ns, logDir, name string, argv ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	// No Pdeathsig: it follows the forking thread, and the suite ends
	// threads it locked into namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after 5 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
}

// tail returns the last lines of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

// procStat is what the suite reads of one process.
type procStat struct {
	ppid     int
	cpuTicks uint64 // utime + stime
	rssKiB   uint64
}

const clockTicks = 100 // USER_HZ on Linux

// treeUsage sums CPU and RSS over the processes rooted at each pid in roots.
func treeUsage(roots []int) (cpu time.Duration, rssKiB uint64) {
	all := map[int]procStat{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok {
			all[pid] = st
		}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	// Mark descendants: iterate until no change (trees are shallow).
	for range 8 {
		changed := false
		for pid, st := range all {
			if !in[pid] && in[st.ppid] {
				in[pid] = true
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	var ticks uint64
	for pid := range in {
		st, ok := all[pid]
		if !ok {
			continue
		}
		ticks += st.cpuTicks
		rssKiB += st.rssKiB
	}
	return time.Duration(ticks) * time.Second / clockTicks, rssKiB
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15, rss 24.
	if len(f) < 22 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	rssPages, _ := strconv.ParseUint(f[21], 10, 64)
	return procStat{ppid: ppid, cpuTicks: ut + st, rssKiB: rssPages * uint64(os.Getpagesize()) / 1024}, true
}

// waitFor polls cond every 50 ms until it returns nil, ctx ends or timeout.
func waitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
