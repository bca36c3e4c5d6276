//go:build linux

package redirect

import (
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// BenchmarkApply measures one reconcile of the routing state with n enrolled
// pods when one pod changes (the common case: a pod comes or goes).
func BenchmarkApply(b *testing.B) {
	if os.Getenv("PRIVILEGED_TESTS") != "1" {
		b.Skip("needs root: set PRIVILEGED_TESTS=1")
	}
	for _, n := range []int{10, 250} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			ns := testutil.NewNetNS(b)
			pods := make([]netip.Addr, 0, n)
			for i := range n {
				pods = append(pods, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
			}
			other := append([]netip.Addr(nil), pods...)
			other[0] = netip.MustParseAddr("198.19.255.255")
			p1, err := NewPlan(pods, Config{})
			if err != nil {
				b.Fatal(err)
			}
			p2, err := NewPlan(other, Config{})
			if err != nil {
				b.Fatal(err)
			}
			err = ns.Do(func() error {
				if err := Apply(p1); err != nil {
					return err
				}
				i := 0
				for b.Loop() {
					p := p1
					if i%2 == 0 {
						p = p2
					}
					if err := Apply(p); err != nil {
						return err
					}
					i++
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
