package main

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testbed"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedTopo checks capture: from the client pod in node a, a
// captured port of the server pod's address reaches a listener in node a,
// and any other port crosses the veth to node b, even where node a listens
// on it too. Closing the topology leaves nothing behind.
func TestPrivilegedTopo(t *testing.T) {
	testutil.Privileged(t)
	tp, err := newTopo(t.Context(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	prefix := tp.tb.Prefix
	t.Cleanup(func() { testbed.Teardown(prefix, "", false, nil) })
	for _, tc := range []struct {
		port   uint16
		wantNS string
	}{{captureFirst, tp.nsA}, {captureLast, tp.nsA}, {directPort, tp.nsB}, {captureLast + 1, tp.nsB}} {
		dst := netip.AddrPortFrom(serverPod, tc.port)
		lns := map[string]net.Listener{}
		for _, ns := range []string{tp.nsA, tp.nsB} {
			ln, err := listenIn(t.Context(), ns, dst)
			if err != nil {
				t.Fatalf("listen on %s in %s: %v", dst, ns, err)
			}
			defer ln.Close()
			lns[ns] = ln
		}
		c, err := dialFrom(t.Context(), tp.nsA, clientPod, dst)
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		c.Close()
		for ns, ln := range lns {
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(200 * time.Millisecond))
			a, err := ln.Accept()
			if got := err == nil; got != (ns == tc.wantNS) {
				t.Errorf("port %d: accepted in %s: %v, want the connection in %s only", tc.port, ns, got, tc.wantNS)
			}
			if err == nil {
				if from := a.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); from != clientPod {
					t.Errorf("port %d: connection from %s, want %s", tc.port, from, clientPod)
				}
				a.Close()
			}
		}
	}
	if err := tp.close(); err != nil {
		t.Fatal(err)
	}
	if left := testbed.Leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
