package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrymesh/ferry/internal/netns"
	"golang.org/x/sys/unix"
)

// The bench's addresses, all in 198.18.0.0/15 and only inside its own
// network namespaces.
var (
	nodeAIP   = netip.MustParseAddr("198.18.0.1")
	nodeBIP   = netip.MustParseAddr("198.18.0.2")
	clientPod = netip.MustParseAddr("198.18.10.3") // on node a
	serverPod = netip.MustParseAddr("198.18.20.2") // on node b
)

const (
	directPort   = 20000 // direct TCP to the sink: never captured
	captureFirst = 20001 // first port captured in node a
	captureLast  = 20099
	hbonePort    = 15008
)

// topo is the two-node network: namespaces nsA and nsB joined by a veth.
//
// It is not internal/testbed's fabric on purpose. The peers under comparison
// (ferry, ghostunnel, haproxy, nginx, stunnel, istio's HBONE) run in the node
// namespaces and bind the pod addresses there, on lo, with node a's local
// table moved behind two rules so that only the captured ports reach the
// server pod's address locally; the testbed would put each pod in a namespace
// of its own behind a veth and the nodes behind a bridge, adding hops to every
// path measured and breaking the comparison with earlier results.
type topo struct {
	nsA, nsB string
}

const nsPrefix = "fbench-"

// newTopo creates the namespaces, named after this process's pid, after
// deleting any left by an earlier run whose process is gone.
func newTopo(ctx context.Context) (*topo, error) {
	removeStaleNetns(ctx)
	id := strconv.Itoa(os.Getpid())
	t := &topo{nsA: nsPrefix + id + "-a", nsB: nsPrefix + id + "-b"}
	va, vb := "fb"+id+"a", "fb"+id+"b"
	if len(va) > 15 {
		va, vb = va[len(va)-15:], vb[len(vb)-15:]
	}
	a, b, A, B := t.nsA, t.nsB, nodeAIP.String(), nodeBIP.String()
	C, X := clientPod.String(), serverPod.String()
	steps := [][]string{
		{"netns", "add", a},
		{"netns", "add", b},
		{"link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b},
		{"-n", a, "link", "set", "lo", "up"},
		{"-n", b, "link", "set", "lo", "up"},
		{"-n", a, "addr", "add", A + "/24", "dev", va},
		{"-n", b, "addr", "add", B + "/24", "dev", vb},
		{"-n", a, "link", "set", va, "up"},
		{"-n", b, "link", "set", vb, "up"},
		{"-n", a, "addr", "add", C + "/32", "dev", "lo"},
		{"-n", b, "addr", "add", X + "/32", "dev", "lo"},
		{"-n", a, "route", "add", "198.18.20.0/24", "via", B},
		{"-n", b, "route", "add", "198.18.10.0/24", "via", A},
		// Node a: the server pod's address is local too (so the peers'
		// client sides can bind it), but only for the captured ports; the
		// local table moves behind two rules that say so.
		{"-n", a, "addr", "add", X + "/32", "dev", "lo"},
		{"-n", a, "rule", "add", "pref", "10", "to", X, "ipproto", "tcp", "dport",
			fmt.Sprintf("%d-%d", captureFirst, captureLast), "lookup", "local"},
		{"-n", a, "rule", "add", "pref", "20", "to", X, "lookup", "main"},
		{"-n", a, "rule", "add", "pref", "100", "lookup", "local"},
		{"-n", a, "rule", "del", "pref", "0"},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, "ip", s...).CombinedOutput(); err != nil {
			t.close()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	for _, s := range [][]string{
		{"-n", a, "net.ipv4.conf.all.accept_local=1"}, // replies from the server pod's address
		{"-n", a, "net.ipv4.conf." + va + ".accept_local=1"},
		// Connection-rate benchmarks leave tens of thousands of sockets in
		// TIME_WAIT; let new outgoing connections reuse them.
		{"-n", a, "net.ipv4.tcp_tw_reuse=1"},
		{"-n", b, "net.ipv4.tcp_tw_reuse=1"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", s[1], "sysctl", "-qw", s[2]).CombinedOutput(); err != nil {
			t.close()
			return nil, fmt.Errorf("sysctl %s: %v: %s", s[2], err, out)
		}
	}
	return t, nil
}

// close deletes the namespaces (and with them the veth pair).
func (t *topo) close() {
	for _, ns := range []string{t.nsA, t.nsB} {
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// removeStaleNetns deletes fbench-PID-* namespaces whose PID is not running.
func removeStaleNetns(ctx context.Context) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], nsPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		exec.CommandContext(ctx, "ip", "netns", "del", f[0]).Run()
	}
}

// dialFrom dials dst from src inside the namespace ns.
func dialFrom(ctx context.Context, ns string, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := netns.DoNamed(ns, func() error {
		var err error
		c, err = dialHere(ctx, src, dst)
		return err
	})
	return c, err
}

// dialHere dials dst from src in the calling thread's namespace; the caller
// has locked its thread into a namespace.
func dialHere(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		// Choose the port at connect time, per destination, instead of
		// reserving one per socket at bind time: otherwise connections in
		// TIME_WAIT exhaust the ephemeral ports for every destination.
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(ctx, "tcp4", dst.String())
	if err != nil {
		return nil, err
	}
	c.(*net.TCPConn).SetNoDelay(true)
	return c, nil
}

// listenIn listens on addr inside the namespace ns.
func listenIn(ctx context.Context, ns string, addr netip.AddrPort) (net.Listener, error) {
	var ln net.Listener
	err := netns.DoNamed(ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(ctx, "tcp4", addr.String())
		return err
	})
	return ln, err
}
