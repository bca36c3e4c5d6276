package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/internal/testbed"
)

// The bench's addresses: those internal/testbed gives LayoutDirect's nodes
// and the pods newTopo asks for (newTopo checks), all in 198.18.0.0/15 and
// only inside the testbed's namespaces.
var (
	nodeAIP   = netip.MustParseAddr("198.18.0.1")
	nodeBIP   = netip.MustParseAddr("198.18.0.2")
	clientPod = netip.MustParseAddr("198.18.1.2") // on node a
	serverPod = netip.MustParseAddr("198.18.2.2") // on node b
)

const (
	directPort   = 20000 // direct TCP to the sink: never captured
	captureFirst = 20001 // first port captured in node a
	captureLast  = 20099
	hbonePort    = 15008
)

// topo is the two-node network: internal/testbed's LayoutDirect, whose
// node1 and node2 are the bench's node a and node b, joined by one veth
// pair, with the client pod's address on node a's lo and the server pod's
// on node b's. The peers under comparison (ferry, ghostunnel, haproxy,
// nginx, stunnel, istio's HBONE) run in the node namespaces and bind the
// pod addresses there; every path measured crosses that veth and nothing
// else. On top of the testbed, newTopo adds capture to node a and two
// settings (see capture and tune).
type topo struct {
	tb       *testbed.Testbed
	nsA, nsB string
}

// newTopo brings the testbed up. Its namespaces are named after the
// testbed's per-run prefix, so after a killed run `scripts/testbed down
// --prefix P` (or --all) removes them and whatever still runs in them.
func newTopo(ctx context.Context, log *slog.Logger) (*topo, error) {
	tb, err := testbed.Up(ctx, testbed.Config{Layout: testbed.LayoutDirect, NoMesh: true, Spec: testbed.Spec{
		Pods: []testbed.PodSpec{
			{Namespace: "bench", Name: "client", Node: "node1"},
			{Namespace: "bench", Name: "server", Node: "node2"},
		}}})
	if err != nil {
		return nil, err // Up removed what it made
	}
	log.Info("testbed up", "prefix", tb.Prefix, "layout", tb.Layout)
	t := &topo{tb: tb, nsA: tb.Nodes[0].Netns, nsB: tb.Nodes[1].Netns}
	err = t.checkAddrs()
	if err == nil {
		err = capture(t.nsA)
	}
	if err == nil {
		err = tune(t.nsA, t.nsB)
	}
	if err != nil {
		return nil, errors.Join(err, t.close())
	}
	return t, nil
}

// checkAddrs fails unless the testbed gave the addresses the bench uses.
func (t *topo) checkAddrs() error {
	client, _ := t.tb.Pod("bench/client")
	server, _ := t.tb.Pod("bench/server")
	for _, c := range []struct {
		got  string
		want netip.Addr
	}{{t.tb.Nodes[0].IP, nodeAIP}, {t.tb.Nodes[1].IP, nodeBIP}, {client.IP, clientPod}, {server.IP, serverPod}} {
		if c.got != c.want.String() {
			return fmt.Errorf("testbed gave %s where the bench expects %s", c.got, c.want)
		}
	}
	return nil
}

// close stops whatever still runs in the namespaces and removes them.
func (t *topo) close() error {
	return t.tb.Down(false, nil)
}

// capture is the bench's stand-in for Ferry's redirection, in node a: the
// server pod's address is local there too, so that each peer's client side
// can listen on it, but only for TCP to the captured ports. The local table
// moves behind two rules that say so; everything else to the server pod's
// address (the peers' server sides, direct TCP) crosses the veth.
//
//	10:  to serverPod tcp dport 20001-20099 lookup local
//	20:  to serverPod lookup main
//	100: lookup local (instead of 0)
func capture(ns string) error {
	server := &net.IPNet{IP: serverPod.AsSlice(), Mask: net.CIDRMask(32, 32)}
	captured := netlink.NewRule()
	captured.Priority, captured.Dst, captured.Table = 10, server, unix.RT_TABLE_LOCAL
	captured.IPProto, captured.Dport = unix.IPPROTO_TCP, netlink.NewRulePortRange(captureFirst, captureLast)
	rest := netlink.NewRule()
	rest.Priority, rest.Dst, rest.Table = 20, server, unix.RT_TABLE_MAIN
	local := netlink.NewRule()
	local.Priority, local.Table = 100, unix.RT_TABLE_LOCAL
	local0 := netlink.NewRule() // the kernel's: priority 0, lookup local
	local0.Priority, local0.Table = 0, unix.RT_TABLE_LOCAL
	return netns.DoNamed(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("capture: %w", err)
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: server}); err != nil {
			return fmt.Errorf("capture: address %s on lo: %w", server, err)
		}
		for _, r := range []*netlink.Rule{captured, rest, local} {
			if err := netlink.RuleAdd(r); err != nil {
				return fmt.Errorf("capture: add %s: %w", r, err)
			}
		}
		if err := netlink.RuleDel(local0); err != nil {
			return fmt.Errorf("capture: delete %s: %w", local0, err)
		}
		return nil
	})
}

// tune sets what the bench needs beyond the testbed, inside node a and node
// b only: node a accepts packets from the server pod's address, which is
// local there too (capture), and connection-rate benchmarks, which leave
// tens of thousands of sockets in TIME_WAIT, may reuse them for new
// outgoing connections.
func tune(nsA, nsB string) error {
	for _, s := range []struct{ ns, sysctl string }{
		{nsA, "net/ipv4/conf/all/accept_local"},
		{nsA, "net/ipv4/conf/eth0/accept_local"},
		{nsA, "net/ipv4/tcp_tw_reuse"},
		{nsB, "net/ipv4/tcp_tw_reuse"},
	} {
		err := netns.DoNamed(s.ns, func() error {
			return os.WriteFile(filepath.Join("/proc/sys", s.sysctl), []byte("1"), 0o644)
		})
		if err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", s.sysctl, s.ns, err)
		}
	}
	return nil
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
