package testutil

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
)

// ControlAddrs returns n addresses, free right now, for an agent's admin,
// metrics and readiness listeners.
//
// The agent binds those with SO_REUSEPORT so that a new agent can bind while
// the old one drains; a port another root process holds the same way is then
// shared, not refused, and a client can talk to the wrong server for good. So
// each address gets a loopback IP of its own, drawn at random from
// 127.128.0.0/9, away from the fixed 127.0.x.y addresses tests give pods.
func ControlAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	for len(addrs) < n {
		ip := netip.AddrFrom4([4]byte{127, byte(128 + rand.N(127)), byte(rand.N(256)), byte(1 + rand.N(254))})
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	return addrs
}
