//go:build linux

package node

import (
	"net"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestDataPlaneKeepAlive: without capture too, the agent's data-plane
// sockets, accepted and dialled, probe with ztunnel's keepalive (180 s
// idle, 180 s apart, 9 probes), not Go's 15 s.
func TestDataPlaneKeepAlive(t *testing.T) {
	a := &Agent{cfg: Config{
		Redirect:     RedirectNone,
		OutboundAddr: "127.0.0.1:0", InboundAddr: "127.0.0.1:0", HBONEAddr: "127.0.0.1:0",
		AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", ReadinessAddr: "127.0.0.1:0",
	}}
	l, err := a.listen(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	for name, ln := range map[string]net.Listener{"outbound": l.outbound, "inbound": l.inbound, "hbone": l.hbone} {
		dialled, err := dialPlain(t.Context(), ln.Addr().(*net.TCPAddr).AddrPort())
		if err != nil {
			t.Fatal(err)
		}
		accepted, err := ln.(*net.TCPListener).AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		testutil.CheckKeepAlive(t, name+" dialled", dialled.(*net.TCPConn))
		testutil.CheckKeepAlive(t, name+" accepted", accepted)
		dialled.Close()
		accepted.Close()
	}
}
