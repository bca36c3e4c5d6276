//go:build linux

package redirect

import (
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/bpf"
	"github.com/ferrymesh/ferry/internal/testutil"
)

func sockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		v    int
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func TestPrivilegedListenTransparent(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	a := listenIn(t, ns, "127.0.0.1:15001", true)
	// SO_REUSEPORT: an upgraded agent binds the same address.
	b := listenIn(t, ns, "127.0.0.1:15001", true)
	for _, ln := range []*net.TCPListener{a, b} {
		if v := sockopt(t, ln, unix.SOL_IP, unix.IP_TRANSPARENT); v != 1 {
			t.Errorf("IP_TRANSPARENT = %d", v)
		}
		if v := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_REUSEPORT); v != 1 {
			t.Errorf("SO_REUSEPORT = %d", v)
		}
		if v := sockopt(t, ln, unix.SOL_SOCKET, unix.SO_PROTOCOL); v != unix.IPPROTO_TCP {
			t.Errorf("SO_PROTOCOL = %d, want plain TCP (not MPTCP)", v)
		}
	}
	// Both ends of a data-plane connection probe with ztunnel's keepalive.
	var dialled net.Conn
	if err := ns.Do(func() error {
		var err error
		dialled, err = DialTransparent(t.Context(), netip.Addr{}, netip.MustParseAddrPort("127.0.0.1:15001"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer dialled.Close()
	accepted, err := accept(a)
	if err != nil {
		accepted, err = accept(b)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	testutil.CheckKeepAlive(t, "dialled", dialled.(*net.TCPConn))
	testutil.CheckKeepAlive(t, "accepted", accepted)
	// Not IPv6 yet, and the error says who failed.
	err = ns.Do(func() error {
		_, err := ListenTransparent(t.Context(), "[::1]:0")
		return err
	})
	if err == nil {
		t.Error("ListenTransparent accepted an IPv6 address")
	}
}

// TestPrivilegedUpgradeSwapsListeners follows an agent upgrade: the new agent
// loads over the old one's pins, binds the same listener address (reuseport),
// swaps the SOCKMAP entry, and from then on every new connection reaches the
// new listener, none the old one (the program assigns with
// BPF_SK_LOOKUP_F_NO_REUSEPORT), with capture uninterrupted.
func TestPrivilegedUpgradeSwapsListeners(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	pod := netip.MustParseAddr("198.18.3.2")
	client := netip.MustParseAddr("198.18.3.9")
	ipIn(t, ns, "addr", "add", pod.String()+"/32", "dev", "lo")
	ipIn(t, ns, "addr", "add", client.String()+"/32", "dev", "lo")

	bpffs := t.TempDir()
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	pinDir := filepath.Join(bpffs, "ferry")
	t.Cleanup(func() {
		if err := bpf.Remove(pinDir); err != nil {
			t.Error(err)
		}
	})

	agent := func(in *net.TCPListener) *bpf.Objects {
		t.Helper()
		o, err := bpf.Load(bpf.Config{PinDir: pinDir})
		if err := testutil.KernelFeature(t, err); err != nil {
			t.Fatalf("%+v", err)
		}
		t.Cleanup(func() { o.Close() })
		if err := o.AttachNetNS(ns.Path()); err != nil {
			t.Fatal(err)
		}
		if err := o.SetListener(bpf.ListenerInbound, in); err != nil {
			t.Fatal(err)
		}
		if err := o.SetPods([]netip.Addr{pod}); err != nil {
			t.Fatal(err)
		}
		return o
	}
	connect := func(want *net.TCPListener, n int) {
		t.Helper()
		for range n {
			var c net.Conn
			err := ns.Do(func() error {
				d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, 0))}
				var err error
				c, err = d.Dial("tcp4", netip.AddrPortFrom(pod, 8080).String())
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			s, err := accept(want)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}
	}

	oldLn := listenIn(t, ns, "127.0.0.1:15006", true)
	old := agent(oldLn)
	connect(oldLn, 3)

	newLn := listenIn(t, ns, "127.0.0.1:15006", true)
	agent(newLn)
	connect(newLn, 20)
	// Nothing queued on the old listener.
	oldLn.SetDeadline(time.Unix(1, 0))
	if c, err := oldLn.Accept(); err == nil {
		c.Close()
		t.Error("a connection reached the old agent's listener after the swap")
	}
	// The old agent exits; capture goes on.
	old.Close()
	oldLn.Close()
	connect(newLn, 3)
}

// TestPrivilegedDialledDst checks that an accepted connection whose
// destination a prerouting DNAT rewrote (as kube-proxy rewrites a Service's
// ClusterIP) reports the address its client dialled, and one nothing
// rewrote reports its own local address.
func TestPrivilegedDialledDst(t *testing.T) {
	testutil.Privileged(t)
	server := testutil.NewNetNS(t)
	client := testutil.NewNetNS(t)
	serverIP, clientIP := netip.MustParseAddr("198.18.254.1"), netip.MustParseAddr("198.18.254.2")
	vip := netip.MustParseAddrPort("198.19.254.10:80")
	wire(t, server, client, "eth0", "eth0", serverIP, clientIP)
	rules := `table ip ferry-test {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		ip daddr ` + vip.Addr().String() + ` tcp dport 80 dnat to ` + serverIP.String() + `:8080
	}
}`
	nft := exec.Command("nsenter", "--net="+server.Path(), "nft", "-f", "-")
	nft.Stdin = strings.NewReader(rules)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	ln := listenIn(t, server, netip.AddrPortFrom(serverIP, 8080).String(), false)
	for _, tc := range []struct {
		name       string
		dial, want netip.AddrPort
	}{
		{"through the DNAT", vip, vip},
		{"direct", netip.AddrPortFrom(serverIP, 8080), netip.AddrPortFrom(serverIP, 8080)},
	} {
		c, err := dialIn(client, tc.dial)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		s, err := accept(ln)
		if err != nil {
			c.Close()
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := DialledDst(s); got != tc.want {
			t.Errorf("%s: DialledDst %v, want %v (LocalAddr %v)", tc.name, got, tc.want, s.LocalAddr())
		}
		c.Close()
		s.Close()
	}
	// Not a socket: no answer, no panic.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := DialledDst(a); got.IsValid() {
		t.Errorf("DialledDst(pipe) = %v", got)
	}
}
