//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestEnumsMatchC keeps the Go names of SOCKMAP slots and counters in step
// with the C enums (bpf2go generates the right-hand side from the object's
// BTF).
func TestEnumsMatchC(t *testing.T) {
	listeners := map[Listener]redirectFerryListener{
		ListenerOutbound: redirectFerryListenerFERRY_LISTENER_OUTBOUND,
		ListenerInbound:  redirectFerryListenerFERRY_LISTENER_INBOUND,
		ListenerHBONE:    redirectFerryListenerFERRY_LISTENER_HBONE,
	}
	for g, c := range listeners {
		if uint32(g) != uint32(c) {
			t.Errorf("Listener %s = %d, C says %d", g, g, c)
		}
	}
	if n := len(listeners); n != int(redirectFerryListenerFERRY_LISTENER_MAX) {
		t.Errorf("Go has %d listeners, C has %d", n, redirectFerryListenerFERRY_LISTENER_MAX)
	}
	verdicts := map[Verdict]redirectFerryVerdict{
		VerdictOutbound:     redirectFerryVerdictFERRY_VERDICT_OUTBOUND,
		VerdictInbound:      redirectFerryVerdictFERRY_VERDICT_INBOUND,
		VerdictHBONE:        redirectFerryVerdictFERRY_VERDICT_HBONE,
		VerdictNoListener:   redirectFerryVerdictFERRY_VERDICT_NO_LISTENER,
		VerdictAssignFailed: redirectFerryVerdictFERRY_VERDICT_ASSIGN_FAILED,
	}
	for g, c := range verdicts {
		if uint32(g) != uint32(c) {
			t.Errorf("Verdict %s = %d, C says %d", g, g, c)
		}
	}
	if n := len(Verdicts()); n != len(verdicts) || n != int(redirectFerryVerdictFERRY_VERDICT_MAX) {
		t.Errorf("Verdicts() has %d entries, C has %d", n, redirectFerryVerdictFERRY_VERDICT_MAX)
	}
	for _, v := range Verdicts() {
		if strings.HasPrefix(v.String(), "Verdict(") {
			t.Errorf("verdict %d has no name", v)
		}
	}
}

// TestSpecNames checks the object has what the loader expects, with names
// whose first 15 characters (what the kernel keeps) are distinct.
func TestSpecNames(t *testing.T) {
	spec, err := loadRedirect()
	if err != nil {
		t.Fatal(err)
	}
	pod, err := loadPod()
	if err != nil {
		t.Fatal(err)
	}
	// Both objects pin into one directory: their names must not collide.
	seen := map[string]string{}
	var names []string
	for _, s := range []*ebpf.CollectionSpec{spec, pod} {
		for n := range s.Maps {
			names = append(names, n)
		}
		for n := range s.Programs {
			names = append(names, n)
		}
	}
	for _, n := range names {
		if strings.HasPrefix(n, ".") { // .rodata
			continue
		}
		if !strings.HasPrefix(n, "ferry_") {
			t.Errorf("%s: BPF objects must be named ferry_*", n)
		}
		k := n[:min(len(n), 15)]
		if other, ok := seen[k]; ok {
			t.Errorf("%s and %s share their first 15 characters", n, other)
		}
		seen[k] = n
	}
	if pod.Programs[podProgFerryPodLookup].Type != ebpf.SkLookup {
		t.Errorf("pod program type %v, want SkLookup", pod.Programs[podProgFerryPodLookup].Type)
	}
	if spec.Programs[redirectProgFerrySkLookup].Type != ebpf.SkLookup {
		t.Errorf("program type %v, want SkLookup", spec.Programs[redirectProgFerrySkLookup].Type)
	}
	var port uint32
	if err := spec.Variables[redirectVarFerryHbonePort].Get(&port); err != nil || port != DefaultHBONEPort {
		t.Errorf("ferry_hbone_port default %d (%v), want %d", port, err, DefaultHBONEPort)
	}
}

// skLookupCtx mirrors struct bpf_sk_lookup for BPF_PROG_TEST_RUN.
type skLookupCtx struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      [4]byte
	RemoteIP6      [16]byte
	RemotePort     uint16 // network byte order
	_              uint16
	LocalIP4       [4]byte
	LocalIP6       [16]byte
	LocalPort      uint32 // host byte order
	IngressIfindex uint32
	_              uint32
}

func TestSkLookupCtxSize(t *testing.T) {
	if n := binary.Size(skLookupCtx{}); n != 72 {
		t.Fatalf("skLookupCtx is %d bytes, struct bpf_sk_lookup is 72", n)
	}
}

var (
	podA    = netip.MustParseAddr("198.18.0.10")
	podB    = netip.MustParseAddr("198.18.0.11")
	outside = netip.MustParseAddr("198.18.9.9")
)

// TestPrivilegedProgRun table-tests the program's decisions with
// BPF_PROG_TEST_RUN: the kernel reports the cookie of the socket the program
// selected, if any.
func TestPrivilegedProgRun(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	lns := map[Listener]*net.TCPListener{
		ListenerOutbound: listen(t, ns, "127.0.0.1:0"),
		ListenerInbound:  listen(t, ns, "127.0.0.1:0"),
		ListenerHBONE:    listen(t, ns, "127.0.0.1:0"),
	}
	cookies := map[Listener]uint64{}
	for l, ln := range lns {
		cookies[l] = cookie(t, ln)
	}

	for _, hbone := range []uint16{0, 16008} {
		dir := pinDir(t)
		o := load(t, Config{PinDir: dir, HBONEPort: hbone})
		if err := o.SetListeners(lns[ListenerOutbound], lns[ListenerInbound], lns[ListenerHBONE]); err != nil {
			t.Fatal(err)
		}
		if err := o.SetPods([]netip.Addr{podA, podB}); err != nil {
			t.Fatal(err)
		}
		hport := uint32(DefaultHBONEPort)
		if hbone != 0 {
			hport = uint32(hbone)
		}
		type tc struct {
			name            string
			proto           uint32
			remote, local   netip.Addr
			port            uint32
			wantRet         uint32 // SK_DROP 0, SK_PASS 1
			wantListener    Listener
			wantNoSelection bool
		}
		tcs := []tc{
			{"pod dials out", unix.IPPROTO_TCP, podA, outside, 443, 1, ListenerOutbound, false},
			{"client dials pod", unix.IPPROTO_TCP, outside, podA, 8080, 1, ListenerInbound, false},
			{"peer dials pod hbone", unix.IPPROTO_TCP, outside, podA, hport, 1, ListenerHBONE, false},
			{"hbone port is configured", unix.IPPROTO_TCP, outside, podA, 15008 + 16008 - hport, 1, ListenerInbound, false},
			{"same-node pod to pod is the source's outbound", unix.IPPROTO_TCP, podA, podB, hport, 1, ListenerOutbound, false},
			{"not ours", unix.IPPROTO_TCP, outside, outside, 8080, 1, 0, true},
			{"udp from pod passes", unix.IPPROTO_UDP, podA, outside, 53, 1, 0, true},
			{"udp to pod passes", unix.IPPROTO_UDP, outside, podA, 53, 1, 0, true},
		}
		before, err := o.Counters()
		if err != nil {
			t.Fatal(err)
		}
		want := map[Verdict]uint64{}
		for _, c := range tcs {
			in := skLookupCtx{
				Family: unix.AF_INET, Protocol: c.proto,
				RemoteIP4: c.remote.As4(), LocalIP4: c.local.As4(),
				RemotePort: 0x3930, LocalPort: c.port,
			}
			var out skLookupCtx
			ret, err := o.objs.FerrySkLookup.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
			if err := testutil.KernelFeature(t, err); err != nil {
				t.Fatalf("hbone %d, %s: run: %v", hport, c.name, err)
			}
			if ret != c.wantRet {
				t.Errorf("hbone %d, %s: returned %d, want %d", hport, c.name, ret, c.wantRet)
			}
			if c.wantNoSelection {
				if out.Cookie != 0 {
					t.Errorf("hbone %d, %s: selected socket %d, want none", hport, c.name, out.Cookie)
				}
				continue
			}
			want[Verdict(c.wantListener)]++
			if out.Cookie != cookies[c.wantListener] {
				t.Errorf("hbone %d, %s: selected socket %d, want the %s listener (%d)", hport, c.name, out.Cookie, c.wantListener, cookies[c.wantListener])
			}
		}

		// No listener in the slot: refused, never passed on.
		if err := o.objs.FerryListeners.Delete(uint32(ListenerInbound)); err != nil {
			t.Fatal(err)
		}
		in := skLookupCtx{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, RemoteIP4: outside.As4(), LocalIP4: podA.As4(), LocalPort: 8080}
		var out skLookupCtx
		ret, err := o.objs.FerrySkLookup.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
		if err != nil || ret != 0 || out.Cookie != 0 {
			t.Errorf("no inbound listener: ret %d cookie %d err %v, want SK_DROP and no socket", ret, out.Cookie, err)
		}
		want[VerdictNoListener]++

		after, err := o.Counters()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range Verdicts() {
			if got := after[v] - before[v]; got != want[v] {
				t.Errorf("hbone %d: counter %s moved by %d, want %d", hport, v, got, want[v])
			}
		}
	}
}

func TestPrivilegedSetPodsConverges(t *testing.T) {
	testutil.Privileged(t)
	o := load(t, Config{PinDir: pinDir(t)})
	steps := [][]netip.Addr{
		{podA, podB},
		{podB, outside, netip.MustParseAddr("::ffff:198.18.7.7")},
		{},
		{podA},
	}
	for _, s := range steps {
		if err := o.SetPods(s); err != nil {
			t.Fatal(err)
		}
		got, err := o.Pods()
		if err != nil {
			t.Fatal(err)
		}
		want := make([]netip.Addr, 0, len(s))
		for _, a := range s {
			want = append(want, a.Unmap())
		}
		slices.SortFunc(got, netip.Addr.Compare)
		slices.SortFunc(want, netip.Addr.Compare)
		if !slices.Equal(got, want) {
			t.Errorf("SetPods(%v): map holds %v", s, got)
		}
	}
	if err := o.SetPods([]netip.Addr{netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Error("SetPods accepted an IPv6 address")
	}
	if got, _ := o.Pods(); len(got) != 1 {
		t.Errorf("a rejected SetPods changed the map: %v", got)
	}
}

func TestPrivilegedSetListenerRejectsMPTCP(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	o := load(t, Config{PinDir: pinDir(t)})
	var ln net.Listener
	err := ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		ln, err = lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if mp, _ := ln.(*net.TCPListener); mp == nil {
		t.Fatal("not a TCP listener")
	}
	if !isMPTCP(t, ln.(syscall.Conn)) {
		// The kernel fell back to plain TCP: nothing to refuse here.
		testutil.KernelFeature(t, fmt.Errorf("no MPTCP listener (net.mptcp.enabled=0 or no CONFIG_MPTCP): %w", ebpf.ErrNotSupported))
	}
	err = o.SetListener(ListenerOutbound, ln.(syscall.Conn))
	if !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("MPTCP listener: %v, want EOPNOTSUPP", err)
	}
}

func TestPrivilegedLoadMountsBPFFS(t *testing.T) {
	testutil.Privileged(t)
	parent := filepath.Join(t.TempDir(), "bpf")
	dir := filepath.Join(parent, "ferry")
	t.Cleanup(func() { unix.Unmount(parent, unix.MNT_DETACH) })
	o := load(t, Config{PinDir: dir})
	if !isBPFFS(dir) {
		t.Fatalf("%s is not on bpffs after Load", dir)
	}
	for _, m := range []string{"ferry_listeners", "ferry_pods", "ferry_counters"} {
		if _, err := os.Stat(filepath.Join(dir, m)); err != nil {
			t.Errorf("map %s not pinned: %v", m, err)
		}
	}
	_ = o
}

// TestPrivilegedCapture attaches the program to a namespace and checks real
// connections: they reach the right listener with their original addresses,
// the program survives the agent (pinned link, fail closed), a reload reuses
// the pins, and Remove gives the port back.
func TestPrivilegedCapture(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	// Both "pods" are local addresses here, so connections between them
	// and the namespace's own addresses are looked up locally.
	ip(t, ns, "addr", "add", podA.String()+"/32", "dev", "lo")
	ip(t, ns, "addr", "add", outside.String()+"/32", "dev", "lo")
	dir := pinDir(t)

	out := listen(t, ns, "127.0.0.1:0")
	in := listen(t, ns, "127.0.0.1:0")
	hb := listen(t, ns, "127.0.0.1:0")
	// A bystander that owns podA:8080 when Ferry does not capture.
	bystander := listen(t, ns, podA.String()+":8080")

	o := load(t, Config{PinDir: dir})
	if err := o.AttachNetNS(ns.Path()); err != nil {
		t.Fatal(err)
	}
	if err := o.SetListeners(out, in, hb); err != nil {
		t.Fatal(err)
	}
	if err := o.SetPods([]netip.Addr{podA}); err != nil {
		t.Fatal(err)
	}

	dial := func(src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
			var err error
			c, err = d.Dial("tcp4", dst.String())
			return err
		})
		return c, err
	}
	expect := func(ln *net.TCPListener, src netip.Addr, dst netip.AddrPort) {
		t.Helper()
		c, err := dial(src, dst)
		if err != nil {
			t.Fatalf("dial %v from %v: %v", dst, src, err)
		}
		defer c.Close()
		ln.SetDeadline(time.Now().Add(5 * time.Second))
		a, err := ln.Accept()
		if err != nil {
			t.Fatalf("dial %v from %v: accept on %v: %v", dst, src, ln.Addr(), err)
		}
		defer a.Close()
		if got := a.LocalAddr().(*net.TCPAddr).AddrPort(); got != dst {
			t.Errorf("accepted LocalAddr %v, want the original destination %v", got, dst)
		}
		if got := a.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != src {
			t.Errorf("accepted RemoteAddr %v, want %v", got, src)
		}
	}
	expect(in, outside, netip.AddrPortFrom(podA, 8080))
	expect(hb, outside, netip.AddrPortFrom(podA, 15008))
	expect(out, podA, netip.AddrPortFrom(outside, 9999))

	// The agent goes away: the link stays (pinned) and, with no
	// listener, connections to the pod are refused, not given to the
	// bystander.
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	in.Close()
	if c, err := dial(outside, netip.AddrPortFrom(podA, 8080)); err == nil {
		c.Close()
		t.Fatal("connection to an enrolled pod succeeded with no agent listener")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("with no listener: %v, want connection refused", err)
	}

	// A restarted agent reuses the pins: the pod is still enrolled and the
	// pinned link is updated in place.
	o2, err := Load(Config{PinDir: dir})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer o2.Close()
	if pods, err := o2.Pods(); err != nil || len(pods) != 1 || pods[0] != podA {
		t.Errorf("after reload the pods map holds %v (%v), want [%v]", pods, err, podA)
	}
	if n, _ := o2.Counters(); n[VerdictNoListener] != 1 || n[VerdictInbound] != 1 {
		t.Errorf("after reload counters are %v, want the earlier counts", n)
	}
	if err := o2.AttachNetNS(ns.Path()); err != nil {
		t.Fatal(err)
	}
	in2 := listen(t, ns, "127.0.0.1:0")
	if err := o2.SetListener(ListenerInbound, in2); err != nil {
		t.Fatal(err)
	}
	expect(in2, outside, netip.AddrPortFrom(podA, 8080))

	// Remove: nothing pinned, nothing attached, the bystander gets the port.
	if err := o2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(dir)
		t.Errorf("pin dir still there after Remove (%v): %v", err, entries)
	}
	expect(bystander, outside, netip.AddrPortFrom(podA, 8080))
	if err := Remove(dir); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// TestPrivilegedAttachReplacesForeignAndDefunctLinks covers a pin directory
// whose pinned link belongs to another namespace (replaced, and that
// namespace stops being captured) or to a namespace that no longer exists.
func TestPrivilegedAttachReplacesForeignAndDefunctLinks(t *testing.T) {
	testutil.Privileged(t)
	dir := pinDir(t)
	o := load(t, Config{PinDir: dir})
	a, b := testutil.NewNetNS(t), testutil.NewNetNS(t)
	if err := o.AttachNetNS(a.Path()); err != nil {
		t.Fatal(err)
	}
	if got := attachedTo(t, dir); got != inode(t, a.Path()) {
		t.Fatalf("link attached to netns %d, want a (%d)", got, inode(t, a.Path()))
	}
	if err := o.AttachNetNS(b.Path()); err != nil {
		t.Fatal(err)
	}
	if got := attachedTo(t, dir); got != inode(t, b.Path()) {
		t.Fatalf("link attached to netns %d, want b (%d)", got, inode(t, b.Path()))
	}
	if n := netnsLinks(t, inode(t, a.Path())); n != 0 {
		t.Errorf("namespace a still has %d sk_lookup links", n)
	}

	// A namespace that goes away leaves a defunct pinned link behind.
	c := testutil.NewNetNS(t)
	if err := o.AttachNetNS(c.Path()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	o.link.Close()
	o.link = nil
	if err := o.AttachNetNS(b.Path()); err != nil {
		t.Fatal(err)
	}
	if got := attachedTo(t, dir); got != inode(t, b.Path()) {
		t.Fatalf("link attached to netns %d, want b (%d)", got, inode(t, b.Path()))
	}
}

// TestPrivilegedLoadReplacesIncompatiblePins simulates pins left by another
// version of the program.
func TestPrivilegedLoadReplacesIncompatiblePins(t *testing.T) {
	testutil.Privileged(t)
	dir := pinDir(t)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "ferry_pods", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(dir, "ferry_pods")); err != nil {
		t.Fatal(err)
	}
	m.Close()
	o := load(t, Config{PinDir: dir})
	if err := o.SetPods([]netip.Addr{podA}); err != nil {
		t.Fatal(err)
	}
	info, err := o.objs.FerryPods.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.ValueSize != 4 || info.MaxEntries != 65536 {
		t.Errorf("pods map is %+v: the incompatible pin was reused", info)
	}
}

func TestLoadErrorFormat(t *testing.T) {
	inner := errors.New("line one")
	e := &loadError{op: "load redirect", err: detailed{inner}}
	if got := e.Error(); got != "bpf: load redirect: line one" {
		t.Errorf("Error() = %q", got)
	}
	if got := fmt.Sprintf("%v", e); got != "bpf: load redirect: line one" {
		t.Errorf("%%v = %q", got)
	}
	if got := fmt.Sprintf("%+v", e); got != "bpf: load redirect: line one\nfull log" {
		t.Errorf("%%+v = %q", got)
	}
	if !errors.Is(e, inner) {
		t.Error("loadError does not unwrap")
	}
}

// detailed formats like *ebpf.VerifierError: more with %+v.
type detailed struct{ error }

func (d detailed) Unwrap() error { return d.error }
func (d detailed) Format(f fmt.State, verb rune) {
	fmt.Fprint(f, d.Error())
	if f.Flag('+') {
		fmt.Fprint(f, "\nfull log")
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// attachedTo returns the netns inode of the link pinned in dir.
func attachedTo(t *testing.T, dir string) uint64 {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(dir, linkPinName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return uint64(info.NetNs().NetnsInode)
}

// netnsLinks counts the sk_lookup links attached to the netns with inode ino.
func netnsLinks(t *testing.T, ino uint64) int {
	t.Helper()
	n := 0
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if ns := info.NetNs(); ns != nil && uint64(ns.NetnsInode) == ino {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// isMPTCP reports whether the socket c is a Multipath TCP one.
func isMPTCP(t *testing.T, c syscall.Conn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	var serr error
	if err := rc.Control(func(fd uintptr) { proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }); err != nil || serr != nil {
		t.Fatalf("SO_PROTOCOL: %v %v", err, serr)
	}
	return proto == unix.IPPROTO_MPTCP
}
