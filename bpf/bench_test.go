//go:build linux

package bpf

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// privilegedBench skips a benchmark that needs root unless PRIVILEGED_TESTS=1.
func privilegedBench(b *testing.B) {
	b.Helper()
	if os.Getenv("PRIVILEGED_TESTS") != "1" {
		b.Skip("needs root and BPF: set PRIVILEGED_TESTS=1")
	}
}

func benchPinDir(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir + "/ferry"
}

// BenchmarkSkLookup measures the program's cost per socket lookup, which
// every locally delivered connection in the node's namespace pays.
func BenchmarkSkLookup(b *testing.B) {
	privilegedBench(b)
	ns := testutil.NewNetNS(b)
	var ln *net.TCPListener
	if err := ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(b.Context(), "tcp4", "127.0.0.1:0")
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	o, err := Load(Config{PinDir: benchPinDir(b)})
	if err != nil {
		b.Fatalf("%+v", err)
	}
	defer func() { o.Close(); Remove(o.PinDir()) }()
	if err := o.SetListeners(ln, ln, ln); err != nil {
		b.Fatal(err)
	}
	pods := make([]netip.Addr, 0, 1000)
	for i := range 1000 {
		pods = append(pods, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
	}
	if err := o.SetPods(pods); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name          string
		remote, local netip.Addr
	}{
		{"not-ours", outside, netip.MustParseAddr("198.19.0.1")},
		{"outbound", pods[7], outside},
		{"inbound", outside, pods[7]},
	} {
		b.Run(c.name, func(b *testing.B) {
			in := skLookupCtx{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, RemoteIP4: c.remote.As4(), LocalIP4: c.local.As4(), LocalPort: 8080}
			const repeat = 1000
			start := time.Now()
			n := 0
			for b.Loop() {
				if _, err := o.objs.FerrySkLookup.Run(&ebpf.RunOptions{Context: in, Repeat: repeat}); err != nil {
					b.Fatal(err)
				}
				n++
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(n*repeat), "ns/lookup")
		})
	}
}

// BenchmarkSetPods measures converging the enrolled-pods map when one pod of
// n changes.
func BenchmarkSetPods(b *testing.B) {
	privilegedBench(b)
	o, err := Load(Config{PinDir: benchPinDir(b)})
	if err != nil {
		b.Fatalf("%+v", err)
	}
	defer func() { o.Close(); Remove(o.PinDir()) }()
	for _, n := range []int{10, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			a := make([]netip.Addr, 0, n)
			for i := range n {
				a = append(a, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
			}
			bb := append([]netip.Addr(nil), a...)
			bb[0] = netip.MustParseAddr("198.19.255.255")
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				set := a
				if i%2 == 1 {
					set = bb
				}
				if err := o.SetPods(set); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
