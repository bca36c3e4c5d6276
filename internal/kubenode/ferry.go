package kubenode

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/node/cni"
	"github.com/ferrymesh/ferry/node/redirect"
)

// PodNetns returns the paths of the pods' network namespaces containerd
// has bound (NetnsDir), one per pod sandbox.
func (n *Node) PodNetns() []string {
	ents, _ := os.ReadDir(n.NetnsDir())
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			out = append(out, filepath.Join(n.NetnsDir(), e.Name()))
		}
	}
	return out
}

// FerryRouting lists Ferry's kernel state in the network namespace at path
// (a pod's, from PodNetns): its policy routing rules and routes (those of
// redirect.Protocol, as `ip rule`/`ip route` print them) and accept_local
// on (for the namespace or any interface), which --capture pod turns on in
// a captured pod and off again.
func FerryRouting(path string) ([]string, error) {
	ns, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var out []string
	err = ns.Do(func() error {
		var err error
		if out, err = ferryRouting(); err != nil {
			return err
		}
		confs, err := filepath.Glob("/proc/sys/net/ipv4/conf/*/accept_local")
		if err != nil {
			return err
		}
		for _, c := range confs {
			b, err := os.ReadFile(c)
			if err != nil {
				return err
			}
			if v := string(bytes.TrimSpace(b)); v != "0" {
				out = append(out, "net.ipv4.conf."+filepath.Base(filepath.Dir(c))+".accept_local="+v)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kubenode: netns %s: %w", path, err)
	}
	return out, nil
}

// ferryRouting lists the rules and routes of redirect.Protocol in the
// calling thread's network namespace.
func ferryRouting() ([]string, error) {
	var out []string
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := netlink.RuleList(family)
		if err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
		for _, r := range rules {
			if r.Protocol == redirect.Protocol {
				out = append(out, "rule "+r.String())
			}
		}
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: redirect.Protocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return nil, fmt.Errorf("routes: %w", err)
		}
		for _, r := range routes {
			out = append(out, "route "+r.String())
		}
	}
	return out, nil
}

// FerryLeftovers lists what a Ferry agent put on the node and left there:
// files under the node's bpffs pin directory (BPFFS/ferry), ferry-cni in
// the CNI configuration or plugin directory, files in RunDir (the pod
// mode's socket and record), Ferry's routing in the node's network
// namespace (this process's) and in every pod's (FerryRouting), and the
// probe source address (--probe-source) on the node's lo. It is empty once
// an uninstall removed everything.
func (n *Node) FerryLeftovers() ([]string, error) {
	var out, errs = []string(nil), []error(nil)
	for _, dir := range []string{filepath.Join(n.BPFFS(), "ferry"), n.RunDir()} {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				out = append(out, p)
			}
			return nil
		})
	}
	if _, err := os.Lstat(filepath.Join(n.CNIBinDir(), cni.PluginType)); err == nil {
		out = append(out, filepath.Join(n.CNIBinDir(), cni.PluginType))
	}
	confs, _ := os.ReadDir(n.CNIConfDir())
	for _, e := range confs {
		b, err := os.ReadFile(filepath.Join(n.CNIConfDir(), e.Name()))
		if err == nil && bytes.Contains(b, []byte(`"`+cni.PluginType+`"`)) {
			out = append(out, filepath.Join(n.CNIConfDir(), e.Name())+": "+cni.PluginType+" entry")
		}
	}
	host, err := ferryRouting()
	if err != nil {
		errs = append(errs, fmt.Errorf("kubenode: node's network namespace: %w", err))
	}
	for _, l := range host {
		out = append(out, "node: "+l)
	}
	probe, err := probeSources()
	if err != nil {
		errs = append(errs, fmt.Errorf("kubenode: node's lo: %w", err))
	}
	for _, a := range probe {
		out = append(out, "node: address "+a+" on lo (--probe-source)")
	}
	for _, path := range n.PodNetns() {
		r, err := FerryRouting(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range r {
			out = append(out, "pod netns "+filepath.Base(path)+": "+l)
		}
	}
	return out, errors.Join(errs...)
}

// probeSources lists the addresses an agent with --probe-source put on lo
// in the calling thread's network namespace: those labelled lo:ferry
// (redirect.AddProbeSource).
func probeSources() ([]string, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	addrs, err := netlink.AddrList(lo, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range addrs {
		if a.Label == "lo:ferry" {
			out = append(out, a.IPNet.String())
		}
	}
	return out, nil
}
