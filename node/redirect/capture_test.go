//go:build linux

package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/bpf"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// Addresses of the capture test: a node, an enrolled pod behind a veth with
// /32 routes (like a ptp CNI), and a remote client behind another veth.
var (
	nodePodSide    = netip.MustParseAddr("198.18.1.1")
	podIP          = netip.MustParseAddr("198.18.1.2")
	nodeRemoteSide = netip.MustParseAddr("198.18.2.1")
	remoteIP       = netip.MustParseAddr("198.18.2.2")
	elsewhere      = netip.MustParseAddr("198.18.5.5") // routed nowhere
)

// wire creates a veth pair between the namespaces a (interface aName,
// address aIP) and b (bName, bIP), ptp style: /32 addresses, a host route to
// the peer on each side, and a default route in b via a.
func wire(t *testing.T, a, b *testutil.NetNS, aName, bName string, aIP, bIP netip.Addr) {
	t.Helper()
	err := a.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(b.FD())}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		return addrUpRoute(aName, aIP, bIP, false)
	})
	if err == nil {
		err = b.Do(func() error { return addrUpRoute(bName, bIP, aIP, true) })
	}
	if err != nil {
		t.Fatal(err)
	}
}

func addrUpRoute(name string, local, peer netip.Addr, defaultRoute bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(local, 32))}); err != nil {
		return fmt.Errorf("addr %v on %s: %w", local, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(netip.PrefixFrom(peer, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to %v: %w", peer, err)
	}
	if defaultRoute {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: peer.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %v: %w", peer, err)
		}
	}
	return nil
}

func sysctl(path, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644)
}

// accept accepts one connection on ln, giving up after a while.
func accept(ln *net.TCPListener) (*net.TCPConn, error) {
	if err := ln.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	c, err := ln.AcceptTCP()
	if err != nil {
		return nil, fmt.Errorf("accept on %v: %w", ln.Addr(), err)
	}
	return c, nil
}

// exchange proves a connection carries bytes both ways: a writes a line, b
// echoes it back.
func exchange(a, b net.Conn) error {
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	if _, err := io.WriteString(a, "ping\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(b).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read on the far side: %w", err)
	}
	if _, err := io.WriteString(b, line); err != nil {
		return err
	}
	back, err := bufio.NewReader(a).ReadString('\n')
	if err != nil || back != "ping\n" {
		return fmt.Errorf("echo: %q, %v", back, err)
	}
	return nil
}

func listenIn(t *testing.T, ns *testutil.NetNS, addr string, transparent bool) *net.TCPListener {
	t.Helper()
	var ln *net.TCPListener
	err := ns.Do(func() error {
		var err error
		if transparent {
			ln, err = ListenTransparent(t.Context(), addr)
			return err
		}
		var lc net.ListenConfig
		l, err := lc.Listen(t.Context(), "tcp4", addr)
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dialIn(ns *testutil.NetNS, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 10 * time.Second}
		var err error
		c, err = d.Dial("tcp4", dst.String())
		return err
	})
	return c, err
}

func addrOf(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// TestPrivilegedCaptureEndToEnd runs the agent's capture machinery (BPF
// program, listeners, the routing plan) in a "node" namespace with an
// enrolled pod and a remote client in namespaces of their own, and checks
// every path of the design: the pod's outbound connections, inbound plaintext
// and HBONE connections to the pod, transparent dials in both directions with
// the real client address, node traffic left alone, and a cleanup that
// restores the node namespace exactly.
func TestPrivilegedCaptureEndToEnd(t *testing.T) {
	testutil.Privileged(t)
	node := testutil.NewNetNS(t)
	pod := testutil.NewNetNS(t)
	remote := testutil.NewNetNS(t)
	wire(t, node, pod, "vpod", "eth0", nodePodSide, podIP)
	wire(t, node, remote, "vrem", "eth0", nodeRemoteSide, remoteIP)
	// A real node forwards, and Debian-like hosts run strict reverse-path
	// filtering: capture must work with both, with nothing relaxed.
	err := node.Do(func() error {
		for _, kv := range [][2]string{
			{"net/ipv4/ip_forward", "1"},
			{"net/ipv4/conf/all/rp_filter", "1"},
			{"net/ipv4/conf/default/rp_filter", "1"},
			{"net/ipv4/conf/vpod/rp_filter", "1"},
			{"net/ipv4/conf/vrem/rp_filter", "1"},
		} {
			if err := sysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The pod's own server, and the remote's.
	podSrv := listenIn(t, pod, netip.AddrPortFrom(podIP, 8080).String(), false)
	remoteSrv := listenIn(t, remote, netip.AddrPortFrom(remoteIP, 7777).String(), false)

	// Without Ferry, the remote reaches the pod directly.
	direct := func() {
		t.Helper()
		c, err := dialIn(remote, netip.AddrPortFrom(podIP, 8080))
		if err != nil {
			t.Fatalf("remote to pod without capture: %v", err)
		}
		defer c.Close()
		s, err := accept(podSrv)
		if err != nil {
			t.Fatalf("remote to pod without capture: %v", err)
		}
		defer s.Close()
		if got := addrOf(s.RemoteAddr()).Addr(); got != remoteIP {
			t.Errorf("pod saw %v, want %v", got, remoteIP)
		}
	}
	direct()
	before := snapshot(t, node)

	// The agent, in the node namespace.
	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	pinDir := filepath.Join(bpffs, "ferry")
	t.Cleanup(func() {
		if err := node.Do(Cleanup); err != nil {
			t.Error(err)
		}
		if err := bpf.Remove(pinDir); err != nil {
			t.Error(err)
		}
	})
	objs, err := bpf.Load(bpf.Config{PinDir: pinDir})
	if err := testutil.KernelFeature(t, err); err != nil {
		t.Fatalf("%+v", err)
	}
	defer objs.Close()
	if err := objs.AttachNetNS(node.Path()); err != nil {
		t.Fatal(err)
	}
	outLn := listenIn(t, node, "127.0.0.1:15001", true)
	inLn := listenIn(t, node, "127.0.0.1:15006", true)
	hboneLn := listenIn(t, node, "127.0.0.1:15008", true)
	if err := objs.SetListeners(outLn, inLn, hboneLn); err != nil {
		t.Fatal(err)
	}
	plan := mustPlan(t, []netip.Addr{podIP}, Config{})
	if err := node.Do(func() error { return Apply(plan) }); err != nil {
		t.Fatal(err)
	}
	if err := objs.SetPods(plan.Pods); err != nil {
		t.Fatal(err)
	}

	t.Run("pod outbound", func(t *testing.T) {
		dst := netip.AddrPortFrom(elsewhere, 9999)
		c, err := dialIn(pod, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := accept(outLn)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := addrOf(s.LocalAddr()); got != dst {
			t.Errorf("outbound LocalAddr %v, want the original destination %v", got, dst)
		}
		if got := addrOf(s.RemoteAddr()); got != addrOf(c.LocalAddr()) || got.Addr() != podIP {
			t.Errorf("outbound RemoteAddr %v, want the pod's %v", got, c.LocalAddr())
		}
		if err := exchange(c, s); err != nil {
			t.Error(err)
		}
	})

	for _, tc := range []struct {
		name string
		port uint16
		ln   *net.TCPListener
	}{{"inbound plaintext", 8080, inLn}, {"inbound hbone", 15008, hboneLn}} {
		t.Run(tc.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(podIP, tc.port)
			c, err := dialIn(remote, dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := accept(tc.ln)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := addrOf(s.LocalAddr()); got != dst {
				t.Errorf("LocalAddr %v, want %v", got, dst)
			}
			if got := addrOf(s.RemoteAddr()); got != addrOf(c.LocalAddr()) {
				t.Errorf("RemoteAddr %v, want the real client %v", got, c.LocalAddr())
			}
			if err := exchange(c, s); err != nil {
				t.Error(err)
			}
		})
	}
	// Nothing of that reached the pod's own server.
	podSrv.SetDeadline(time.Now())
	if c, err := podSrv.Accept(); err == nil {
		c.Close()
		t.Error("a captured connection reached the pod directly")
	}

	t.Run("agent dials the pod as the client", func(t *testing.T) {
		var c net.Conn
		err := node.Do(func() error {
			var err error
			c, err = DialTransparent(t.Context(), remoteIP, netip.AddrPortFrom(podIP, 8080))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := accept(podSrv)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := addrOf(s.RemoteAddr()); got != addrOf(c.LocalAddr()) || got.Addr() != remoteIP {
			t.Errorf("pod saw %v, want the client's %v", got, c.LocalAddr())
		}
		if err := exchange(s, c); err != nil {
			t.Error(err)
		}
	})

	t.Run("agent dials out as the pod", func(t *testing.T) {
		var c net.Conn
		err := node.Do(func() error {
			var err error
			c, err = DialTransparent(t.Context(), podIP, netip.AddrPortFrom(remoteIP, 7777))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := accept(remoteSrv)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := addrOf(s.RemoteAddr()).Addr(); got != podIP {
			t.Errorf("remote saw %v, want the pod's %v", got, podIP)
		}
		if err := exchange(s, c); err != nil {
			t.Error(err)
		}
	})

	t.Run("node traffic is not captured", func(t *testing.T) {
		c, err := dialIn(node, netip.AddrPortFrom(podIP, 8080))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := accept(podSrv)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := addrOf(s.RemoteAddr()).Addr(); got != nodePodSide {
			t.Errorf("pod saw %v, want the node's %v", got, nodePodSide)
		}
	})

	counts, err := objs.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if counts[bpf.VerdictOutbound] != 1 || counts[bpf.VerdictInbound] != 1 || counts[bpf.VerdictHBONE] != 1 ||
		counts[bpf.VerdictNoListener] != 0 || counts[bpf.VerdictAssignFailed] != 0 {
		t.Errorf("BPF counters %v, want one outbound, one inbound, one hbone", counts)
	}

	// Unenrol: the pod is reachable directly again while the agent runs.
	plan = mustPlan(t, nil, Config{})
	if err := node.Do(func() error { return Apply(plan) }); err != nil {
		t.Fatal(err)
	}
	if err := objs.SetPods(plan.Pods); err != nil {
		t.Fatal(err)
	}
	direct()

	// ferry cleanup: the node namespace is as it was.
	if err := objs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := node.Do(Cleanup); err != nil {
		t.Fatal(err)
	}
	if err := bpf.Remove(pinDir); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, node); after != before {
		t.Errorf("node namespace not restored:\n--- before\n%s--- after\n%s", before, after)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir after Remove: %v, want it gone", err)
	}
	direct()
}
