package testbed

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// WriteStatus describes the testbed named prefix: its namespaces with the
// processes in them, its pins and, when its run directory is left, its nodes
// and pods with their agents and servers.
func WriteStatus(w io.Writer, prefix string) {
	dir := RunDirOf(prefix)
	shown := dir
	if shown == "" {
		shown = "(gone)"
	}
	fmt.Fprintf(w, "testbed %s  run dir: %s\n", prefix, shown)
	for _, ns := range netnsNames(prefix) {
		var pids []string
		for _, pid := range pidsIn(ns) {
			pids = append(pids, strconv.Itoa(pid))
		}
		if len(pids) == 0 {
			pids = []string{"none"}
		}
		fmt.Fprintf(w, "  netns %-40s pids: %s\n", ns, strings.Join(pids, " "))
	}
	pins, _ := filepath.Glob(filepath.Join(BPFFS, prefix+"-*"))
	for _, pin := range pins {
		n := 0
		filepath.WalkDir(pin, func(string, os.DirEntry, error) error { n++; return nil })
		fmt.Fprintf(w, "  pins  %s (%d entries)\n", pin, n-1)
	}
	if dir == "" {
		return
	}
	tb, err := Load(dir)
	if err != nil {
		fmt.Fprintf(w, "  %v\n", err)
		return
	}
	for _, n := range tb.Nodes {
		state := "no agent"
		if pid, ok := tb.AgentPID(n.Name); ok {
			state = fmt.Sprintf("agent pid %d", pid)
		}
		fmt.Fprintf(w, "  node  %-8s %-12s pods %-16s %s\n", n.Name, n.IP, n.PodCIDR, state)
	}
	for _, p := range tb.Pods {
		state := "down"
		if _, ok := tb.PodPID(p); ok {
			state = "up"
		}
		fmt.Fprintf(w, "  pod   %-24s %-14s %-6s sa=%-10s enrolled=%-5v server %s\n", p, p.IP, p.Node, p.ServiceAccount, p.Enrolled, state)
	}
}
