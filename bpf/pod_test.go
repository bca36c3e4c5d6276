//go:build linux

package bpf

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf/link"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedPodCapture runs the pod program in a pod-shaped namespace:
// the pod's address on a veth to a peer namespace, the pod's own TCP
// routed locally (as package redirect's pod plan does), and every
// decision exercised by a real connection.
func TestPrivilegedPodCapture(t *testing.T) {
	testutil.Privileged(t)
	pod, peer := testutil.NewNetNS(t), testutil.NewNetNS(t)
	var (
		podIP   = netip.MustParseAddr("198.18.0.10")
		peerIP  = netip.MustParseAddr("198.18.0.20")
		probeIP = netip.MustParseAddr("198.18.0.21")
	)
	ip(t, pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", "netns", peer.Path())
	ip(t, pod, "addr", "add", podIP.String()+"/24", "dev", "eth0")
	ip(t, pod, "link", "set", "eth0", "up")
	ip(t, peer, "addr", "add", peerIP.String()+"/24", "dev", "eth1")
	ip(t, peer, "addr", "add", probeIP.String()+"/24", "dev", "eth1")
	ip(t, peer, "link", "set", "eth1", "up")
	// The pod's TCP is delivered locally, from its own address; sockets
	// marked 0x99 (the agent's) are not.
	ip(t, pod, "rule", "add", "pref", "99", "fwmark", "0x99", "lookup", "main")
	ip(t, pod, "rule", "add", "pref", "99", "to", probeIP.String(), "lookup", "main")
	ip(t, pod, "rule", "add", "pref", "100", "ipproto", "tcp", "lookup", "15001")
	ip(t, pod, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "src", podIP.String(), "table", "15001")
	// Source validation of inbound packets looks the sender up as TCP
	// too, and finds it local: accept that, in the pod only.
	if err := pod.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/accept_local", []byte("1"), 0)
	}); err != nil {
		t.Fatal(err)
	}

	dir := pinDir(t)
	pc := loadPods(t, Config{PinDir: dir, ProbeSource: probeIP})
	if err := pc.Attach(podIP, pod.Path()); err != nil {
		t.Fatalf("%+v", err)
	}
	out, in, hb := listenMarked(t, pod), listenMarked(t, pod), listenMarked(t, pod)
	if err := pc.SetListeners(podIP, out, in, hb); err != nil {
		t.Fatal(err)
	}
	app := listen(t, pod, "0.0.0.0:8080")     // the pod's own server
	remote := listen(t, peer, "0.0.0.0:9999") // a server outside the pod
	local := listen(t, pod, "127.0.0.1:7777") // the pod's loopback-only server
	local2 := listen(t, pod, podIP.String()+":7778")

	// dial connects from src (any address if invalid) to dst in ns; as the
	// agent does when transparent: marked, and for a connection into the
	// pod, listed with Delivering.
	dial := func(ns *testutil.NetNS, src netip.Addr, dst netip.AddrPort, transparent bool) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second}
			delivering := transparent && dst.Addr() == podIP
			if src.IsValid() && !delivering {
				d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
			}
			if transparent {
				d.Control = func(_, _ string, c syscall.RawConn) error {
					var serr error
					err := c.Control(func(fd uintptr) {
						serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1),
							unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x99))
						if serr != nil || !delivering {
							return
						}
						// Bind now, to know the port Delivering lists.
						sa := &unix.SockaddrInet4{Addr: src.As4()}
						if serr = unix.Bind(int(fd), sa); serr != nil {
							return
						}
						name, err := unix.Getsockname(int(fd))
						if err != nil {
							serr = err
							return
						}
						done, err := pc.Delivering(netip.AddrPortFrom(src, uint16(name.(*unix.SockaddrInet4).Port)), dst)
						if err != nil {
							serr = err
							return
						}
						t.Cleanup(done)
					})
					return errors.Join(err, serr)
				}
			}
			var err error
			c, err = d.Dial("tcp4", dst.String())
			return err
		})
		return c, err
	}
	expect := func(name string, ln *net.TCPListener, ns *testutil.NetNS, src netip.Addr, dst netip.AddrPort, transparent bool) {
		t.Helper()
		c, err := dial(ns, src, dst, transparent)
		if err != nil {
			t.Fatalf("%s: dial %v from %v: %v", name, dst, src, err)
		}
		defer c.Close()
		ln.SetDeadline(time.Now().Add(5 * time.Second))
		a, err := ln.Accept()
		if err != nil {
			t.Fatalf("%s: dial %v from %v: accept on %v: %v", name, dst, src, ln.Addr(), err)
		}
		defer a.Close()
		if got := a.LocalAddr().(*net.TCPAddr).AddrPort(); got != dst {
			t.Errorf("%s: accepted LocalAddr %v, want the original destination %v", name, got, dst)
		}
		if src.IsValid() {
			if got := a.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != src {
				t.Errorf("%s: accepted RemoteAddr %v, want %v", name, got, src)
			}
		}
	}
	expect("inbound plaintext", in, peer, peerIP, netip.AddrPortFrom(podIP, 8080), false)
	expect("inbound HBONE", hb, peer, peerIP, netip.AddrPortFrom(podIP, 15008), false)
	expect("outbound", out, pod, netip.Addr{}, netip.AddrPortFrom(peerIP, 9999), false)
	expect("probe from the node's probe address", app, peer, probeIP, netip.AddrPortFrom(podIP, 8080), false)
	expect("the agent delivering, as the client", app, pod, peerIP, netip.AddrPortFrom(podIP, 8080), true)
	expect("the agent dialling out (marked)", remote, pod, netip.Addr{}, netip.AddrPortFrom(peerIP, 9999), true)
	expect("the pod to its loopback", local, pod, netip.Addr{}, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 7777), false)
	expect("the pod to itself", local2, pod, netip.Addr{}, netip.AddrPortFrom(podIP, 7778), false)

	n, err := pc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if n[VerdictInbound] != 1 || n[VerdictHBONE] != 1 || n[VerdictOutbound] != 1 {
		t.Errorf("counters %v, want one each of inbound, hbone, outbound", n)
	}

	// The agent goes: its listeners close and the pod's TCP is refused,
	// both ways, not handed to the pod's own server.
	in.Close()
	out.Close()
	if c, err := dial(peer, peerIP, netip.AddrPortFrom(podIP, 8080), false); err == nil {
		c.Close()
		t.Error("inbound connection accepted with no agent listener")
	}
	if c, err := dial(pod, netip.Addr{}, netip.AddrPortFrom(peerIP, 9999), false); err == nil {
		c.Close()
		t.Error("outbound connection left the pod with no agent listener")
	}
	if pods, err := pc.Pinned(); err != nil || len(pods) != 1 || pods[0] != podIP {
		t.Errorf("Pinned() = %v, %v; want [%v]", pods, err, podIP)
	}

	// A restarted agent re-attaches over the pin (updated in place).
	pc2, err := LoadPods(Config{PinDir: dir, ProbeSource: probeIP})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer pc2.Close()
	if err := pc2.Attach(podIP, pod.Path()); err != nil {
		t.Fatal(err)
	}
	if got := netnsLinks(t, inode(t, pod.Path())); got != 1 {
		t.Errorf("%d sk_lookup links on the pod namespace after re-attach, want 1", got)
	}
	in2 := listenMarked(t, pod)
	if err := pc2.SetListeners(podIP, in2, in2, in2); err != nil {
		t.Fatal(err)
	}
	expect("after restart", in2, peer, peerIP, netip.AddrPortFrom(podIP, 8080), false)

	// Detach (with the routing gone too): the pod's own server gets its
	// port again, nothing pinned.
	if err := pc2.Detach(podIP); err != nil {
		t.Fatal(err)
	}
	ip(t, pod, "rule", "del", "pref", "100")
	expect("after detach", app, peer, peerIP, netip.AddrPortFrom(podIP, 8080), false)
	if pods, _ := pc2.Pinned(); len(pods) != 0 {
		t.Errorf("Pinned() after Detach = %v", pods)
	}
	if err := pc2.Detach(podIP); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if _, err := os.Stat(podLinkPin(dir, podIP)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin after Detach: %v", err)
	}
}

// listenMarked opens an agent listener in ns: transparent (it answers for
// addresses that are not the pod's), and its sockets carry the mark that
// exempts them from the pod's capture rule.
func listenMarked(t *testing.T, ns *testutil.NetNS) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, 0x99),
					unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1))
			})
			return errors.Join(err, serr)
		}}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// TestPrivilegedProbeCgroup: the probe program is attached only to a cgroup
// v2 directory, and an agent started with another --probe-cgroup moves the
// pinned link there instead of updating it where it was.
func TestPrivilegedProbeCgroup(t *testing.T) {
	testutil.Privileged(t)
	mnt := t.TempDir()
	if err := unix.Mount("cgroup2", mnt, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2: %v", err)
	}
	a, b := filepath.Join(mnt, "ferry-test-kubelet-a"), filepath.Join(mnt, "ferry-test-kubelet-b")
	t.Cleanup(func() {
		os.Remove(a)
		os.Remove(b)
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount cgroup2: %v", err)
		}
	})
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := pinDir(t)
	pc := loadPods(t, Config{PinDir: dir, ProbeSource: netip.MustParseAddr("198.18.0.21")})
	for _, bad := range []string{t.TempDir(), filepath.Join(mnt, "missing")} {
		if err := pc.AttachProbes(bad); !errors.Is(err, ErrNotCgroup2) {
			t.Errorf("AttachProbes(%s) = %v, want ErrNotCgroup2", bad, err)
		}
	}
	attachedTo := func() uint64 {
		t.Helper()
		l, err := link.LoadPinnedLink(filepath.Join(dir, probeLinkPin), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil || info.Cgroup() == nil {
			t.Fatalf("link info: %+v, %v", info, err)
		}
		return info.Cgroup().CgroupId
	}
	ino := func(path string) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	for _, cg := range []string{a, a, b} { // attach, update in place, move
		if err := pc.AttachProbes(cg); err != nil {
			t.Fatalf("AttachProbes(%s): %v", cg, err)
		}
		if got := attachedTo(); got != ino(cg) {
			t.Fatalf("after AttachProbes(%s) the link is on cgroup %d, want %d", cg, got, ino(cg))
		}
	}
}

// loadPods loads the pod program's objects for a test, skipping on kernels
// without sk_lookup; when the test ends they are closed and every pin under
// cfg.PinDir removed.
func loadPods(t *testing.T, cfg Config) *PodCapture {
	t.Helper()
	pc, err := LoadPods(cfg)
	if err := testutil.KernelFeature(t, err); err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() {
		pc.Close()
		if err := Remove(cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	return pc
}
